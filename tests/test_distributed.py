"""Several web, gateway and worker processes against one PostgreSQL and one Redis.

The module starts real processes that share only the test database, Redis and the Celery broker,
each with a BREAKWATER_VAR_DIR of its own as if on its own machine: two web servers (gunicorn),
two device gateways (`manage.py gateway`) and one Celery worker. They run Breakwater's settings
with one change (tests/distributed_settings.py): a task queue of their own on the shared broker.
Each test then does something through one process and checks it through another: sessions,
sign-in limits, rollouts reaching devices through either gateway, check-ins flushed by the
gateways, a background rollout run by the worker and followed on the other web server.
"""
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
import urllib3
from django.conf import settings
from django.core.management import call_command

from devices import pki
from devices.fleet import fleet_seed
from devices.gateway_identity import gateway_identity_get
from devices.models import Device
from devices.services import registration_token_create
from factory.models import Role
from factory.services import api_token_create, user_create
from factory.tuf.services.repository import ci_build_publish, factory_create
from tests.processes import Browser, database_url, free_port, wait_until
from tests.tuf_helpers import offline_targets_key
from tests.waves.conftest import HWIDS, make_wave

ROOT = Path(__file__).resolve().parents[1]
TAG = "production"
LAB = "lab"  # a second tag, so the background rollout has a wave of its own
START_TIMEOUT = 60
# The gateway keeps a tag's view rows in memory for a second (devices/gunicorn_gateway.py); give a
# loaded machine a few more before calling a wave change stale.
PROPAGATION_TIMEOUT = 10
QUEUE = f"distributed-test-{uuid.uuid4().hex[:12]}"

pytestmark = [
    pytest.mark.postgres,
    # Only so that the test database is set up when this module runs alone: the tests themselves
    # talk to the processes, which see what the module's fixture committed.
    pytest.mark.django_db,
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis shared by every process (set REDIS_URL); CI sets it"),
    pytest.mark.skipif(
        str(settings.CELERY_BROKER_URL).startswith("filesystem://"),
        reason="needs a broker server every process reaches (set CELERY_BROKER_URL); CI sets it",
    ),
]


# --- processes ---------------------------------------------------------------------------------


def _environment(var_dir):
    """What every process is given: the shared services and secrets, and a var/ folder of its own."""
    drop = ("DJANGO_ALLOW_ASYNC_UNSAFE", "SQLITE_PATH", "BREAKWATER_GATEWAY_VIEW_CACHE_SECONDS", "CELERY_TASK_ALWAYS_EAGER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.distributed_settings",
        BREAKWATER_TEST_QUEUE=QUEUE,
        PYTHONPATH=str(ROOT),
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        SECRET_KEY=settings.SECRET_KEY,
        BREAKWATER_KEY_ENCRYPTION_KEY=settings.TUF_KEY_ENCRYPTION_KEY,
        BREAKWATER_VAR_DIR=str(var_dir),
        # Clients reach the web servers through one proxy hop: each test signs in from addresses
        # of its own, so counts from other tests (or earlier runs) never block it.
        BREAKWATER_TRUSTED_PROXY_HOPS="1",
        BREAKWATER_ROLLOUT_BACKGROUND_THRESHOLD="3",
        BREAKWATER_CHECKIN_FLUSH_SECONDS="0.5",
    )
    return env


class Process:
    """One server process in its own process group, its output in a log file."""

    def __init__(self, name, argv, folder, port=None):
        self.name = name
        self.port = port
        var = folder / name / "var"
        var.mkdir(parents=True)
        self.log = folder / name / "output.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=_environment(var), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def text(self):
        return self.log.read_text(errors="replace")

    def check_alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.text()[-3000:]}")

    def terminate(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def wait(self):
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)


def web_process(name, folder):
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "factory.project.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1", "--threads", "4",
            "--timeout", "60", "--no-control-socket"]  # fmt: skip
    return Process(name, argv, folder, port)


def gateway_process(name, folder):
    port = free_port()
    argv = [sys.executable, "manage.py", "gateway", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4",
            "--tls-dir", str(folder / name / "tls")]  # fmt: skip
    return Process(name, argv, folder, port)


def worker_process(name, folder):
    argv = [sys.executable, "-m", "celery", "-A", "factory.project", "worker", "-l", "info", "--pool", "solo",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"{name}-{os.getpid()}@%h"]  # fmt: skip
    return Process(name, argv, folder)


