"""End to end: simulated devices speaking aktualizr-lite's protocol register through
lmp-device-register's door (/ota/devices/) and follow CI and waves through the real gateway, beside
python-tuf devices."""
import tomllib

import pytest

from devices.aktualizr_device import USER_AGENT, lmp_register_identity
from devices.fleet import fleet_seed, take_over
from devices.models import Device, DeviceEvent
from devices.services import registration_token_create
from devices.simulator import Identity, Keystore, Simulator
from factory.tuf.services.repository import ci_build_publish
from waves.status_table import wave_status
from waves.services import wave_cancel, wave_complete, wave_rollout

from .conftest import wait_for
from .test_simulator import HWIDS, TAG, group_row, make_wave

HWID = HWIDS[0]


@pytest.fixture
def fleet(gateway, factory, bob):
    from tests.tuf_helpers import offline_targets_key

    archive = offline_targets_key(factory=factory, actor=bob)
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    fleet_seed(factory=factory, tag=TAG, groups={"canary": 2, "beta": 2}, ungrouped=1, test_devices=1, version=41, hardware_ids=HWIDS)
    return archive


@pytest.fixture
def mixed(fleet, gateway, factory, live_server, settings, tmp_path):
    """The seeded python-tuf devices, plus two aktualizr-lite devices registered through
    /ota/devices/: `akl-test` (a test device) and `akl-canary` (production, group canary)."""
    settings.BREAKWATER_GATEWAY_URL = gateway.url  # what the sota.toml it answers points at
    keystore = Keystore(tmp_path / "fleet")
    identities = take_over(factory=factory, keystore=keystore)
    for identity in identities:
        identity.protocol = "tuf"

    def lmp(name, production, group=None):
        _, token = registration_token_create(factory=factory, actor=None, tag=TAG, group=group, production=production, max_uses=1)
        folder = tmp_path / "pending" / name
        fields = lmp_register_identity(
            device_api=live_server.url + "/ota/devices/", token=token, folder=folder, factory_name=factory.name, hardware_id=HWID, tag=TAG, name=name,
            group=group and group.name, production=production,
        )
        identity = Identity(**fields)
        device_uuid = identity.uuid
        folder.rename(keystore.folder(device_uuid))
        keystore.update(identity)
        return identity

    from devices.models import DeviceGroup

    canary = DeviceGroup.objects.get(factory=factory, name="canary")
    aktualizr = [lmp("akl-test", False), lmp("akl-canary", True, canary)]
    sim = Simulator(identities=[*identities, *aktualizr], keystore=keystore, gateway_url=gateway.url, reboot_delay=0, threads=8, seed=7)
    return sim


def version_of(factory, name):
    return Device.objects.filter(factory=factory, name=name).values_list("target_version", flat=True).first()


def aklite(sim):
    return {d.identity.name: d for d in sim.devices if d.identity.protocol == "aktualizr"}


def test_lmp_registration_writes_the_files_and_a_sota_toml_the_device_configures_itself_from(mixed, factory, gateway):
    device = aklite(mixed)["akl-canary"]
    for filename in ("pkey.pem", "client.pem", "root.crt", "sota.toml"):
        assert (device.folder / filename).exists()
    config = tomllib.loads((device.folder / "sota.toml").read_text())
    assert config["tls"]["server"] == gateway.url
    assert device.config.hardware_id == HWID and device.config.tags == [TAG]
    row = Device.objects.get(factory=factory, name="akl-canary")
    assert row.is_production and row.group.name == "canary" and row.hardware_id == HWID


