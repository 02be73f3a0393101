"""The status counts PostgreSQL keeps as rows are written (waves/status_counts.py) equal a full
recount of the devices, events and stagings: through a wave's life, under concurrent check-ins,
events, rollouts, retries, completes and cancels, and the periodic check repairs counts that a
write outside the triggers left wrong."""
import threading
from datetime import timedelta

import pytest
from django.core.cache import caches
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from devices.checkins import Checkin, checkins_write
from devices.models import Device, DeviceGroup, FleetCount
from devices.services import device_delete, devices_assign_group
from waves import status
from waves.models import Wave, WaveActivity, WaveActivityCount
from waves.retries import wave_retry_failed
from waves.services import wave_cancel, wave_complete, wave_rollout
from waves.status_counts import counts_compact, counts_kept, wave_counts_drop

from .conftest import TAG, make_wave, seed
from .test_status_aggregation import report

# The database keeps the status counts on PostgreSQL only (the marker skips these on SQLite).
pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def close_thread_caches():
    """Disconnect the Redis pools of this thread's caches (a rollout touches the served-metadata
    cache): Django makes a cache per thread and never closes a Redis one, so the thread's socket
    would be left for the garbage collector, whose ResourceWarning fails the run."""
    for cache in caches.all(initialized_only=True):
        for pool in getattr(getattr(cache, "_cache", None), "_pools", {}).values():
            pool.disconnect()


def params(wave):
    now = timezone.now()
    return status._params(wave, now=now, cutoff=status.offline_cutoff(), stuck_cutoff=now - timedelta(minutes=30))


def assert_counts_equal_recount(wave):
    wave.refresh_from_db()
    assert counts_kept(wave)
    p = params(wave)
    counted, recounted = status._states(wave, p, counted=True), status._states(wave, p, counted=False)
    assert {g: status._comparable(r) for g, r in counted.items()} == {g: status._comparable(r) for g, r in recounted.items()}
    assert status.wave_counts_check(wave=wave, repair=False) == {}
    return counted


def check_in(devices, *, version=None, targets_version=None, seen=None):
    seen = (seen or timezone.now()).timestamp()
    checkins_write(
        {
            d.id: Checkin(seen=seen, target_name=f"{d.hardware_id}-lmp-{version}" if version else None, target_version=version, targets_version=targets_version)
            for d in devices
        }
    )


def totals(groups):
    out = {}
    for row in groups.values():
        for state, n in row["states"].items():
            out[state] = out.get(state, 0) + n
    return out


def test_counts_equal_a_recount_through_a_waves_life(factory, bob, builds, offline_key):
    seed(factory, groups={"canary": 6, "beta": 20, "us-east": 30}, ungrouped=20, test_devices=5, online_ratio=0.8)
    wave = make_wave(factory, bob, offline_key)
    Wave.objects.filter(pk=wave.pk).update(created_at=timezone.now() - timedelta(hours=2))
    assert_counts_equal_recount(wave)

    wave_rollout(wave=wave, actor=bob, group="canary")
    wave_rollout(wave=wave, actor=bob, group="beta", limit="8")
    ungrouped = list(Device.objects.filter(factory=factory, group=None, is_production=True).order_by("id"))
    wave_rollout(wave=wave, actor=bob, uuids=[str(d.uuid) for d in ungrouped[:4]])
    assert_counts_equal_recount(wave)

    canary = list(Device.objects.filter(group__name="canary").order_by("id"))
    beta = list(Device.objects.filter(group__name="beta", wave_stagings__wave=wave).order_by("id"))
    long_ago = timezone.now() - timedelta(hours=1)
    report(canary[0], "download-started", at=long_ago)  # downloading, and stuck by its report
    for step in ("download-started", "download-completed", "install-started"):
        report(canary[1], step)
    report(canary[2], "install-completed", success=False, detail="no space left")
    report(beta[0], "install-completed", success=True)
    check_in([beta[0]], version=42, targets_version=5)
    check_in(canary[3:], targets_version=5)
    report(ungrouped[10], "download-started")  # reported without being staged
    report(ungrouped[11], "download-started", at=wave.created_at - timedelta(minutes=5))  # before the wave: not counted
    test_device = Device.objects.filter(factory=factory, is_production=False).first()
    report(test_device, "install-completed", success=False)
    counted = assert_counts_equal_recount(wave)
    assert totals(counted)["failed"] == 1 and totals(counted)["installing"] == 1 and totals(counted)["updated"] == 1

    # A retry takes back the failure until the device reports again.
    wave_retry_failed(wave=wave, actor=bob)
    counted = assert_counts_equal_recount(wave)
    assert totals(counted)["failed"] == 0

    # Devices move: a group, a tag, a deletion, a newcomer in a fully rolled-out group.
    devices_assign_group(factory=factory, uuids=[str(canary[2].uuid), str(ungrouped[12].uuid)], group=DeviceGroup.objects.get(factory=factory, name="us-east"), actor=bob)
    Device.objects.filter(pk=beta[1].pk).update(tag="other")
    device_delete(device=canary[1], actor=bob)
    Device.objects.create(factory=factory, uuid="0f0e0d0c-0b0a-4908-8706-050403020100", name="late", tag=TAG, is_production=True, group=canary[0].group, last_seen=timezone.now())
    counts_compact(now=timezone.now())
    assert_counts_equal_recount(wave)

    wave_complete(wave=wave, actor=bob)
    assert_counts_equal_recount(wave)
    assert FleetCount.objects.filter(factory_id=factory.id).count() > 0