def wait_for(condition, timeout, what, processes=()):
    return wait_until(condition, timeout=timeout, what=what, processes=processes)


def _web_ready(process):
    try:
        return urllib3.request("GET", f"http://127.0.0.1:{process.port}/login/", timeout=2, retries=False).status == 200
    except urllib3.exceptions.HTTPError:
        return False


def _port_open(process):
    try:
        socket.create_connection(("127.0.0.1", process.port), timeout=0.5).close()
        return True
    except OSError:
        return False


# --- clients -----------------------------------------------------------------------------------


def fresh_address():
    """A client address no earlier test or run has used (documentation prefix: never contacted)."""
    return f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"


def api(web, token, method, path, payload=None):
    headers = {"Authorization": f"Token {token}"}
    body = None
    if payload is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(payload)
    response = urllib3.request(method, f"http://127.0.0.1:{web.port}/api/v1/factories/acme{path}", body=body, headers=headers, retries=False, timeout=30)
    assert response.status < 500, response.data[:2000]
    return response


class DeviceClient:
    """A production device as it holds itself: its key, its certificate chain, the gateway's CA."""

    def __init__(self, folder, web, registration_token, name):
        key = pki.key_generate()
        device_uuid = uuid.uuid4()
        csr = pki.device_csr_build(private_key=key, device_uuid=device_uuid, factory_name="acme", production=True)
        body = json.dumps({"token": registration_token, "csr": csr, "name": name, "hardware_id": HWIDS[0]})
        response = urllib3.request("POST", f"http://127.0.0.1:{web.port}/devices/register/", body=body,
                                   headers={"Content-Type": "application/json"}, retries=False, timeout=30)  # fmt: skip
        assert response.status == 201, response.data[:2000]
        data = response.json()
        self.uuid, self.name = data["uuid"], name
        self.folder = folder / name
        self.folder.mkdir(parents=True)
        (self.folder / "client.key").write_text(pki.key_pem(key))
        (self.folder / "client.pem").write_text(data["certificate"] + data["ca_certificate"])
        (self.folder / "server-ca.pem").write_text(data["gateway"]["ca_certificate"])
        self._pools = {}

    def _pool(self, gateway):
        if gateway.port not in self._pools:
            context = ssl.create_default_context(cafile=str(self.folder / "server-ca.pem"))
            context.load_cert_chain(str(self.folder / "client.pem"), str(self.folder / "client.key"))
            self._pools[gateway.port] = urllib3.HTTPSConnectionPool(
                "127.0.0.1", gateway.port, maxsize=1, ssl_context=context, retries=False, timeout=10
            )
        return self._pools[gateway.port]

    def request(self, gateway, method, path, *, version=41, body=None):
        headers = {"x-ats-tags": TAG, "x-ats-target": f"{HWIDS[0]}-lmp-{version}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        response = self._pool(gateway).request(method, path, body=body, headers=headers)
        assert response.status in (200, 202), (gateway.name, path, response.status, response.data[:500])
        return response

    def targets(self, gateway, version=41):
        """(targets metadata version, versions of the targets) this gateway serves the device."""
        signed = self.request(gateway, "GET", "/repo/targets.json", version=version).json()["signed"]
        return signed["version"], sorted({int(name.rsplit("-", 1)[1]) for name in signed["targets"]})


# --- the cluster -------------------------------------------------------------------------------


def _world():
    """What an operator and CI set up before the processes take over (committed: every process sees it)."""
    factory = factory_create(name="acme")
    bob = user_create(username="bob", factory=factory, role=Role.RELEASE_MANAGER, password="bob-pass-1")
    # Sign-in limits count per username for 15 minutes, in Redis: a name no earlier run has used.
    erin = user_create(username=f"erin-{uuid.uuid4().hex[:8]}", factory=factory, role=Role.SUPPORT, password="erin-pass-1")
    archive = offline_targets_key(factory=factory, actor=bob)
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG, LAB])
    fleet_seed(factory=factory, tag=LAB, groups={"bench": 6}, ungrouped=0, test_devices=0, online_ratio=1.0, version=41, hardware_ids=HWIDS)
    make_wave(factory, bob, archive, name="v42", version=42, tag=TAG)
    make_wave(factory, bob, archive, name="lab-42", version=42, tag=LAB)
    gateway_identity_get(hosts=["127.0.0.1", "localhost"])
    _, registration = registration_token_create(factory=factory, actor=None, tag=TAG, production=True)
    return {
        "token": api_token_create(user=bob, factory=factory)[1],
        "registration": registration,
        "erin": erin.username,
        "lab_devices": [str(u) for u in Device.objects.filter(factory=factory, tag=LAB).order_by("name").values_list("uuid", flat=True)],
    }


