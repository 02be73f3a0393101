"""The web processes behind PgBouncer in transaction mode, without and with a read replica.

A private PgBouncer (Debian's `pgbouncer` binary, on a free port) stands in front of the test
database, and real gunicorn web servers reach the database only through it, with Breakwater's
settings for it (BREAKWATER_PGBOUNCER=1). This PgBouncer runs its reset query (DISCARD ALL) after
every transaction (`server_reset_query_always`): whatever a session kept from one transaction to
the next (a WITH HOLD cursor, a prepared statement, a session-level SET, a temporary table) is
gone every time, so code relying on it fails here on each run instead of now and then under load.

The second web server also reads a replica (DATABASE_REPLICA_URL) through the same PgBouncer: a
copy of the test database taken while the module sets up and then made read-only, as a replica
that stopped replaying would be. Whether a page shows what was written after the copy tells
which database it read.

Skipped without PgBouncer, unless BREAKWATER_REQUIRE_PGBOUNCER=1 (CI), where that fails instead.
"""
import json
import os
import pwd
import shutil
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
import urllib3
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from psycopg import sql
from psycopg.rows import dict_row

from devices.fleet import fleet_seed
from devices.models import Device
from factory.models import Role
from factory.services import api_token_create, user_create
from factory.tuf.services.repository import ci_build_publish, factory_create
from tests.processes import Browser, Process, free_port, listening_socket, wait_until
from tests.tuf_helpers import offline_targets_key
from tests.waves.conftest import HWIDS, make_wave
from waves.models import WaveDevice
from waves.status import wave_status_sample_take

ROOT = Path(__file__).resolve().parents[1]
TAG = "production"
LAB = "lab"
START_TIMEOUT = 60
POOL_SIZE = 2  # server connections per database: fewer than the web server's threads

pytestmark = [
    pytest.mark.postgres,
    # Only so that the test database is set up when this module runs alone: the tests talk to the
    # web servers, which see what the module's fixture committed.
    pytest.mark.django_db,
]


def pgbouncer_binary():
    found = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        message = "PgBouncer is not installed (apt-get install -y pgbouncer)"
        if os.environ.get("BREAKWATER_REQUIRE_PGBOUNCER") == "1":
            pytest.fail(f"{message}; BREAKWATER_REQUIRE_PGBOUNCER=1 requires the PgBouncer tests to run")
        pytest.skip(message)
    return found


# --- PgBouncer ---------------------------------------------------------------------------------


class PgBouncer:
    """A private PgBouncer: config, user list and log in a folder of its own, on a free port.

    PgBouncer refuses to run as root; as root it is started with `-u postgres`. Its listening
    port cannot be handed over ready-bound, so a port another process took meanwhile means
    trying again on another one.
    """

    def __init__(self, binary, databases, server):
        self.binary = binary
        self.databases = databases  # {name clients use: real database name}
        self.server = server  # the PostgreSQL server's host, port, user and password
        self.folder = Path(tempfile.mkdtemp(prefix="bw-pgbouncer-"))
        self.folder.chmod(0o755)  # PgBouncer may run as another user (below)
        self.process = None
        self.port = None

    def start(self, attempts=5):
        for _ in range(attempts):
            self.port = free_port()
            self._write_config()
            argv = [self.binary, *self._run_as(), str(self.folder / "pgbouncer.ini")]
            self.process = Process("pgbouncer", argv, env=dict(os.environ), log=self.folder / f"pgbouncer-{self.port}.log")
            wait_until(lambda: self._ready() or not self.process.alive(), timeout=START_TIMEOUT, what="PgBouncer to accept connections")
            if self.process.alive():
                return
            if "Address already in use" not in self.process.text():
                self.process.check_alive()  # fails with PgBouncer's own words
        raise AssertionError(f"PgBouncer found no free port in {attempts} attempts")

    def _run_as(self):
        if os.geteuid() != 0:
            return []
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("PgBouncer does not run as root, and there is no postgres user to run it as")
        for path in (self.folder, *self.folder.glob("*.ini"), *self.folder.glob("*.txt")):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        return ["-u", "postgres"]

    def _write_config(self):
        host, port, user, password = self.server
        login = f"user={user}" + (f" password={password}" if password else "")
        entries = "\n".join(f"{name} = host={host} port={port} dbname={real} {login}" for name, real in self.databases.items())
        (self.folder / "users.txt").write_text(f'"{user}" ""\n')
        config = self.folder / "pgbouncer.ini"
        config.touch(mode=0o600)  # it may hold the server's password
        config.write_text(
            f"""[databases]
{entries}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.folder / "users.txt"}
admin_users = {user}
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = 100
server_reset_query = DISCARD ALL
server_reset_query_always = 1
"""
        )

    def _ready(self):
        try:
            self.show("VERSION")
        except psycopg.OperationalError:
            return False
        return f"listening on 127.0.0.1:{self.port}" in self.process.text()

    def show(self, what):
        """A SHOW command on PgBouncer's admin console, as a list of dicts."""
        user = self.server[2]
        with psycopg.connect(host="127.0.0.1", port=self.port, user=user, dbname="pgbouncer", autocommit=True, connect_timeout=2) as conn:
            return conn.cursor(row_factory=dict_row).execute(f"SHOW {what}").fetchall()

    def counts(self, database, what):
        """A total of SHOW STATS for one database (0 until a client first used it)."""
        return next((row[what] for row in self.show("STATS") if row["database"] == database), 0)

    def url(self, database, application_name):
        return f"postgres://{self.server[2]}@127.0.0.1:{self.port}/{database}?application_name={application_name}"

    def stop(self):
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


