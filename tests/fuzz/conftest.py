"""Fuzzing fixtures: a small fleet registered through the real endpoint, the gateway in process,
and the real gateway process (tests/devices/conftest.py) for the cases that go over mutual TLS."""
import pytest

from devices import pki
from factory.project.gateway.handler import Gateway
from devices.models import Device
from devices.services import device_ca_get
from factory.tuf.services.repository import ci_build_publish, factory_create
from tests.devices.conftest import gateway, gateway_process, register  # noqa: F401  (fixtures)

from .harness import buffer_empty, der_of, report_write

HWID = "intel-corei7-64"


@pytest.fixture(scope="session", autouse=True)
def fuzz_report():
    yield
    report_write()


class Fleet:
    """Three devices of one factory (two production on `production`, one test device on `main`),
    one device of another factory, their certificates, and an in-process gateway."""

    def __init__(self, factory, other_factory, register):
        ci_build_publish(factory=factory, version=42, hardware_ids=[HWID], tags=["production", "main"])
        self.factory, self.other_factory = factory, other_factory
        self.files = [register(factory), register(factory), register(factory, production=False, tag="main"), register(other_factory)]
        self.devices = [Device.objects.get(uuid=f.uuid) for f in self.files]
        self.ders = [der_of(f.response["certificate"]) for f in self.files]
        ca = device_ca_get(factory=factory)
        self.ca_cert, self.ca_key = pki.cert_load(ca.certificate), pki.key_decrypt(ca.private_key)
        other_ca = device_ca_get(factory=other_factory)
        self.other_ca_cert, self.other_ca_key = pki.cert_load(other_ca.certificate), pki.key_decrypt(other_ca.private_key)
        self.gateway = Gateway(device_cache_seconds=0)


@pytest.fixture
def fleet(db, register):  # noqa: F811
    buffer_empty()
    made = Fleet(factory_create(name="acme"), factory_create(name="globex"), register)
    yield made
    buffer_empty()
