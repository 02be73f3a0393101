"""End to end: simulated devices (python-tuf ngclient over mutual TLS, each with its own key) poll
a real gateway process while a release manager drives a wave through the services."""
import time

import pytest

from devices.fleet import fleet_seed, take_over
from devices.models import Device, DeviceEvent
from devices.simulator import Keystore, Simulator, register
from factory.tuf.services.repository import ci_build_publish
from waves.retries import wave_retry_failed
from waves.status_table import wave_status
from waves.services import wave_cancel, wave_complete, wave_init, wave_rollout, wave_sign

from .conftest import wait_for

TAG = "production"
HWIDS = ["intel-corei7-64", "raspberrypi4-64"]


@pytest.fixture
def fleet(gateway, factory, bob):
    """CI builds 41 and 42, bob's offline key, and 3 canary, 3 beta, 4 ungrouped production
    devices and 2 test devices, all on 41."""
    from tests.tuf_helpers import offline_targets_key

    archive = offline_targets_key(factory=factory, actor=bob)
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    fleet_seed(factory=factory, tag=TAG, groups={"canary": 3, "beta": 3}, ungrouped=4, test_devices=2, version=41, hardware_ids=HWIDS)
    return archive


@pytest.fixture
def simulator(gateway, factory, tmp_path):
    def make(**options):
        keystore = Keystore(tmp_path / "fleet")
        identities = take_over(factory=factory, keystore=keystore)
        return Simulator(identities=identities, keystore=keystore, gateway_url=gateway.url, reboot_delay=0, threads=8, seed=7, **options)

    return make


def make_wave(factory, bob, archive):
    wave = wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag=TAG)
    return wave_sign(wave=wave, actor=bob, key_archive=archive)


def versions_by_name(factory, production=True):
    return dict(Device.objects.filter(factory=factory, is_production=production).values_list("name", "target_version"))


def settled(factory, expected, production=True):
    """Wait until the gateway's flush shows `expected` ({name: version}). The gateway flushes every
    0.2 s: waiting 0.6 s first means a state that should not change has had its chance to."""
    time.sleep(0.6)
    wait_for(lambda: versions_by_name(factory, production) == expected, timeout=15)
    return versions_by_name(factory, production)


def group_row(status, name):
    return next(row for row in status["groups"] if row["group"] == name)


def test_a_canary_rollout_updates_exactly_canary_then_complete_updates_the_rest(fleet, factory, bob, simulator):
    sim = simulator()
    sim.cycle()
    production = {name: 41 for name in versions_by_name(factory)}
    # Production devices see no new production target yet; test devices follow CI to 42.
    assert settled(factory, production) == production
    assert settled(factory, {"test-0001": 42, "test-0002": 42}, production=False) == {"test-0001": 42, "test-0002": 42}

    wave = make_wave(factory, bob, fleet)
    sim.cycle()
    assert settled(factory, production) == production  # a wave nobody is staged in changes nothing
    assert not DeviceEvent.objects.filter(device__is_production=True).exists()

    wave_rollout(wave=wave, actor=bob, group="canary")
    sim.cycle()
    expected = {name: 42 if name.startswith("canary-") else 41 for name in production}
    assert settled(factory, expected) == expected
    status = wave_status(wave=wave)
    canary = group_row(status, "canary")
    assert (canary["total"], canary["on_wave"], canary["scheduled"], canary["failed"]) == (3, 3, 0, 0)
    assert status["totals"]["on_wave"] == 3
    assert group_row(status, "beta")["on_wave"] == 0
    steps = list(DeviceEvent.objects.filter(device__name="canary-0001").order_by("id").values_list("event_type", "success", "target_version"))
    assert steps == [
        ("download-started", None, 42),
        ("download-completed", True, 42),
        ("install-started", None, 42),
        ("install-applied", True, 42),
        ("install-completed", True, 42),
    ]

    wave_complete(wave=wave, actor=bob)
    sim.cycle()
    everyone = {name: 42 for name in production}
    assert settled(factory, everyone) == everyone
    assert wave_status(wave=wave)["totals"]["on_wave"] == len(everyone)


def test_a_group_with_failures_shows_them_in_the_status(fleet, factory, bob, simulator):
    sim = simulator(fail_rates={"beta": 1.0})
    wave = make_wave(factory, bob, fleet)
    wave_rollout(wave=wave, actor=bob, group="canary")
    wave_rollout(wave=wave, actor=bob, group="beta")
    sim.cycle()
    expected = {name: 42 if name.startswith("canary-") else 41 for name in versions_by_name(factory)}
    assert settled(factory, expected) == expected

    def failures():
        status = wave_status(wave=wave)
        return group_row(status, "beta")["failed"] == 3 and status

    status = wait_for(failures, timeout=15)
    assert status, wave_status(wave=wave)["groups"]
    assert group_row(status, "canary")["failed"] == 0
    assert DeviceEvent.objects.filter(device__group__name="beta", event_type="install-completed", success=False, target_version=42).count() == 3
    # A failed target is not retried on the next poll.
    sim.cycle()
    time.sleep(0.6)
    assert DeviceEvent.objects.filter(device__group__name="beta", event_type="download-started").count() == 3