# --- the database and its frozen copy ----------------------------------------------------------


def _admin_connection():
    db = connection.settings_dict
    return psycopg.connect(
        host=db.get("HOST") or "127.0.0.1", port=db.get("PORT") or 5432, user=db.get("USER") or None,
        password=db.get("PASSWORD") or None, dbname="postgres", autocommit=True,
    )  # fmt: skip


def replica_freeze(name, copy):
    """`copy`: the database as it is now, read-only from then on (a replica that stopped
    replaying). Copying needs the source to have no other sessions: this process closes its own."""
    connection.close()
    with _admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(copy), sql.Identifier(name)))
        conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(sql.Identifier(copy)))


def replica_drop(copy):
    with _admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))


def _world_before_copy():
    """What both databases hold: a factory, bob, builds 41 and 42, four devices, wave v42 with
    one status sample (so the history export has a row to read)."""
    factory = factory_create(name="acme")
    bob = user_create(username="bob", factory=factory, role=Role.RELEASE_MANAGER, password="bob-pass-1")
    archive = offline_targets_key(factory=factory, actor=bob)
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG, LAB])
    fleet_seed(factory=factory, tag=TAG, groups={"canary": 4}, ungrouped=0, test_devices=0, online_ratio=1.0, version=41, hardware_ids=HWIDS)
    wave = make_wave(factory, bob, archive, name="v42", version=42, tag=TAG)
    wave_status_sample_take(wave=wave)
    return {
        "factory": factory,
        "bob": bob,
        "archive": archive,
        "devices": [str(u) for u in Device.objects.filter(factory=factory).order_by("name").values_list("uuid", flat=True)],
    }


def _world_after_copy(world):
    """Written to the primary only: a wave on another tag, a device, and an API token (the token
    is read before any page marks its reads as replica-safe, so it must work although the copy
    lacks it)."""
    factory, bob = world["factory"], world["bob"]
    make_wave(factory, bob, world["archive"], name="lab-42", version=42, tag=LAB)
    before = set(Device.objects.filter(factory=factory).values_list("uuid", flat=True))
    fleet_seed(factory=factory, tag=LAB, groups={}, ungrouped=1, test_devices=0, online_ratio=1.0, version=41, hardware_ids=HWIDS)
    (late,) = set(Device.objects.filter(factory=factory).values_list("uuid", flat=True)) - before
    return {
        "devices": world["devices"],
        "late_device": str(late),
        "token": api_token_create(user=bob, factory=factory)[1],
    }


# --- the web servers ---------------------------------------------------------------------------