def test_aktualizr_devices_follow_ci_as_test_devices_and_waves_only_once_staged(mixed, factory, bob, fleet):
    mixed.cycle()
    # The test device follows CI to 42; the production one sees no production target yet.
    assert wait_for(lambda: version_of(factory, "akl-test") == 42, timeout=15)
    assert wait_for(lambda: version_of(factory, "test-0001") == 42, timeout=15)  # python-tuf beside it
    assert version_of(factory, "akl-canary") is None
    assert mixed.summary()["aktualizr-updated"] == 1  # polls: 2, and the test device's check-in after its reboot
    assert mixed.summary()["aktualizr-polls"] == 3
    assert mixed.summary()["kinds"] == {"aktualizr": 2, "tuf": len(mixed.devices) - 2}

    wave = make_wave(factory, bob, fleet)
    mixed.cycle()
    assert version_of(factory, "akl-canary") is None  # a wave nobody is staged in changes nothing
    assert not DeviceEvent.objects.filter(device__name="akl-canary").exists()

    wave_rollout(wave=wave, actor=bob, group="canary")
    mixed.cycle()
    assert wait_for(lambda: version_of(factory, "akl-canary") == 42, timeout=15)
    assert wait_for(lambda: version_of(factory, "canary-0001") == 42, timeout=15)
    assert version_of(factory, "beta-0001") == 41
    # Check-ins and events are flushed apart: the device's version can land before its events.
    events = DeviceEvent.objects.filter(device__name="akl-canary")
    assert wait_for(lambda: events.count() >= 5, timeout=15)
    steps = list(events.order_by("id").values_list("event_type", "success", "target_version"))
    assert steps == [
        ("download-started", None, 42),
        ("download-completed", True, 42),
        ("install-started", None, 42),
        ("install-applied", None, 42),  # aktualizr-lite sends success on Completed events only
        ("install-completed", True, 42),
    ]
    status = wave_status(wave=wave)
    canary = group_row(status, "canary")
    assert (canary["total"], canary["on_wave"], canary["failed"]) == (3, 3, 0)

    wave_complete(wave=wave, actor=bob)
    mixed.cycle()
    assert wait_for(lambda: set(Device.objects.filter(factory=factory, is_production=True).values_list("target_version", flat=True)) == {42}, timeout=15)
    # Done: polls again install nothing and send no more events.
    events = DeviceEvent.objects.filter(device__name="akl-canary").count()
    mixed.cycle()
    assert DeviceEvent.objects.filter(device__name="akl-canary").count() == events


def test_after_a_cancel_an_aktualizr_device_refuses_the_rollback_and_installs_nothing(mixed, factory, bob, fleet):
    mixed.fail_rates = {"canary": 1.0}
    wave = make_wave(factory, bob, fleet)
    wave_rollout(wave=wave, actor=bob, group="canary")
    mixed.cycle()
    device = aklite(mixed)["akl-canary"]
    failed = DeviceEvent.objects.filter(device__name="akl-canary", event_type="install-completed", success=False)
    assert wait_for(lambda: failed.count() == 1, timeout=15)
    wave_cancel(wave=wave, actor=bob)
    mixed.cycle()
    assert device.rollback  # its verifier refused the lower targets version
    assert version_of(factory, "akl-canary") is None
    assert DeviceEvent.objects.filter(device__name="akl-canary", event_type="download-started").count() == 1
    # The three fetched the wave's targets; those whose install failed are failed, which comes
    # before held (each device in one state, as every status door shows it).
    assert wait_for(lambda: (lambda row: row["failed"] + row["held"])(group_row(wave_status(wave=wave), "canary")) == 3, timeout=15)
    row = group_row(wave_status(wave=wave), "canary")
    assert row["failed"] >= 1 and row["older"] == 3, row


def test_the_aktualizr_device_speaks_the_headers_of_the_real_client(mixed):
    device = aklite(mixed)["akl-test"]
    headers = device.headers(tuf=True)
    assert headers["User-Agent"] == USER_AGENT
    assert headers["x-ats-tags"] == TAG and headers["x-ats-target"] == "Initial Target"


def test_taken_over_devices_speaking_aktualizr_lite_follow_a_canary_rollout(fleet, gateway, factory, bob, tmp_path):
    keystore = Keystore(tmp_path / "all-aklite")
    sim = Simulator(identities=take_over(factory=factory, keystore=keystore), keystore=keystore, gateway_url=gateway.url, reboot_delay=0, threads=8, seed=3, aktualizr_share=1.0)
    assert {d.identity.protocol for d in sim.devices} == {"aktualizr"}
    wave = make_wave(factory, bob, fleet)
    wave_rollout(wave=wave, actor=bob, group="canary")
    sim.cycle()
    production = Device.objects.filter(factory=factory, is_production=True)
    expected = {name: 42 if name.startswith("canary-") else 41 for name in production.values_list("name", flat=True)}
    assert wait_for(lambda: dict(production.values_list("name", "target_version")) == expected, timeout=15)
    assert sim.summary()["aktualizr-updated"] == 2 + 1  # the canaries and the test device (CI 42)
