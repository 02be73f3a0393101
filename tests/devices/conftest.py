"""Device fixtures: registration helpers, device identities on disk, and a real gateway process
(`manage.py gateway`, mutual TLS) sharing the test database.

The gateway is a separate process, so it cannot see an in-memory SQLite database: with SQLite the
test database is a file for the session (set before it is created). Tests that talk to the
gateway use `transactional_db` so that what they write is committed and visible to it.
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import urllib3
from django.conf import settings
from django.db import connections
from django.test import Client

from devices import pki
from devices.gateway_identity import gateway_identity_get
from devices.models import GatewayIdentity
from devices.services import registration_token_create
from tests.processes import database_env, free_port

BASE = Path(__file__).resolve().parents[2]

_db = connections["default"].settings_dict
if _db["ENGINE"].endswith("sqlite3") and not _db["TEST"].get("NAME"):
    _db["TEST"]["NAME"] = os.path.join(tempfile.mkdtemp(prefix="bw-devices-test-"), "test.sqlite3")


# --- devices on disk --------------------------------------------------------------------------


@dataclass
class DeviceFiles:
    """A registered device as the device itself holds it: key, certificate chain, server CA."""

    uuid: str
    folder: Path
    response: dict

    @property
    def cert(self):
        return str(self.folder / "client.pem")

    @property
    def key(self):
        return str(self.folder / "client.key")

    @property
    def server_ca(self):
        return str(self.folder / "server-ca.pem")


def write_identity(folder, *, key, chain_pem, server_ca_pem, device_uuid, response=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "client.key").write_text(pki.key_pem(key))
    (folder / "client.pem").write_text(chain_pem)
    (folder / "server-ca.pem").write_text(server_ca_pem)
    return DeviceFiles(uuid=str(device_uuid), folder=folder, response=response or {})


def register_via_endpoint(tmp_path, factory, *, production=True, tag="production", group=None, name="", hardware_id="intel-corei7-64", token=None):
    """Register a new device through POST /devices/register/ as a device would."""
    if token is None:
        _, token = registration_token_create(factory=factory, actor=None, tag=tag, group=group, production=production)
    key = pki.key_generate()
    device_uuid = uuid.uuid4()
    csr = pki.device_csr_build(private_key=key, device_uuid=device_uuid, factory_name=factory.name, production=production)
    response = Client().post(
        "/devices/register/",
        json.dumps({"token": token, "csr": csr, "name": name, "hardware_id": hardware_id}),
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    data = response.json()
    return write_identity(
        tmp_path / data["uuid"],
        key=key,
        chain_pem=data["certificate"] + data["ca_certificate"],
        server_ca_pem=data["gateway"]["ca_certificate"],
        device_uuid=device_uuid,
        response=data,
    )


@pytest.fixture
def register(tmp_path):
    def make(factory, **kwargs):
        return register_via_endpoint(tmp_path, factory, **kwargs)

    return make


# --- the gateway process ----------------------------------------------------------------------


class GatewayProcess:
    def __init__(self, port, identity, folder):
        self.port = port
        self.identity = identity
        self.folder = folder
        self.url = f"https://127.0.0.1:{port}"
        self.process = None

    def identity_restore(self):
        """Put the gateway's TLS identity back after a transactional test flushed the tables."""
        GatewayIdentity.objects.get_or_create(name="default", defaults=self.identity)


def gateway_start(folder, env=None, *, threads=4):
    """Start `manage.py gateway` (one worker) on a free port; returns it once it accepts connections.
    `env` adds settings (BREAKWATER_GATEWAY_*_TIMEOUT and the caps) to the test defaults."""
    identity = gateway_identity_get(hosts=["127.0.0.1", "localhost"])
    saved = {f.name: getattr(identity, f.name) for f in GatewayIdentity._meta.concrete_fields if f.name not in ("id", "name")}
    port = free_port()
    env = {
        **os.environ,
        **database_env(),
        "BREAKWATER_VAR_DIR": str(folder / "var"),
        "SECRET_KEY": settings.SECRET_KEY,
        "BREAKWATER_KEY_ENCRYPTION_KEY": settings.TUF_KEY_ENCRYPTION_KEY,
        "BREAKWATER_GATEWAY_URL": f"https://127.0.0.1:{port}",
        "BREAKWATER_CHECKIN_FLUSH_SECONDS": "0.2",
        "BREAKWATER_GATEWAY_DEVICE_CACHE_SECONDS": "0",
        # Tests roll out and poll at once: no second of delay.
        "BREAKWATER_GATEWAY_VIEW_CACHE_SECONDS": "0",
        "DJANGO_SETTINGS_MODULE": "factory.project.settings",
        **(env or {}),
    }
    gateway = GatewayProcess(port, saved, folder)
    # The child writes to its own copy of the log's descriptor; this process needs none open.
    with open(folder / "gateway.log", "w") as log:
        gateway.process = subprocess.Popen(
            [sys.executable, "manage.py", "gateway", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", str(threads), "--tls-dir", str(folder / "tls")],
            cwd=BASE,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"the gateway exited: {(folder / 'gateway.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return gateway
        except OSError:
            if time.monotonic() > deadline:
                gateway_stop(gateway)
                raise RuntimeError("the gateway did not start in 30 s")
            time.sleep(0.1)


def gateway_stop(gateway):
    gateway.process.terminate()
    try:
        gateway.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait()


@pytest.fixture(scope="session")
def gateway_process(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        gateway = gateway_start(tmp_path_factory.mktemp("gateway"))
    yield gateway
    gateway_stop(gateway)


@pytest.fixture
def gateway(gateway_process, transactional_db):
    gateway_process.identity_restore()
    return gateway_process


def tls_context(device=None, *, server_ca=None):
    context = ssl.create_default_context(cafile=server_ca or device.server_ca)
    if device is not None:
        context.load_cert_chain(device.cert, device.key)
    return context


def device_pool(gateway, device=None, *, server_ca=None):
    """A kept-alive HTTPS connection to the gateway presenting `device`'s certificate (or none)."""
    return urllib3.HTTPSConnectionPool(
        "127.0.0.1", gateway.port, maxsize=1, ssl_context=tls_context(device, server_ca=server_ca), retries=False, timeout=10
    )


def wait_for(predicate, timeout=10.0, interval=0.1):
    """Poll until `predicate()` is truthy (the gateway flushes check-ins every 0.2 s here)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)