def web_server(name, folder, database_url, replica_url=None):
    """gunicorn on a socket this process bound (fd://), Breakwater's settings behind PgBouncer."""
    drop = ("DATABASE_REPLICA_URL", "DATABASE_CONN_MAX_AGE", "SQLITE_PATH", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
            "CELERY_TASK_ALWAYS_EAGER", "DJANGO_ALLOW_ASYNC_UNSAFE")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    var = folder / name / "var"
    var.mkdir(parents=True)
    env.update(
        DJANGO_SETTINGS_MODULE="factory.project.settings",
        PYTHONPATH=str(ROOT),
        DATABASE_URL=database_url,
        BREAKWATER_PGBOUNCER="1",
        SECRET_KEY=settings.SECRET_KEY,
        BREAKWATER_KEY_ENCRYPTION_KEY=settings.TUF_KEY_ENCRYPTION_KEY,
        BREAKWATER_VAR_DIR=str(var),
    )
    if replica_url:
        env["DATABASE_REPLICA_URL"] = replica_url
    sock = listening_socket()
    try:
        argv = [sys.executable, "-m", "gunicorn", "factory.project.wsgi", "-b", f"fd://{sock.fileno()}", "-w", "1", "--threads", "4",
                "--timeout", "60", "--no-control-socket"]  # fmt: skip
        return Process(name, argv, env=env, log=folder / name / "output.log", cwd=ROOT, pass_fds=(sock.fileno(),), port=sock.getsockname()[1])
    finally:
        sock.close()  # the child holds it now


def _web_ready(web):
    try:
        return urllib3.request("GET", f"http://127.0.0.1:{web.port}/login/", timeout=5, retries=False).status == 200
    except urllib3.exceptions.HTTPError:
        return False


class Servers:
    def __init__(self, pgbouncer, pooled, replicated, world):
        self.pgbouncer = pgbouncer
        self.pooled = pooled  # PgBouncer, the primary only
        self.replicated = replicated  # PgBouncer, the primary and the frozen replica
        self.world = world


@pytest.fixture(scope="module")
def servers(django_db_setup, django_db_blocker, tmp_path_factory):
    binary = pgbouncer_binary()
    folder = tmp_path_factory.mktemp("pgbouncer")
    name = connection.settings_dict["NAME"]
    copy = f"{name}_replica"[:63]
    pgbouncer, webs = None, []
    try:
        with django_db_blocker.unblock():
            world = _world_before_copy()
            replica_freeze(name, copy)
            world = _world_after_copy(world)
            db = connection.settings_dict
            server = (db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432, db.get("USER") or "postgres", db.get("PASSWORD") or "")
        pgbouncer = PgBouncer(binary, {"primary": name, "replica": copy}, server)
        pgbouncer.start()
        webs = [
            web_server("web-pooled", folder, pgbouncer.url("primary", "web-pooled")),
            web_server("web-replicated", folder, pgbouncer.url("primary", "web-replicated"), pgbouncer.url("replica", "web-replicated")),
        ]
        wait_until(lambda: all(_web_ready(web) for web in webs), timeout=START_TIMEOUT, what="the web servers", processes=webs)
        yield Servers(pgbouncer, *webs, world)
    finally:
        for web in webs:
            web.stop()
        if pgbouncer is not None:
            pgbouncer.stop()  # its server connections close with it: the test database can be dropped
        with django_db_blocker.unblock():
            replica_drop(copy)
            # What the fixture and the servers committed is not rolled back by a test
            # transaction: empty the tables for the tests that come after.
            call_command("flush", interactive=False, verbosity=0)


# --- clients -----------------------------------------------------------------------------------


def signed_in(web):
    browser = Browser("127.0.0.1")
    response = browser.sign_in(web, "bob", "bob-pass-1")
    assert response.status == 302, response.data[-2000:]
    return browser


def page(browser, web, path, **kwargs):
    response = browser.get(web, path, **kwargs)
    assert response.status == 200, (path, response.status, response.data[-3000:])
    return response.data.decode()


def api(web, token, method, path, payload=None):
    headers = {"Authorization": f"Token {token}"}
    body = None
    if payload is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(payload)
    response = urllib3.request(method, f"http://127.0.0.1:{web.port}/api/v1/factories/acme{path}", body=body, headers=headers, retries=False, timeout=30)
    assert response.status == 200, (path, response.status, response.data[-3000:])
    return response


def csv_rows(response):
    return [line.split(",") for line in response.data.decode().splitlines()]


def scheduled(live):
    return live["totals"]["scheduled"]


# --- the tests ---------------------------------------------------------------------------------


def test_the_dashboard_works_through_pgbouncer_in_transaction_mode(servers):
    web, pgbouncer = servers.pooled, servers.pgbouncer
    before = pgbouncer.counts("primary", "total_xact_count")
    browser = signed_in(web)
    waves = page(browser, web, "/waves/")
    assert '<span class="username">bob</span>' in waves and "<strong>v42</strong>" in waves
    assert "<h1>v42</h1>" in page(browser, web, "/waves/v42/")
    devices = page(browser, web, "/devices/")
    assert all(f'href="/devices/{uuid}/"' in devices for uuid in servers.world["devices"])

    # Every query went through PgBouncer, whose pool is in transaction mode.
    pools = {row["database"]: row for row in pgbouncer.show("POOLS")}
    assert pools["primary"]["pool_mode"] == "transaction"
    assert any(row["database"] == "primary" for row in pgbouncer.show("CLIENTS") if row.get("application_name") == "web-pooled")
    assert pgbouncer.counts("primary", "total_xact_count") > before