def test_after_a_cancel_devices_that_fetched_the_wave_refuse_the_rollback_and_install_nothing(fleet, factory, bob, simulator):
    # Canary devices fetch the wave's targets but their install fails: they stay on 41.
    sim = simulator(fail_rates={"canary": 1.0})
    wave = make_wave(factory, bob, fleet)
    wave_rollout(wave=wave, actor=bob, group="canary")
    sim.cycle()
    assert wait_for(lambda: Device.objects.filter(group__name="canary", targets_version_seen__gte=42).count() == 3, timeout=15)

    failed = DeviceEvent.objects.filter(device__group__name="canary", event_type="install-completed", success=False)
    assert wait_for(lambda: failed.count() == 3, timeout=15)
    downloads = DeviceEvent.objects.filter(device__is_production=True, event_type="download-started")
    assert downloads.count() == 3

    wave_cancel(wave=wave, actor=bob)
    sim.cycle()
    canary = [d for d in sim.devices if d.identity.group == "canary"]
    assert all(d.rollback for d in canary)  # ngclient refused the lower targets version
    assert all(not d.rollback for d in sim.devices if d.identity.group != "canary")
    production = settled(factory, {name: 41 for name in versions_by_name(factory)})
    assert set(production.values()) == {41}
    assert downloads.count() == 3
    # Their install failed and TUF keeps them where they are: each device is in one state, failed
    # before held (waves/states.py), as every status door shows it.
    canary_row = group_row(wave_status(wave=wave), "canary")
    assert (canary_row["failed"], canary_row["held"], canary_row["older"]) == (3, 0, 3)


def test_devices_that_never_come_back_stop_checking_in_after_their_update(fleet, factory, bob, simulator):
    sim = simulator(never_return=10)
    wave = make_wave(factory, bob, fleet)
    wave_rollout(wave=wave, actor=bob, group="canary")
    sim.cycle()
    canary = Device.objects.filter(group__name="canary")
    assert wait_for(lambda: set(canary.values_list("target_version", flat=True)) == {42}, timeout=15)
    gone = [d for d in sim.devices if d.gone]
    assert sorted(d.identity.name for d in gone) == ["canary-0001", "canary-0002", "canary-0003"]
    polls = {d.identity.name: d.polls for d in gone}
    sim.cycle()
    assert {d.identity.name: d.polls for d in gone} == polls


def test_the_simulator_registers_devices_through_the_endpoint(gateway, factory, live_server, tmp_path):
    from devices.services import registration_token_create

    ci_build_publish(factory=factory, version=42, hardware_ids=HWIDS, tags=["main"])
    _, token = registration_token_create(factory=factory, actor=None, tag="main", production=False, max_uses=3)
    keystore = Keystore(tmp_path / "fleet")
    identities = register(
        web_url=live_server.url, token=token, factory_name=factory.name, keystore=keystore, count=3, hardware_ids=HWIDS, production=False, target_version=41
    )
    assert Device.objects.filter(factory=factory, is_production=False, tag="main").count() == 3
    sim = Simulator(identities=identities, keystore=keystore, gateway_url=gateway.url, reboot_delay=0)
    sim.cycle()
    assert wait_for(lambda: set(Device.objects.filter(factory=factory).values_list("target_version", flat=True)) == {42}, timeout=15)


def test_a_device_that_failed_takes_up_a_retry_and_its_failure_no_longer_counts(fleet, factory, bob, simulator):
    sim = simulator(fail_rates={"beta": 1.0})
    wave = make_wave(factory, bob, fleet)
    wave_rollout(wave=wave, actor=bob, group="beta")
    sim.cycle()
    assert wait_for(lambda: group_row(wave_status(wave=wave), "beta")["failed"] == 3, timeout=15)
    # Without a retry a failed device does not try the same build again.
    sim.fail_rates = {}
    sim.cycle()
    unchanged = {name: 41 for name in versions_by_name(factory)}
    assert settled(factory, unchanged) == unchanged

    wave_retry_failed(wave=wave, actor=bob)
    sim.cycle()  # new metadata: the devices ask, learn of the retry and install again
    sim.cycle()
    expected = {name: 42 if name.startswith("beta-") else 41 for name in versions_by_name(factory)}
    assert settled(factory, expected) == expected
    assert sim.summary()["retries-taken"] == 3
    assert wait_for(lambda: group_row(wave_status(wave=wave), "beta")["failed"] == 0, timeout=15)