class Cluster:
    def __init__(self, folder, world, web_a, web_b, gateway_1, gateway_2, worker):
        self.folder = folder
        self.world = world
        self.web_a, self.web_b = web_a, web_b
        self.gateway_1, self.gateway_2 = gateway_1, gateway_2
        self.worker = worker
        self.processes = [web_a, web_b, gateway_1, gateway_2, worker]

    def device(self, name):
        """A device registered through web A."""
        return DeviceClient(self.folder / "devices", self.web_a, self.world["registration"], name)

    def wait_for(self, condition, what, timeout=PROPAGATION_TIMEOUT):
        return wait_for(condition, timeout, what, self.processes)


@pytest.fixture(scope="module")
def cluster(django_db_setup, django_db_blocker, tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    processes = []
    try:
        with django_db_blocker.unblock():
            world = _world()
        processes = [
            web_process("web-a", folder),
            web_process("web-b", folder),
            gateway_process("gateway-1", folder),
            gateway_process("gateway-2", folder),
            worker_process("worker", folder),
        ]
        web_a, web_b, gateway_1, gateway_2, worker = processes
        wait_for(lambda: _web_ready(web_a) and _web_ready(web_b), START_TIMEOUT, "the web servers", processes)
        wait_for(lambda: _port_open(gateway_1) and _port_open(gateway_2), START_TIMEOUT, "the gateways", processes)
        wait_for(lambda: "ready." in worker.text(), START_TIMEOUT, "the worker", processes)
        yield Cluster(folder, world, web_a, web_b, gateway_1, gateway_2, worker)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        # What the processes committed is not rolled back by a test transaction: empty the
        # tables for the tests that come after, as a transactional test does.
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
        if str(settings.CELERY_BROKER_URL).startswith("redis"):
            redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(f"_kombu.binding.{QUEUE}", QUEUE)


# --- the tests ---------------------------------------------------------------------------------


def test_a_session_signed_in_on_one_web_server_is_valid_on_the_other(cluster):
    browser = Browser(fresh_address())
    assert browser.sign_in(cluster.web_a, "bob", "bob-pass-1").status == 302
    page = browser.get(cluster.web_b, "/waves/")
    assert page.status == 200 and b'<span class="username">bob</span>' in page.data
    # The CSRF token issued by A is good on B, and signing out on B ends the session on A.
    assert browser.post(cluster.web_b, "/logout/", {}).status == 302
    assert browser.get(cluster.web_a, "/waves/").status == 302


def test_failed_sign_ins_are_counted_across_web_servers(cluster):
    username = cluster.world["erin"]
    guesser = Browser(fresh_address())
    for web in [cluster.web_a, cluster.web_b] * 5:  # ten failures, half on each server
        assert guesser.sign_in(web, username, "wrong-password").status == 200
    assert guesser.sign_in(cluster.web_a, username, "wrong-password").status == 429
    # The username's count is shared too: even the right password from elsewhere is refused.
    owner = Browser(fresh_address())
    refused = owner.sign_in(cluster.web_b, username, "erin-pass-1")
    assert refused.status == 429 and b"Too many failed attempts" in refused.data


def test_a_rollout_on_one_web_server_reaches_the_device_through_either_gateway(cluster):
    token = cluster.world["token"]
    staged, other = cluster.device("staged-1"), cluster.device("other-1")
    gateways = (cluster.gateway_1, cluster.gateway_2)
    # Both gateways have served (and cached) the production targets before the rollout.
    before = {(device.name, gateway.name): device.targets(gateway) for device in (staged, other) for gateway in gateways}
    assert all(42 not in versions for _, versions in before.values()), before

    rollout = api(cluster.web_a, token, "POST", "/waves/v42/rollout", {"uuids": [staged.uuid]}).json()
    assert rollout["count"] == 1
    shown = api(cluster.web_b, token, "GET", "/waves/v42").json()
    assert [r["device_count"] for r in shown["rollouts"]] == [1]

    started = time.monotonic()
    wave_targets = cluster.wait_for(
        lambda: (a := staged.targets(cluster.gateway_1)) == staged.targets(cluster.gateway_2) and 42 in a[1] and a,
        "both gateways to serve the staged device the wave",
    )
    assert wave_targets[0] == 42
    assert time.monotonic() - started < PROPAGATION_TIMEOUT
    assert all(other.targets(gateway) == before[("other-1", gateway.name)] for gateway in gateways)

    # Completed through the other web server: every device on the tag gets the wave's targets.
    assert api(cluster.web_b, token, "POST", "/waves/v42/complete").json()["status"] == "complete"
    cluster.wait_for(
        lambda: all(device.targets(gateway) == wave_targets for device in (other, staged) for gateway in gateways),
        "both gateways to serve every device the completed wave's targets",
    )


def test_check_ins_through_either_gateway_are_written_and_shown_on_the_dashboard(cluster):
    token = cluster.world["token"]
    first, second = cluster.device("checkin-1"), cluster.device("checkin-2")
    first.request(cluster.gateway_1, "GET", "/repo/timestamp.json", version=41)
    second.request(cluster.gateway_2, "GET", "/repo/timestamp.json", version=41)
    event = [{"type": "install-started", "target": f"{HWIDS[0]}-lmp-42", "version": 42}]
    second.request(cluster.gateway_1, "POST", "/events", body=json.dumps(event))

    def written():
        shown = [api(cluster.web_b, token, "GET", f"/devices/{d.uuid}").json() for d in (first, second)]
        return all(d["last_seen"] and d["target_version"] == 41 and d["online"] for d in shown)

    cluster.wait_for(written, "both gateways' check-ins in the database")
    events = api(cluster.web_a, token, "GET", f"/devices/{second.uuid}/events").json()["items"]
    assert [(e["event_type"], e["target_version"]) for e in events] == [("install-started", 42)]

    browser = Browser(fresh_address())
    browser.sign_in(cluster.web_a, "bob", "bob-pass-1")
    page = browser.get(cluster.web_b, f"/devices/{second.uuid}/").data.decode()
    assert f'<dt>Current target</dt><dd>{HWIDS[0]}-lmp-41 <span class="muted">(version 41)</span>' in page
    assert "<dt>Last seen</dt><dd><time" in page and '<span class="pill ok">online</span>' in page
    assert f'<strong>Install started</strong>\n        <span class="mono">{HWIDS[0]}-lmp-42</span>' in page


def test_a_background_rollout_started_on_one_web_server_is_run_by_the_worker_and_followed_on_the_other(cluster):
    uuids = cluster.world["lab_devices"]
    browser = Browser(fresh_address())
    browser.sign_in(cluster.web_a, "bob", "bob-pass-1")
    htmx = {"HX-Request": "true", "HX-Target": "rollout-panel"}

    # Preview on A, confirm on B: the preview lives in the shared cache.
    preview = browser.post(cluster.web_a, "/waves/lab-42/rollout/", {"group": "", "uuids": "\n".join(uuids)}, headers=htmx)
    assert preview.status == 200, preview.data[-2000:]
    preview_url = preview.headers["HX-Push-Url"]
    confirm = browser.get(cluster.web_b, preview_url + "?confirm=1", headers=htmx)
    assert confirm.status == 200, "web B does not know the preview web A made"
    fields = {name: confirm.data.decode().split(f'name="{name}" value="', 1)[1].split('"', 1)[0] for name in ("count", "digest")}
    assert fields["count"] == str(len(uuids)) == "6"
    go = browser.post(cluster.web_b, preview_url + "go/", fields, headers=htmx)
    assert go.status == 200 and "/rollout-jobs/" in go.headers["HX-Redirect"], go.data[-2000:]

    # The worker runs it; web A, which neither started nor ran it, shows it done.
    job_url = go.headers["HX-Redirect"]
    done = cluster.wait_for(
        lambda: b"A Wave is being rolled out to 6 devices." in (page := browser.get(cluster.web_a, job_url).data) and page,
        "the rollout job to be shown done on web A",
        timeout=30,
    )
    assert b'hx-trigger="every 1s"' not in done
    assert "wave_rollout_job" in cluster.worker.text() and "succeeded" in cluster.worker.text()
    status = api(cluster.web_a, cluster.world["token"], "GET", "/waves/lab-42/status").json()
    assert status["totals"]["scheduled"] == 6, status["totals"]
