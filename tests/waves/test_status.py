"""Wave status and factory status: counts a support engineer reads off the screen."""
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device, DeviceEvent
from factory.errors import ApplicationError
from waves.selectors import factory_status
from waves.status_table import wave_status
from waves.services import wave_cancel, wave_complete, wave_rollout

from .conftest import TAG, make_wave, seed


def by_group(status):
    return {row["group"]: row for row in status["groups"]}


def test_status_per_group_in_order_with_totals(factory, bob, fleet100, wave):
    seed(factory, groups={"alpha": 4})
    wave_rollout(wave=wave, actor=bob, group="beta")
    wave_rollout(wave=wave, actor=bob, group="canary", limit=2)
    canary = list(Device.objects.filter(group__name="canary").order_by("name"))
    staged = [d for d in canary if d.wave_stagings.exists()]
    unstaged = [d for d in canary if d not in staged]
    Device.objects.filter(pk=staged[0].pk).update(target_version=42)
    Device.objects.filter(pk=unstaged[0].pk).update(target_version=43, last_seen=timezone.now() - timedelta(days=2))
    beta = Device.objects.filter(group__name="beta").order_by("name")
    DeviceEvent.objects.create(
        factory=factory, device=beta[0], event_type="install-completed", target_version=42, success=False, detail="no space", reported_at=timezone.now()
    )

    status = wave_status(wave=wave)
    assert [r["group"] for r in status["groups"]] == ["beta", "canary", "alpha", "(No Group)"]
    rows = by_group(status)
    assert rows["beta"] | {"versions": None, "version_chips": None, "rollout_time": None, "group_id": None} == {
        "group": "beta", "group_id": None, "total": 20, "online": 20, "on_wave": 0, "newer": 0, "older": 20,
        # the states of waves/states.py, each device in one: the failed device is not scheduled too
        "scheduled": 19, "downloading": 0, "installing": 0, "failed": 1, "held": 0, "offline": 0, "not_scheduled": 0, "stuck": 0,
        "versions": None, "version_chips": None, "rollout_time": None,
        "on_bad_build": 0,  # not a re-release
    }
    assert rows["canary"]["on_wave"] == 1 and rows["canary"]["newer"] == 1 and rows["canary"]["older"] == 3
    assert rows["canary"]["scheduled"] == 1  # two staged, one already updated
    assert rows["canary"]["online"] == 4
    assert rows["canary"]["versions"] == {43: 1, 42: 1, 41: 3}
    assert rows["alpha"]["rollout_time"] is None and rows["alpha"]["scheduled"] == 0
    assert rows["beta"]["rollout_time"] < rows["canary"]["rollout_time"]
    assert status["totals"]["total"] == 104 and status["totals"]["scheduled"] == 20 and status["totals"]["failed"] == 1
    # test devices never count
    assert sum(r["total"] for r in status["groups"]) == Device.objects.filter(is_production=True).count()


def test_offline_threshold_is_a_parameter(factory, bob, fleet100, wave):
    Device.objects.filter(group__name="beta").update(last_seen=timezone.now() - timedelta(hours=5))
    assert by_group(wave_status(wave=wave))["beta"]["online"] == 0
    assert by_group(wave_status(wave=wave, offline_threshold_hours=6))["beta"]["online"] == 20
    with pytest.raises(ApplicationError, match="Offline threshold"):
        wave_status(wave=wave, offline_threshold_hours="soon")


def test_a_device_that_updated_after_failing_is_not_failed(factory, bob, fleet100, wave):
    device = Device.objects.filter(group__name="beta").first()
    wave_rollout(wave=wave, actor=bob, group="beta")
    DeviceEvent.objects.create(factory=factory, device=device, event_type="install-completed", target_version=42, success=False, reported_at=timezone.now())
    assert wave_status(wave=wave)["totals"]["failed"] == 1
    Device.objects.filter(pk=device.pk).update(target_version=42)
    assert wave_status(wave=wave)["totals"]["failed"] == 0


def test_after_cancel_devices_that_fetched_the_wave_show_as_held(factory, bob, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    canary = list(Device.objects.filter(group__name="canary").order_by("name"))
    Device.objects.filter(pk=canary[0].pk).update(target_version=42)
    Device.objects.filter(pk__in=[d.pk for d in canary[1:3]]).update(targets_version_seen=42)
    wave_cancel(wave=wave, actor=bob)
    row = by_group(wave_status(wave=wave))["canary"]
    assert row["held"] == 2 and row["on_wave"] == 1 and row["scheduled"] == 0


def test_factory_status_per_tag_production_and_test_apart(factory, bob, builds, offline_key):
    seed(factory, ungrouped=10, test_devices=4, version=41)
    seed(factory, ungrouped=2, version=40, online_ratio=0.0)
    wave_complete(wave=make_wave(factory, bob, offline_key, name="w41", version=41, prune=()), actor=bob)
    status = {(row["tag"], row["production"]): row for row in factory_status(factory=factory)}
    prod = status[(TAG, True)]
    assert prod["latest_version"] == 41 and prod["total"] == 12 and prod["on_latest"] == 10 and prod["online"] == 10
    assert prod["orphan"] == 2  # version 40 is not in the production targets
    test = status[(TAG, False)]
    assert test["latest_version"] == 43 and test["total"] == 4 and test["on_latest"] == 0 and test["orphan"] == 0
