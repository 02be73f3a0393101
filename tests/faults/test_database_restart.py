"""PostgreSQL restarted under gateway load: the gateway recovers by itself, without a restart.

The machine's PostgreSQL is left alone: the test starts a private cluster of its own (initdb into
a temporary folder, its own port and socket folder), migrates it, seeds a factory with registered
devices and runs the mutual-TLS gateway on it. While devices poll, the cluster is restarted
(`pg_ctl restart -m fast`, which cuts every connection) and then stopped for two seconds and
started again. Polls fail only while the database is away, with a 503 that says why, and then
succeed again; check-ins and events reported before the outage still reach the database.
"""
import glob
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.processes import free_port

from .conftest import ROOT, device_pool, poll_status, start_gateway, wait_until

DEVICES = 12
LOAD_THREADS = 4
RECOVERY = 2.0  # seconds after the database is back within which every poll must succeed again


def postgres_bindir():
    """Where initdb and pg_ctl are (Debian keeps them out of PATH), or None."""
    if os.environ.get("BREAKWATER_PG_BINDIR"):
        return Path(os.environ["BREAKWATER_PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Cluster:
    """A throwaway PostgreSQL cluster. As root it runs as the postgres user (initdb refuses root)."""

    def __init__(self, bindir):
        self.bindir = bindir
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="bw-faults-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.prefix = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres user to run a private PostgreSQL cluster as")
            # runuser lives in sbin, which a non-login shell's PATH may lack.
            runuser = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
            if runuser is None:
                pytest.skip("running as root and runuser (util-linux) is missing to run a private PostgreSQL cluster as postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self.prefix = [runuser, "-u", "postgres", "--"]
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()

    def run(self, program, *args):
        done = subprocess.run([*self.prefix, str(self.bindir / program), *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{program} {' '.join(args)}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"

    def ctl(self, action, *args):
        # -l keeps the server's output out of our pipes, so pg_ctl's own output ends when it does.
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, *args)

    def start(self):
        self.ctl("start")

    def restart(self):
        self.ctl("restart", "-m", "fast")

    def stop(self):
        self.ctl("stop", "-m", "fast")

    def url(self, name):
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def query(self, sql, name="breakwater", autocommit=False):
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=name, autocommit=autocommit) as conn:
            return conn.execute(sql).fetchall() if sql.lstrip().upper().startswith("SELECT") else conn.execute(sql)

    def destroy(self):
        try:
            self.run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        except AssertionError:
            pass  # already stopped
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def cluster():
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "initdb").exists() or not (bindir / "pg_ctl").exists():
        pytest.skip("the PostgreSQL server programs (initdb, pg_ctl) are not installed")
    cluster = Cluster(bindir)
    yield cluster
    cluster.destroy()


def private_env(cluster, var):
    """A Breakwater install of its own on the private cluster: its own var/ (file cache, secrets);
    nothing shared with the test run's database, Redis or broker."""
    drop = (
        "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
        "SQLITE_PATH", "SQLITE_TEST_PATH", "SECRET_KEY", "BREAKWATER_KEY_ENCRYPTION_KEY",
    )
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(DATABASE_URL=cluster.url("breakwater"), BREAKWATER_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="factory.project.settings", PYTHONPATH=str(ROOT))
    return env


def in_process(env, *args):
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


class Load:
    """Devices polling the gateway without pause, each on its own kept-alive connection, and now
    and then reporting an event; every answer is recorded with its time."""

    def __init__(self, pools):
        self.pools = pools
        self.answers = []  # (time, status or error name)
        self.events_accepted = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(pools[i::LOAD_THREADS],), daemon=True) for i in range(LOAD_THREADS)]

    def _run(self, pools):
        n = 0
        while not self._stop.is_set():
            for pool in pools:
                n += 1
                if n % 10 == 0:
                    status = self._report(pool)
                else:
                    status = poll_status(pool)
                with self._lock:
                    self.answers.append((time.time(), status))
            time.sleep(0.02)

    def _report(self, pool):
        import urllib3

        body = json.dumps([{"type": "download-started", "target": "intel-corei7-64-lmp-42"}])
        try:
            response = pool.request("POST", "/events", body=body, headers={"Content-Type": "application/json"})
        except urllib3.exceptions.HTTPError as error:
            return type(error).__name__
        if response.status == 202:
            with self._lock:
                self.events_accepted += 1
            return 200
        return response.status

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def since(self, moment):
        with self._lock:
            return [status for t, status in self.answers if t >= moment]


def test_the_gateway_recovers_by_itself_when_postgresql_restarts_under_load(cluster, processes, tmp_path):
    cluster.query("CREATE DATABASE breakwater", name="postgres", autocommit=True)
    env = private_env(cluster, tmp_path / "var")
    in_process(env, "manage.py", "migrate", "--noinput", "-v", "0")
    keystore = tmp_path / "fleet"
    uuids = json.loads(in_process(env, "-m", "tests.faults.fleet_steps", "seed", str(keystore), str(DEVICES)).splitlines()[-1])["devices"]
    assert len(uuids) == DEVICES

    port = free_port()
    gateway = start_gateway(processes, port=port, folder=tmp_path / "gateway", env=env)
    pools = [device_pool(port, keystore / uuid, keystore / "gateway-ca.pem") for uuid in uuids]
    wait_until(lambda: poll_status(pools[0]) == 200, timeout=30, message=gateway.text()[-3000:])
    pid = gateway.pid
    outages = []

    with Load(pools) as load:
        time.sleep(1.5)
        assert set(load.since(0)) == {200}, load.since(0)

        # 1. A fast restart: PostgreSQL ends every connection, shuts down and starts again.
        down = time.time()
        cluster.restart()
        outages.append((down, time.time()))
        time.sleep(3)

        # 2. An outage of two seconds (a failover, an upgrade): the gateway answers without it.
        down = time.time()
        cluster.stop()
        time.sleep(2)
        during = load.since(time.time() - 1.5)
        cluster.start()
        outages.append((down, time.time()))
        time.sleep(3)

    assert gateway.alive() and gateway.pid == pid, "the gateway was restarted"
    boots = re.findall(r"^gateway worker \d+ serving ", gateway.text(), re.M)
    assert len(boots) == 1, "a gateway worker died and was replaced"
    # While the database was away the gateway answered, with a 503 that says why, not a 500 and
    # not a dropped connection.
    assert during and set(during) == {503}, set(during)
    failed = [(t, status) for t, status in load.answers if status != 200]
    assert {status for _, status in failed} <= {503}
    # Polls failed only during the outages (plus the moment each thread's connection needs to
    # find out it was cut), and every poll after that succeeded.
    late = [(t, status) for t, status in failed if not any(a <= t <= b + RECOVERY for a, b in outages)]
    assert not late, (outages, late)
    after = load.since(outages[-1][1] + RECOVERY)
    assert len(after) > 20 and set(after) == {200}
    first = load.since(outages[0][1] + RECOVERY)
    assert first.count(200) > 20

    # The check-in flusher reconnected too: every device's last poll reached the database, and
    # every event the gateway accepted was written, none lost with the connections.
    last = outages[-1][1] + RECOVERY
    wait_until(lambda: cluster.query("SELECT min(extract(epoch FROM last_seen)) FROM devices_device")[0][0] > last, timeout=10)
    stored = wait_until(lambda: (n := cluster.query("SELECT count(*) FROM devices_deviceevent")[0][0]) >= load.events_accepted and n, timeout=10)
    assert stored == load.events_accepted > 0
