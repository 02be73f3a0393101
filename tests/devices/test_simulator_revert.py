"""Simulated devices through the real gateway follow a revert: python-tuf devices and devices
speaking aktualizr-lite's protocol install the re-release (the earlier build's bytes at a higher
version) once staged, then everyone at completion; a group that fails the bad build installs the
re-release (the simulated failures model a bad build)."""
from devices.models import Device, DeviceEvent
from factory.models import CiTarget
from waves.status_table import wave_status
from waves.services import wave_complete, wave_revert, wave_rollout, wave_sign

from .conftest import wait_for
from .test_aktualizr_simulator import aklite, fleet, mixed  # noqa: F401  (fixtures)
from .test_simulator import TAG, group_row, make_wave


def production_versions(factory):
    return dict(Device.objects.filter(factory=factory, is_production=True).values_list("name", "target_version"))


def test_both_kinds_of_device_follow_a_revert_and_the_bad_builds_failures_do_not_repeat(mixed, factory, bob, fleet):
    # Build 42 is bad: canary devices fail it (they stay where they were), the others take it.
    mixed.fail_rates = {"canary": 1.0}
    bad = make_wave(factory, bob, fleet)
    wave_complete(wave=bad, actor=bob)
    mixed.cycle()
    names = production_versions(factory)
    failed = DeviceEvent.objects.filter(device__group__name="canary", event_type="install-completed", success=False, target_version=42)
    assert wait_for(lambda: failed.count() == 3, timeout=15)  # 2 python-tuf canaries and akl-canary
    expected = {n: (42 if not n.startswith(("canary-", "akl-")) else (41 if n.startswith("canary-") else None)) for n in names}
    assert wait_for(lambda: production_versions(factory) == expected, timeout=15), production_versions(factory)

    # The revert re-releases 41 as 43 (the next number after CI's 42), pruning the bad build.
    revert = wave_sign(wave=wave_revert(factory=factory, actor=bob, name="back-to-41", tag=TAG, to_version=41, prune=[42]), actor=bob, key_archive=fleet)
    assert (revert.version, revert.rerelease_of) == (43, 41)
    wave_rollout(wave=revert, actor=bob, group="canary")
    mixed.cycle()
    staged = {n: (43 if n.startswith(("canary-", "akl-")) else v) for n, v in expected.items()}
    assert wait_for(lambda: production_versions(factory) == staged, timeout=15), production_versions(factory)
    ok = DeviceEvent.objects.filter(device__group__name="canary", event_type="install-completed", success=True, target_version=43)
    assert wait_for(lambda: ok.count() == 3, timeout=15)
    # The aktualizr-lite device runs build 41's content: the same file hash as CI build 41.
    build41 = CiTarget.objects.get(factory=factory, version=41, hardware_id="intel-corei7-64").sha256
    assert aklite(mixed)["akl-canary"].identity.ostree_hash == build41
    assert aklite(mixed)["akl-canary"].identity.target_name == "intel-corei7-64-lmp-43"
    status = wave_status(wave=revert)
    assert group_row(status, "canary")["on_wave"] == 3 and status["totals"]["on_bad_build"] == len([v for v in staged.values() if v == 42])

    wave_complete(wave=revert, actor=bob)
    mixed.cycle()
    assert wait_for(lambda: set(production_versions(factory).values()) == {43}, timeout=15), production_versions(factory)
    assert not DeviceEvent.objects.filter(event_type="install-completed", success=False, target_version=43).exists()
    assert wave_status(wave=revert)["totals"]["on_bad_build"] == 0