def test_a_canceled_wave_counts_its_held_devices(factory, bob, builds, offline_key):
    seed(factory, groups={"canary": 5}, ungrouped=5)
    wave = make_wave(factory, bob, offline_key)
    wave_rollout(wave=wave, actor=bob, group="canary")
    canary = list(Device.objects.filter(group__name="canary").order_by("id"))
    check_in(canary[:3], targets_version=42)  # fetched the wave's targets
    report(canary[3], "download-started")
    wave_cancel(wave=wave, actor=bob)
    counted = assert_counts_equal_recount(wave)
    assert totals(counted)["held"] == 3


def test_counts_survive_concurrent_check_ins_events_and_rollouts(factory, bob, builds, offline_key):
    seed(factory, groups={"a": 40, "b": 40}, ungrouped=40)
    wave = make_wave(factory, bob, offline_key)
    # A full-group rollout sends its count task after the commit: before the threads, so no
    # thread is left holding a broker connection.
    wave_rollout(wave=wave, actor=bob, group="a")
    devices = list(Device.objects.filter(factory=factory, is_production=True).order_by("id"))
    errors = []
    barrier = threading.Barrier(5)

    def run(work):
        try:
            barrier.wait()
            for i in range(6):
                work(i)
        except Exception as exc:  # the test reports it
            errors.append(exc)
        finally:
            connection.close()
            close_thread_caches()

    def check_ins(i):
        check_in(devices[i::3], version=42 if i == 5 else None, targets_version=5 + i)

    def more_check_ins(i):
        check_in(devices[::-2], seen=timezone.now() - timedelta(hours=i))

    def events(i):
        for d in devices[i::6][:10]:
            report(d, ("download-started", "install-started", "install-completed")[i % 3], success=(False if i % 3 == 2 else None))

    def rollouts(i):
        if i == 0:
            wave_rollout(wave=wave, actor=bob, uuids=[str(d.uuid) for d in devices[40:60]])
        else:
            wave_rollout(wave=wave, actor=bob, limit="5")

    def compactions(i):
        counts_compact(now=timezone.now())

    threads = [threading.Thread(target=run, args=(w,)) for w in (check_ins, more_check_ins, events, rollouts, compactions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert_counts_equal_recount(wave)
    wave_complete(wave=wave, actor=bob)
    assert_counts_equal_recount(wave)


def test_the_check_repairs_counts_a_write_outside_the_triggers_left_wrong(factory, bob, builds, offline_key):
    seed(factory, groups={"canary": 5}, ungrouped=5)
    wave = make_wave(factory, bob, offline_key)
    wave_rollout(wave=wave, actor=bob, group="canary")
    report(Device.objects.filter(group__name="canary").first(), "download-started")
    FleetCount.objects.create(factory_id=factory.id, tag=TAG, group_id=0, target_version=41, targets_seen=-1, seen_minute=-1, n=3)
    WaveActivity.objects.filter(wave=wave).update(progress=2)

    differences = status.wave_counts_check(wave=wave)
    assert "fleet" in differences and len(differences) > 1
    assert status.wave_counts_check(wave=wave, repair=False) == {}


def test_a_wave_from_before_the_counts_is_recounted_then_rebuilt(factory, bob, builds, offline_key):
    seed(factory, groups={"canary": 5}, ungrouped=5)
    wave = make_wave(factory, bob, offline_key)
    wave_rollout(wave=wave, actor=bob, group="canary")
    wave_counts_drop(wave=wave)
    report(Device.objects.filter(group__name="canary").first(), "install-completed", success=False)
    wave.refresh_from_db()
    assert not counts_kept(wave) and not WaveActivity.objects.filter(wave=wave).exists()
    recounted = status._states(wave, params(wave))
    assert totals(recounted)["failed"] == 1

    assert status.wave_counts_ready(wave=wave)
    assert_counts_equal_recount(wave)
    assert totals(status._states(wave, params(wave), counted=True)) == totals(recounted)


def test_upkeep_stops_keeping_the_counts_of_waves_no_longer_followed(factory, bob, builds, offline_key):
    seed(factory, groups={"canary": 5})
    wave = make_wave(factory, bob, offline_key)
    wave_rollout(wave=wave, actor=bob, group="canary")
    report(Device.objects.filter(group__name="canary").first(), "download-started")
    wave_complete(wave=wave, actor=bob)
    Wave.objects.filter(pk=wave.pk).update(finished_at=timezone.now() - status.FOLLOW_FINISHED - timedelta(minutes=1))
    assert status.status_counts_upkeep() == 1
    wave.refresh_from_db()
    assert not wave.counts_ready and not WaveActivity.objects.filter(wave=wave).exists()


def test_the_recount_command_proves_and_rebuilds(factory, bob, builds, offline_key, capsys):
    seed(factory, groups={"canary": 5})
    wave = make_wave(factory, bob, offline_key)
    wave_rollout(wave=wave, actor=bob, group="canary")
    call_command("status_recount")
    assert f"{factory.name}/{wave.name}: counts agree with the recount" in capsys.readouterr().out
    # A count written by hand, as no trigger would.
    WaveActivityCount.objects.create(wave_id=wave.id, group_id=0, target_version=41, targets_seen=-1, seen_minute=-1, progress=1, failed=False, rollout_id=0, since_minute=-1, n=2)
    call_command("status_recount", "--factory", factory.name, "--wave", wave.name, "--check-only")
    assert "differed from the recount" in capsys.readouterr().out
