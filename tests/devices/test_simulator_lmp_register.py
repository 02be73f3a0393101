"""End to end (needs the GW and TUF branches: /ota/devices/ and the aktualizr flavour): the simulator's
lmp-device-register path registers aktualizr-lite devices that then follow CI as test devices, beside
a python-tuf device registered the old way."""
import pytest

from devices.models import Device
from devices.services import registration_token_create
from devices.simulator import Keystore, Simulator, register, register_lmp
from factory.tuf.services.repository import ci_build_publish

from .conftest import wait_for

HWID = "intel-corei7-64"


def test_simulator_registers_aktualizr_devices_as_lmp_device_register_and_they_follow_ci(gateway, factory, live_server, settings, tmp_path):
    settings.BREAKWATER_GATEWAY_URL = gateway.url
    ci_build_publish(factory=factory, version=42, hardware_ids=[HWID], tags=["main"])
    _, token = registration_token_create(factory=factory, actor=None, tag="main", group=None, production=False, max_uses=3, expires_days=1, name="sim")
    keystore = Keystore(tmp_path / "fleet")
    akl = register_lmp(web_url=live_server.url, token=token, factory_name=factory.name, keystore=keystore, count=2, hardware_ids=[HWID], tag="main", production=False)
    tuf = register(web_url=live_server.url, token=token, factory_name=factory.name, keystore=keystore, count=1, hardware_ids=[HWID], production=False)
    assert {i.protocol for i in akl} == {"aktualizr"} and {i.uuid for i in keystore.load().values()} == {i.uuid for i in akl + tuf}
    sim = Simulator(identities=list(keystore.load().values()), keystore=keystore, gateway_url=gateway.url, reboot_delay=0, threads=4, seed=1)
    assert sim.summary()["kinds"] == {"aktualizr": 2, "tuf": 1}
    sim.cycle()
    wait_for(lambda: set(Device.objects.filter(factory=factory).values_list("target_version", flat=True)) == {42}, timeout=15)
    assert sim.summary().get("updated") == 3
