"""Fault tests: real processes (Celery workers, the gateway, a private PostgreSQL) are killed,
restarted or cut off, and the tests check what a user or a device notices afterwards.

Processes started here run in their own process group, so a kill -9 takes a worker and its
pool together, and a test ends only the groups it started.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

from tests.processes import database_env

ROOT = Path(__file__).resolve().parents[2]

# Worker and gateway processes cannot see an in-memory SQLite database: with SQLite the test
# database is a file (the same rule as tests/devices/conftest.py, whichever is imported first).
_db = connections["default"].settings_dict
if _db["ENGINE"].endswith("sqlite3") and not _db["TEST"].get("NAME"):
    _db["TEST"]["NAME"] = os.path.join(tempfile.mkdtemp(prefix="bw-faults-test-"), "test.sqlite3")


def child_env(**extra):
    """This test process's configuration (database, cache, broker, secrets) for a child process."""
    env = {
        **os.environ,
        **database_env(),
        "BREAKWATER_VAR_DIR": str(settings.VAR_DIR),
        "SECRET_KEY": settings.SECRET_KEY,
        "BREAKWATER_KEY_ENCRYPTION_KEY": settings.TUF_KEY_ENCRYPTION_KEY,
        "DJANGO_SETTINGS_MODULE": "factory.project.settings",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("CELERY_TASK_ALWAYS_EAGER", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Process:
    """A child process in its own process group, its output in `log`."""

    def __init__(self, argv, *, env, log, cwd=ROOT, graceful=True):
        self.argv = argv
        self.graceful = graceful
        self.log = Path(log)
        self._out = self.log.open("a")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def text(self):
        return self.log.read_text(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def wait_for_log(self, needle, timeout=60):
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.alive(), f"{self.argv[:4]} exited:\n{self.text()[-4000:]}"
            assert time.monotonic() < deadline, f"no {needle!r} in the log:\n{self.text()[-4000:]}"
            time.sleep(0.1)

    def signal(self, signum):
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self):
        """kill -9 the whole group (a worker and its pool, gunicorn's arbiter and its workers)."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._out.close()

    def stop(self, timeout=20):
        if self.alive() and self.graceful:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (a pool child, a gunicorn worker) goes too.
        self.signal(signal.SIGKILL)
        if self.alive():
            self.proc.wait(timeout=30)
        self._out.close()


@pytest.fixture
def processes():
    """Start processes with `processes.start(...)`; every one left running is stopped at the end."""
    started = []

    class Starter:
        def start(self, argv, **kwargs):
            process = Process(argv, **kwargs)
            started.append(process)
            return process

    yield Starter()
    for process in reversed(started):
        process.stop()


def wait_until(condition, timeout=30.0, interval=0.1, message="timed out"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, message
        time.sleep(interval)


def python(*args):
    return [sys.executable, *args]


# --- the device gateway -------------------------------------------------------------------------


def start_gateway(processes, *, port, folder, env):
    """`manage.py gateway` (gunicorn with mutual TLS, one worker) on 127.0.0.1:`port`."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **env,
        "BREAKWATER_GATEWAY_URL": f"https://127.0.0.1:{port}",
        "BREAKWATER_CHECKIN_FLUSH_SECONDS": "0.2",
        # Every request reads the database: nothing a fault breaks is hidden behind a cache.
        "BREAKWATER_GATEWAY_DEVICE_CACHE_SECONDS": "0",
        "BREAKWATER_GATEWAY_VIEW_CACHE_SECONDS": "0",
    }
    return processes.start(
        python("manage.py", "gateway", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4", "--tls-dir", str(folder / "tls")),
        env=env,
        log=folder / "gateway.log",
    )


def listening(port):
    """Whether something accepts connections on the port (gunicorn's arbiter binds it before its
    worker boots; connections wait in the backlog until the worker takes them)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def device_pool(port, folder, server_ca, timeout=5):
    """One device's HTTPS connection to the gateway, with its key and certificate from `folder`."""
    import ssl

    import urllib3

    context = ssl.create_default_context(cafile=str(server_ca))
    context.load_cert_chain(str(folder / "client.pem"), str(folder / "client.key"))
    return urllib3.HTTPSConnectionPool("127.0.0.1", port, maxsize=1, ssl_context=context, retries=False, timeout=timeout)


def poll_status(pool, path="/repo/timestamp.json"):
    """The HTTP status of one poll, or the name of the error that stopped it."""
    import urllib3

    try:
        return pool.request("GET", path).status
    except urllib3.exceptions.HTTPError as error:
        return type(error).__name__