def test_an_api_rollout_writes_through_pgbouncer(servers):
    web, token = servers.pooled, servers.world["token"]
    device = servers.world["devices"][0]
    result = api(web, token, "POST", "/waves/v42/rollout", {"uuids": [device]}).json()
    assert result["count"] == 1
    assert api(web, token, "GET", f"/waves/v42/rollouts/{result['rollout']}").json()["uuids"] == [device]
    # Staged and shown as such: the rollout's transaction committed on the database.
    assert WaveDevice.objects.filter(wave__name="v42", device__uuid=device).exists()
    assert scheduled(api(web, token, "GET", "/waves/v42/status/live").json()) >= 1


def test_status_reads_and_exports_work_through_pgbouncer(servers):
    web, token = servers.pooled, servers.world["token"]
    live = api(web, token, "GET", "/waves/v42/status/live").json()
    assert live["wave"] == "v42" and live["totals"]["total"] == 4
    assert csv_rows(api(web, token, "GET", "/waves/v42/status.csv"))[-1][:2] == ["(Total)", "4"]
    # The history export reads its rows with .iterator(): a server-side cursor, were they not
    # turned off behind PgBouncer, is gone after the DECLARE's own transaction here.
    history = csv_rows(api(web, token, "GET", "/waves/v42/status/history.csv"))
    assert history[0][:3] == ["taken_at", "total", "online"] and [row[1] for row in history[1:]] == ["4"]
    assert csv_rows(api(web, token, "GET", "/status.csv"))[0][0] == "tag"

    browser = signed_in(web)
    assert "v42" in page(browser, web, "/waves/v42/live/", headers={"HX-Request": "true"})
    assert page(browser, web, "/waves/v42/status-history.csv").splitlines()[1:] and page(browser, web, "/status/")
    assert page(browser, web, "/status/live/", headers={"HX-Request": "true"})


def test_with_a_replica_lists_and_status_read_the_replica_and_everything_else_the_primary(servers):
    web, token, pgbouncer = servers.replicated, servers.world["token"], servers.pgbouncer
    replica_before = pgbouncer.counts("replica", "total_query_count")

    # The session is written to the primary and read from it, even on a page that reads the replica.
    browser = signed_in(web)
    waves = page(browser, web, "/waves/")
    assert '<span class="username">bob</span>' in waves
    # The list reads the copy (no lab-42), the wave's own page the primary.
    assert "<strong>v42</strong>" in waves and "<strong>lab-42</strong>" not in waves
    assert "<h1>lab-42</h1>" in page(browser, web, "/waves/lab-42/")
    late = servers.world["late_device"]
    assert f'href="/devices/{late}/"' not in page(browser, web, "/devices/")
    assert late in page(browser, web, f"/devices/{late}/")

    # A rollout writes to the primary (the copy refuses writes) and is read back from it...
    device = servers.world["devices"][1]
    result = api(web, token, "POST", "/waves/v42/rollout", {"uuids": [device]}).json()
    assert result["count"] == 1
    assert api(web, token, "GET", f"/waves/v42/rollouts/{result['rollout']}").json()["uuids"] == [device]
    # ...while the status reads show the copy, taken before any rollout, and the primary has it.
    assert scheduled(api(web, token, "GET", "/waves/v42/status/live").json()) == 0
    assert scheduled(api(servers.pooled, token, "GET", "/waves/v42/status/live").json()) >= 1
    totals = csv_rows(api(web, token, "GET", "/waves/v42/status.csv"))
    header = totals[0]
    assert totals[-1][header.index("scheduled")] == "0"
    assert len(csv_rows(api(web, token, "GET", "/waves/v42/status/history.csv"))) == 2
    assert "scheduled" in page(browser, web, "/waves/v42/live/", headers={"HX-Request": "true"})

    assert pgbouncer.counts("replica", "total_query_count") > replica_before
    assert any(row["database"] == "replica" for row in pgbouncer.show("CLIENTS") if row.get("application_name") == "web-replicated")
