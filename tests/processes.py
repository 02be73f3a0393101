"""What tests that start real processes (gateways, web servers, workers, the soak) share: a free
port or a listening socket, how a child process reaches the test database, a child process that
is always stopped with its whole group, waiting for a condition by polling, and a browser that
signs in to the web servers they start."""
import os
import signal
import socket
import subprocess
import time
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import urllib3
from django.db import connection


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url():
    """The PostgreSQL test database as a DATABASE_URL."""
    db = connection.settings_dict
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def database_env():
    """The environment a child process needs to use the test database, on either backend."""
    if connection.vendor == "sqlite":
        return {"SQLITE_PATH": connection.settings_dict["NAME"]}
    return {"DATABASE_URL": database_url()}


def listening_socket():
    """A socket listening on a free port of 127.0.0.1, for a child to serve on (gunicorn's
    `--bind fd://N`): the port is held from the moment it is chosen, so no other process can take
    it in between, and connections wait in its backlog until the child accepts them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class Process:
    """A child process in its own process group (a server and its workers), output in `log`."""

    def __init__(self, name, argv, *, env, log, cwd=None, pass_fds=(), port=None):
        self.name = name
        self.port = port
        self.log = Path(log)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds)

    def text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self):
        return self.proc.poll() is None

    def check_alive(self):
        if not self.alive():
            raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.text()[-3000:]}")

    def stop(self, timeout=15):
        """SIGTERM to the group, SIGKILL to whatever is left of it after `timeout` seconds."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal(signal.SIGKILL)  # a worker its arbiter left behind goes too
        if self.alive():
            self.proc.wait(timeout=timeout)

    def _signal(self, signum):
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass  # the whole group has exited


def wait_until(condition, *, timeout, what, processes=()):
    """Poll `condition` until it returns something truthy and return that; fail naming `what`
    after `timeout` seconds, or as soon as one of `processes` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            process.check_alive()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.text()[-1500:]}" for p in processes)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(0.1)


class Browser:
    """A person's browser: one cookie jar, used against either web server."""

    def __init__(self, address):
        self.address = address  # the client address the proxy in front of the web servers records
        self.cookies = {}
        self.http = urllib3.PoolManager(retries=False, timeout=30)

    def request(self, web, method, path, fields=None, headers=None):
        headers = {"X-Forwarded-For": self.address, **(headers or {})}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if fields is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["X-CSRFToken"] = self.cookies.get("csrftoken", "")
            body = urlencode(fields, doseq=True)
        response = self.http.request(method, f"http://127.0.0.1:{web.port}{path}", body=body, headers=headers, redirect=False)
        for header in response.headers.getlist("Set-Cookie"):
            for key, morsel in SimpleCookie(header).items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = morsel.value
        return response

    def get(self, web, path, **kwargs):
        return self.request(web, "GET", path, **kwargs)

    def post(self, web, path, fields, **kwargs):
        return self.request(web, "POST", path, fields=fields, **kwargs)

    def sign_in(self, web, username, password):
        self.get(web, "/login/")  # the CSRF cookie
        return self.post(web, "/login/", {"username": username, "password": password})
