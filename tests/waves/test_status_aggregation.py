"""Live wave status: per-group device states from check-ins and events, stuck devices, failure
breakdowns, time to update, samples stored once per interval, and the Celery tasks that take them."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
import redis
from django.utils import timezone

from devices.checkins import Checkin, checkins_write, events_write
from devices.models import Device, DeviceEvent
from waves import status, tasks
from waves.models import Rollout, Wave, WaveDevice, WaveGroup, WaveStatusSample
from waves.status_table import wave_status
from waves.services import wave_cancel, wave_complete, wave_init, wave_rollout
from waves.states import STATES

from .conftest import TAG, make_wave, seed

# --- device reports, through the same functions the gateway's flusher calls --------------------


def report(device, event_type, *, success=None, detail="", at=None, version=42):
    events_write(
        [
            {
                "factory_id": device.factory_id,
                "device_id": device.id,
                "event_type": event_type,
                "target_name": f"{device.hardware_id}-lmp-{version}",
                "target_version": version,
                "success": success,
                "detail": detail,
                "reported_at": (at or timezone.now()).isoformat(),
            }
        ]
    )


def check_in(device, *, version=None, targets_version=None):
    name = f"{device.hardware_id}-lmp-{version}" if version is not None else None
    checkins_write({device.id: Checkin(seen=timezone.now().timestamp(), target_name=name, target_version=version, targets_version=targets_version)})


def staged_ids(wave):
    ids = set(WaveDevice.objects.filter(wave=wave).values_list("device_id", flat=True))
    groups = WaveGroup.objects.filter(wave=wave).values_list("group_id", flat=True)
    ids |= set(Device.objects.filter(group_id__in=groups, tag=wave.tag, is_production=True).values_list("id", flat=True))
    return ids


def direct_state(device, wave, staged, cutoff):
    """The state of one device, from its own rows, by the definition in waves/status.py."""
    events = DeviceEvent.objects.filter(device=device, target_version=wave.version, reported_at__gte=wave.created_at)
    if device.target_version is not None and device.target_version >= wave.version:
        return "updated"
    if events.filter(success=False).exists():
        return "failed"
    if wave.status == Wave.Status.CANCELED and device.id in staged and (device.targets_version_seen or 0) >= wave.version:
        return "held"
    if events.filter(event_type__startswith="install").exists():
        return "installing"
    if events.exists():
        return "downloading"
    if device.last_seen is None or device.last_seen < cutoff:
        return "offline"
    if (wave.status == Wave.Status.ACTIVE and device.id in staged) or wave.status == Wave.Status.COMPLETE:
        return "scheduled"
    return "not_scheduled"


def direct_counts(wave):
    """Per group name: {state: n}, counted device by device (fine for a test fleet of 100)."""
    from waves.selectors import offline_cutoff

    cutoff, staged = offline_cutoff(), staged_ids(wave)
    out = {}
    for device in Device.objects.filter(factory=wave.factory, tag=wave.tag, is_production=True).select_related("group"):
        states = out.setdefault(device.group.name if device.group else "(No Group)", {s: 0 for s in STATES})
        states[direct_state(device, wave, staged, cutoff)] += 1
    return out


def by_group(snapshot):
    return {row["group"]: row for row in snapshot["groups"]}


@pytest.fixture
def mixed(factory, bob, fleet100, wave):
    """A fleet with a device in every state the wave can put one in."""
    Wave.objects.filter(pk=wave.pk).update(created_at=timezone.now() - timedelta(hours=1))
    wave.refresh_from_db()
    seed(factory, groups={"edge": 4}, online_ratio=0.0)  # four devices not seen for days
    old = Device.objects.filter(group=None, is_production=True).order_by("name")[1]
    report(old, "install-completed", success=False, detail="before this wave", at=wave.created_at - timedelta(minutes=5))

    wave_rollout(wave=wave, actor=bob, group="canary")
    wave_rollout(wave=wave, actor=bob, group="beta", limit="10")
    wave_rollout(wave=wave, actor=bob, group="edge")
    canary = list(Device.objects.filter(group__name="canary").order_by("name"))
    beta_staged = list(Device.objects.filter(group__name="beta", wave_stagings__wave=wave).order_by("name"))
    edge = list(Device.objects.filter(group__name="edge").order_by("name"))
    ungrouped = list(Device.objects.filter(group=None, is_production=True).order_by("name"))
    test_device = Device.objects.filter(is_production=False).first()

    for step in ("download-started", "download-completed", "install-started", "install-applied"):
        report(canary[0], step)
    report(canary[0], "install-completed", success=True)
    check_in(canary[0], version=42)  # updated
    report(canary[1], "download-started")  # downloading
    for step in ("download-started", "download-completed", "install-started", "install-applied"):
        report(canary[2], step)  # installing (applied, reboot pending)
    report(canary[3], "download-started")
    report(canary[3], "install-completed", success=False, detail="no space left on device")  # failed
    # canary[4]: scheduled

    now = timezone.now()
    report(beta_staged[0], "download-completed", success=False, detail="no space left on device", at=now - timedelta(minutes=2))
    report(beta_staged[0], "download-completed", success=False, detail="checksum mismatch", at=now - timedelta(minutes=1))
    report(beta_staged[0], "download-started")  # a retry after a failure: still failed
    report(beta_staged[1], "install-completed", success=False, detail="no space left on device")
    check_in(beta_staged[1], version=42)  # failed once, then updated
    check_in(ungrouped[0], version=43)  # on a newer version: updated
    report(edge[0], "download-started")  # offline since, but reported progress: downloading
    report(test_device, "install-completed", success=False, detail="test devices never count")
    return {"canary": canary, "beta_staged": beta_staged, "edge": edge, "ungrouped": ungrouped}


# --- states ---------------------------------------------------------------------------------


def test_states_match_direct_counts_on_a_mixed_fleet(factory, wave, mixed):
    snapshot = status.wave_snapshot(wave=wave)
    assert snapshot["totals"] == {
        "total": 104, "online": 100, "stuck": 0,
        "updated": 3, "downloading": 2, "installing": 1, "failed": 2, "held": 0, "offline": 3, "scheduled": 9, "not_scheduled": 84,
    }
    direct = direct_counts(wave)
    assert {row["group"]: row["states"] for row in snapshot["groups"]} == direct
    assert [row["group"] for row in snapshot["groups"]] == ["canary", "beta", "edge", "(No Group)"]
    assert by_group(snapshot)["canary"]["states"] == {
        "updated": 1, "downloading": 1, "installing": 1, "failed": 1, "scheduled": 1, "held": 0, "offline": 0, "not_scheduled": 0,
    }
    assert by_group(snapshot)["edge"]["states"]["offline"] == 3 and by_group(snapshot)["edge"]["online"] == 0


def test_states_agree_with_the_wave_status_selector(factory, wave, mixed):
    # One count (status.group_states) behind both: the status table shows the live states.
    snapshot, seed_status = status.wave_snapshot(wave=wave), wave_status(wave=wave)
    ours, theirs = by_group(snapshot), {row["group"]: row for row in seed_status["groups"]}
    assert list(ours) == list(theirs)  # same groups, same order
    for name, row in theirs.items():
        assert ours[name]["total"] == row["total"]
        assert ours[name]["online"] == row["online"]
        assert ours[name]["states"]["updated"] == row["on_wave"] + row["newer"]
        assert {state: row[state] for state in STATES if state != "updated"} == {s: n for s, n in ours[name]["states"].items() if s != "updated"}
        assert ours[name]["stuck"] == row["stuck"]
        assert ours[name]["versions"] == {("none" if v is None else str(v)): n for v, n in row["versions"].items()}
        assert ours[name]["rollout_time"] == row["rollout_time"]
    assert {s: seed_status["totals"][s] for s in STATES if s != "updated"} == {s: n for s, n in snapshot["totals"].items() if s in STATES and s != "updated"}
    assert seed_status["totals"]["scheduled"] == snapshot["totals"]["scheduled"] == 9


def test_failures_by_reason_hardware_id_and_starting_version(factory, wave, mixed):
    snapshot = status.wave_snapshot(wave=wave)
    canary_failed, beta_failed = mixed["canary"][3], mixed["beta_staged"][0]
    merged = status.failures_merged(snapshot["groups"])
    # One entry per failed device: its latest failure. The updated device and the test device are not there.
    assert merged["reason"] == {"no space left on device": 1, "checksum mismatch": 1}
    hwids = {}
    for device in (canary_failed, beta_failed):
        hwids[device.hardware_id] = hwids.get(device.hardware_id, 0) + 1
    assert merged["hardware_id"] == hwids
    assert merged["version"] == {"41": 2}
    assert by_group(snapshot)["beta"]["failures"]["reason"] == {"checksum mismatch": 1}


def test_a_failure_without_detail_is_named_by_its_step(factory, bob, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    report(Device.objects.filter(group__name="canary").first(), "download-completed", success=False)
    assert status.failures_merged(status.wave_snapshot(wave=wave)["groups"])["reason"] == {"download-completed failed": 1}


def test_after_cancel_devices_that_fetched_the_wave_are_held(factory, bob, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    canary = list(Device.objects.filter(group__name="canary").order_by("name"))
    check_in(canary[0], version=42)
    check_in(canary[1], targets_version=42)
    check_in(canary[2], targets_version=42)
    unstaged = Device.objects.filter(group__name="beta").first()
    check_in(unstaged, targets_version=42)  # not staged: cannot be held by this wave
    wave_cancel(wave=wave, actor=bob)
    wave.refresh_from_db()
    snapshot = status.wave_snapshot(wave=wave)
    assert by_group(snapshot)["canary"]["states"] == {
        "updated": 1, "held": 2, "not_scheduled": 2, "scheduled": 0, "downloading": 0, "installing": 0, "failed": 0, "offline": 0,
    }
    assert snapshot["totals"]["held"] == wave_status(wave=wave)["totals"]["held"] == 2
    assert {row["group"]: row["states"] for row in snapshot["groups"]} == direct_counts(wave)


def test_after_complete_every_device_on_the_tag_is_scheduled(factory, bob, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    check_in(Device.objects.filter(group__name="canary").first(), version=42)
    wave_complete(wave=wave, actor=bob)
    wave.refresh_from_db()
    totals = status.wave_snapshot(wave=wave)["totals"]
    assert totals["updated"] == 1 and totals["scheduled"] == 99 and totals["not_scheduled"] == 0
    assert {row["group"]: row["states"] for row in status.wave_snapshot(wave=wave)["groups"]} == direct_counts(wave)


def test_a_different_wave_on_another_tag_counts_its_own_devices(factory, bob, fleet100, wave, offline_key):
    seed(factory, ungrouped=6, tag="eu")
    eu_wave = make_wave(factory, bob, offline_key, name="eu-update", version=42, tag="eu", source_tag=TAG)
    assert status.wave_snapshot(wave=eu_wave)["totals"]["total"] == 6
    assert status.wave_snapshot(wave=wave)["totals"]["total"] == 100


# --- stuck devices ----------------------------------------------------------------------------


def test_staged_devices_without_progress_for_too_long_are_stuck(factory, bob, fleet100, wave):
    Wave.objects.filter(pk=wave.pk).update(created_at=timezone.now() - timedelta(days=1))
    wave.refresh_from_db()
    old = wave_rollout(wave=wave, actor=bob, group="beta", limit="6").rollout
    Rollout.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=5))
    beta = list(Device.objects.filter(wave_stagings__rollout=old).order_by("name"))
    report(beta[0], "download-started", at=timezone.now() - timedelta(hours=4, minutes=30))  # stalled downloading
    report(beta[1], "download-started", at=timezone.now() - timedelta(minutes=10))  # progressing
    report(beta[2], "install-completed", success=False, at=timezone.now() - timedelta(hours=4, minutes=30))  # failed: not stuck
    check_in(beta[3], version=42)  # updated: not stuck
    wave_rollout(wave=wave, actor=bob, group="canary")  # staged just now: not stuck yet

    snapshot = status.wave_snapshot(wave=wave, stuck_after_minutes=240)
    assert snapshot["totals"]["stuck"] == 3  # beta[0], beta[4], beta[5]
    assert by_group(snapshot)["beta"]["stuck"] == 3 and by_group(snapshot)["canary"]["stuck"] == 0
    assert status.wave_snapshot(wave=wave, stuck_after_minutes=6 * 60)["totals"]["stuck"] == 0
    # beta[1] reported 10 minutes ago; canary was staged just now
    assert status.wave_snapshot(wave=wave, stuck_after_minutes=5)["totals"]["stuck"] == 4


def test_a_device_joining_a_rolled_out_group_is_stuck_only_after_the_threshold(factory, bob, fleet100, wave):
    Device.objects.filter(factory=factory).update(created_at=timezone.now() - timedelta(days=1))
    rollout = wave_rollout(wave=wave, actor=bob, group="canary").rollout
    Rollout.objects.filter(pk=rollout.pk).update(created_at=timezone.now() - timedelta(hours=5))
    seed(factory, groups={"canary": 1})  # joins the group now, so it is staged now
    snapshot = status.wave_snapshot(wave=wave, stuck_after_minutes=240)
    assert by_group(snapshot)["canary"]["total"] == 6 and by_group(snapshot)["canary"]["stuck"] == 5


def test_after_a_complete_long_ago_devices_that_never_updated_are_stuck(factory, bob, fleet100, wave):
    Device.objects.filter(factory=factory).update(created_at=timezone.now() - timedelta(days=1))
    wave_rollout(wave=wave, actor=bob, group="canary")
    check_in(Device.objects.filter(group__name="canary").first(), version=42)
    report(Device.objects.filter(group__name="beta").first(), "download-started")  # progressing now
    wave_complete(wave=wave, actor=bob)
    Wave.objects.filter(pk=wave.pk).update(finished_at=timezone.now() - timedelta(hours=5))
    Rollout.objects.filter(wave=wave).update(created_at=timezone.now() - timedelta(hours=6))
    wave.refresh_from_db()
    snapshot = status.wave_snapshot(wave=wave, stuck_after_minutes=240)
    assert snapshot["totals"]["stuck"] == 100 - 1 - 1
    assert by_group(snapshot)["canary"]["stuck"] == 4 and by_group(snapshot)["beta"]["stuck"] == 19


# --- time to update ---------------------------------------------------------------------------


def test_time_to_update_percentiles_per_phase(factory, bob, fleet100, wave):
    t0 = timezone.now() - timedelta(hours=2)
    Wave.objects.filter(pk=wave.pk).update(created_at=t0 - timedelta(hours=1))
    wave.refresh_from_db()
    # canary offline, so the fleet-wide sample (online devices first) leaves canary for phase 2
    Device.objects.filter(group__name="canary").update(last_seen=timezone.now() - timedelta(days=2))
    first = wave_rollout(wave=wave, actor=bob, limit="20").rollout
    second = wave_rollout(wave=wave, actor=bob, group="canary", limit="3").rollout
    Rollout.objects.filter(pk=first.pk).update(created_at=t0)
    t1 = timezone.now() - timedelta(minutes=30)
    Rollout.objects.filter(pk=second.pk).update(created_at=t1)
    for k, device in enumerate(Device.objects.filter(wave_stagings__rollout=first).order_by("name"), start=1):
        report(device, "install-completed", success=True, at=t0 + timedelta(minutes=k))
        if k == 1:  # a repeated report: the first one counts
            report(device, "install-completed", success=True, at=t0 + timedelta(minutes=50))
    for seconds, device in zip((5, 30, 10), Device.objects.filter(wave_stagings__rollout=second).order_by("name")):
        report(device, "install-completed", success=True, at=t1 + timedelta(seconds=seconds))
    outsider = Device.objects.filter(group__name="beta").first()
    report(outsider, "install-completed", success=True, at=t1)  # not staged: no phase of its own

    times = status.wave_update_times(wave=wave)
    assert [times[str(first.pk)][k] for k in ("count", "min", "p50", "p95", "max")] == [20, 60.0, 600.0, 1140.0, 1200.0]
    assert [times[str(second.pk)][k] for k in ("count", "min", "p50", "p95", "max")] == [3, 5.0, 10.0, 30.0, 30.0]
    assert times[str(first.pk)]["label"] == "#1 fleet --limit 20" and times[str(second.pk)]["label"] == "#2 canary --limit 3"
    assert set(times) == {str(first.pk), str(second.pk)}


def test_a_device_joining_a_rolled_out_group_later_is_not_timed_from_that_rollout(factory, bob, fleet100, wave):
    Device.objects.filter(factory=factory).update(created_at=timezone.now() - timedelta(days=1))
    rollout = wave_rollout(wave=wave, actor=bob, group="canary").rollout
    seed(factory, groups={"canary": 1})
    for device in Device.objects.filter(group__name="canary"):
        report(device, "install-completed", success=True)
    assert status.wave_update_times(wave=wave)[str(rollout.pk)]["count"] == 5


def test_devices_updating_after_complete_form_their_own_phase(factory, bob, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    wave_complete(wave=wave, actor=bob)
    wave.refresh_from_db()
    for seconds, device in zip((40, 20), Device.objects.filter(group__name="beta").order_by("name")):
        report(device, "install-completed", success=True, at=wave.finished_at + timedelta(seconds=seconds))
    times = status.wave_update_times(wave=wave)
    assert times["0"]["label"] == "after complete" and times["0"]["count"] == 2 and times["0"]["p50"] == 20.0


# --- samples: once per interval ------------------------------------------------------------------


def test_a_sample_is_taken_once_per_interval(factory, bob, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    bucket = status.status_bucket()
    sample, created = status.wave_status_sample_take(wave=wave, bucket=bucket)
    assert created and sample.totals["scheduled"] == 5 and sample.groups["canary"]["states"]["scheduled"] == 5

    check_in(Device.objects.filter(group__name="canary").first(), version=42)
    again, created = status.wave_status_sample_take(wave=wave, bucket=bucket)
    assert not created and again.pk == sample.pk
    again.refresh_from_db()
    assert again.totals == sample.totals  # the same interval is never counted twice
    assert WaveStatusSample.objects.filter(wave=wave).count() == 1

    following, created = status.wave_status_sample_take(wave=wave, bucket=bucket + 1)
    assert created and following.totals["updated"] == 1 and following.totals["scheduled"] == 4


def test_the_aggregation_task_is_idempotent(factory, bob, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="beta")
    bucket = status.status_bucket()
    assert tasks.wave_status_aggregate.apply(args=(wave.id, bucket)).get() == "created"
    before = WaveStatusSample.objects.get(wave=wave, bucket=bucket).totals
    report(Device.objects.filter(group__name="beta").first(), "download-started")
    assert tasks.wave_status_aggregate.apply(args=(wave.id, bucket)).get() == "exists"
    assert WaveStatusSample.objects.filter(wave=wave).count() == 1
    assert WaveStatusSample.objects.get(wave=wave, bucket=bucket).totals == before == {**before, "scheduled": 20}


def test_the_task_skips_an_interval_long_gone_and_a_deleted_wave(factory, bob, fleet100, wave):
    old_bucket = status.status_bucket(timezone.now() - timedelta(hours=1))
    assert tasks.wave_status_aggregate.apply(args=(wave.id, old_bucket)).get() == "stale"
    assert tasks.wave_status_aggregate.apply(args=(10**9, status.status_bucket())).get() == "gone"
    assert not WaveStatusSample.objects.exists()


def test_the_schedule_sends_one_aggregation_per_followed_wave(factory, bob, builds, offline_key, django_capture_on_commit_callbacks):
    seed(factory, ungrouped=3)
    done = make_wave(factory, bob, offline_key, name="done", version=41)
    wave_complete(wave=done, actor=bob)
    long_done = make_wave(factory, bob, offline_key, name="long-done", version=42, tag="other", source_tag=TAG)
    wave_cancel(wave=long_done, actor=bob)
    Wave.objects.filter(pk=long_done.pk).update(finished_at=timezone.now() - timedelta(days=2))
    active = make_wave(factory, bob, offline_key, name="active", version=43)
    wave_init(factory=factory, actor=bob, name="unsigned", version=43, tag="third", source_tag=TAG)

    with mock.patch.object(tasks.wave_status_aggregate, "apply_async") as send, mock.patch.object(tasks.factory_status_refresh, "apply_async") as refresh:
        with django_capture_on_commit_callbacks(execute=True):
            assert tasks.wave_status_schedule.apply().get() == 2
    sent = sorted(call.args[0] for call in send.call_args_list)
    bucket = status.status_bucket()
    assert sent in ([(done.id, bucket), (active.id, bucket)], [(done.id, bucket - 1), (active.id, bucket - 1)])
    assert all(call.kwargs["expires"] >= 60 for call in send.call_args_list)
    assert [call.args[0] for call in refresh.call_args_list] == [(factory.id,)]


def test_the_factory_status_is_kept_warm_between_intervals(factory, bob, fleet100, wave):
    first = status.factory_status_cached(factory=factory)
    production = next(r for r in first["rows"] if r["production"])
    assert production["versions"] == {41: 100}
    check_in(Device.objects.filter(group__name="canary").first(), version=42)
    assert status.factory_status_cached(factory=factory) == first  # until the next interval
    assert tasks.factory_status_refresh.apply(args=(factory.id,)).get() == "refreshed"
    refreshed = status.factory_status_cached(factory=factory)
    assert next(r for r in refreshed["rows"] if r["production"])["versions"] == {42: 1, 41: 99}
    # another offline threshold is computed on demand
    assert status.factory_status_cached(factory=factory, offline_threshold_hours=1)["taken_at"] > refreshed["taken_at"]
    assert tasks.factory_status_refresh.apply(args=(10**9,)).get() == "gone"


def test_the_beat_schedule_runs_the_aggregation_every_interval(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["wave-status"]
    assert entry["task"] == tasks.wave_status_schedule.name
    assert entry["schedule"] == settings.BREAKWATER_STATUS_INTERVAL_SECONDS
    assert tasks.wave_status_aggregate.acks_late and tasks.wave_status_aggregate.reject_on_worker_lost
    assert not getattr(tasks.wave_status_schedule, "acks_late", False)


# --- reads for the page ---------------------------------------------------------------------------


def test_the_live_status_reads_the_latest_sample_and_thins_a_long_series(factory, bob, fleet100, wave):
    assert status.wave_live_status(wave=wave)["sampled"] is False  # before the first sample: computed now
    start = status.status_bucket()
    for i in range(1000):
        WaveStatusSample.objects.create(wave=wave, bucket=start + i, taken_at=timezone.now() + timedelta(seconds=15 * i), totals={"total": i}, groups={})
    live = status.wave_live_status(wave=wave)
    assert live["sampled"] is True and live["totals"] == {"total": 999}
    series = status.wave_status_series(wave=wave, max_points=100)
    assert 90 <= len(series) <= 101
    assert series[0]["totals"] == {"total": 0} and series[-1]["totals"] == {"total": 999}


# --- a real worker, killed mid-task ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _embedded_env(var, broker=None):
    """The embedded install in `var`: a SQLite file and the filesystem broker (or `broker`)."""
    drop = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_TASK_ALWAYS_EAGER", "SQLITE_TEST_PATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if broker:
        # Results are not kept (ignore_result); a queue of its own keeps the run apart from others.
        (var / "results").mkdir(exist_ok=True)
        env.update(CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND="file://" + str(var / "results"), STATUS_TEST_QUEUE=f"status-test-{os.getpid()}")
    env.update(
        BREAKWATER_VAR_DIR=str(var),
        SQLITE_PATH=str(var / "db.sqlite3"),
        DJANGO_SETTINGS_MODULE="factory.project.settings",
        # a long interval, so no message of this test is old enough to be skipped as stale
        BREAKWATER_STATUS_INTERVAL_SECONDS="60",
        PYTHONPATH=str(ROOT),
    )
    return env


def _step(env, *args):
    done = subprocess.run([sys.executable, "-m", "tests.waves.status_worker", *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


class Worker:
    """A `celery worker` process (and its pool) in its own process group."""

    def __init__(self, env, log, pool):
        self.log = log
        queue = ["-Q", env["STATUS_TEST_QUEUE"]] if env.get("STATUS_TEST_QUEUE") else []
        # The worker writes to its own copy of the log's descriptor; this process keeps none open.
        with log.open("w") as output:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "factory.project", "worker", "-l", "info", "--pool", pool, "--concurrency", "1",
                 "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"status-{pool}@%h", *queue],
                cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def text(self):
        return self.log.read_text(errors="replace")

    def wait_for(self, needle, count=1, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.text().count(needle) >= count:
                return
            assert self.proc.poll() is None or needle in self.text(), f"worker exited:\n{self.text()[-4000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no {needle!r} in the worker log:\n{self.text()[-4000:]}")

    def pool_children(self):
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def _wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def _states(totals):
    return {state: totals[state] for state in STATES}


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the pool's child process through /proc (Linux)")
def test_a_worker_killed_mid_aggregation_loses_nothing_and_counts_nothing_twice(tmp_path):
    env = _embedded_env(tmp_path)
    wave = _migrated(env)
    bucket = int(time.time() // 60)
    # Holding SQLite's write lock stops the task at its INSERT: it has read and counted
    # everything and has not stored the sample yet. That is "mid-task".
    lock = sqlite3.connect(tmp_path / "db.sqlite3", timeout=30, isolation_level=None)

    # 1. The pool process running the task is killed.
    first = _kill_the_pool_process_mid_task(env, tmp_path, lock, wave, bucket)

    # 2. The whole worker is killed -9 mid-task: no partial sample is left behind. The filesystem
    #    broker had already handed the message over, so after a restart the next run (the next
    #    interval, or a redelivered copy with a broker server) stores the sample, once.
    _kill_the_worker_mid_task_and_restart(env, tmp_path, lock, wave, bucket, first)
    lock.close()


def _migrated(env):
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-4000:]
    return _step(env, "setup")["wave"]


def _samples(lock, wave):
    return lock.execute("SELECT bucket FROM waves_wavestatussample WHERE wave_id = ?", (wave,)).fetchall()


def _kill_the_pool_process_mid_task(env, tmp_path, lock, wave, bucket):
    """The pool process running the task is killed: the task acknowledges late and asks to be
    redelivered when its worker is lost, so the interval is aggregated again, and stored once."""

    def samples_now():
        return _samples(lock, wave)

    lock.execute("BEGIN IMMEDIATE")
    worker = Worker(env, tmp_path / "prefork.log", "prefork")
    try:
        worker.wait_for("ready.")
        _step(env, "send", wave, bucket)
        worker.wait_for("wave_status_aggregate[", 1)
        time.sleep(2)
        assert samples_now() == []
        [child] = worker.pool_children()
        os.kill(child, signal.SIGKILL)
        worker.wait_for("SIGKILL")
        lock.execute("ROLLBACK")
        _wait_for(lambda: samples_now() == [(bucket,)])
        worker.wait_for("succeeded", 1)
        time.sleep(3)  # time enough for a duplicate to show up, if there were one
        result = _step(env, "check", wave)
        assert list(result["samples"]) == [str(bucket)]
        assert _states(result["samples"][str(bucket)]) == result["direct"]
        assert result["direct"]["updated"] == 1 and result["direct"]["failed"] == 1 and result["direct"]["downloading"] == 1
        return result["samples"][str(bucket)]
    finally:
        worker.stop()


def _kill_the_worker_mid_task_and_restart(env, tmp_path, lock, wave, bucket, first):
    def samples_now():
        return _samples(lock, wave)

    lock.execute("BEGIN IMMEDIATE")
    worker = Worker(env, tmp_path / "solo.log", "solo")
    try:
        worker.wait_for("ready.")
        _step(env, "send", wave, bucket + 1)
        worker.wait_for("wave_status_aggregate[", 1)
        time.sleep(2)
        worker.kill()
    finally:
        worker.stop()
    lock.execute("ROLLBACK")
    assert sorted(samples_now()) == [(bucket,)]

    worker = Worker(env, tmp_path / "restart.log", "solo")
    try:
        worker.wait_for("ready.")
        _step(env, "send", wave, bucket + 1, bucket + 1, bucket)  # the redelivered interval, a duplicate, an old one
        worker.wait_for("succeeded", 3)
        result = _step(env, "check", wave)
        assert sorted(result["samples"]) == sorted([str(bucket), str(bucket + 1)])
        assert result["samples"][str(bucket)] == first  # the interval already stored is left as it was
        assert _states(result["samples"][str(bucket + 1)]) == result["direct"]
        log = worker.text()
        assert log.count("'created'") == 1 and log.count("'exists'") == 2
    finally:
        worker.stop()


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs a Redis server (REDIS_URL); CI runs it")
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the pool's child process through /proc (Linux)")
def test_with_redis_a_killed_pool_process_is_redelivered_and_counted_once(tmp_path):
    env = _embedded_env(tmp_path, broker=os.environ["REDIS_URL"])
    wave = _migrated(env)
    lock = sqlite3.connect(tmp_path / "db.sqlite3", timeout=30, isolation_level=None)
    try:
        _kill_the_pool_process_mid_task(env, tmp_path, lock, wave, int(time.time() // 60))
    finally:
        lock.close()
        redis.Redis.from_url(os.environ["REDIS_URL"]).delete(env["STATUS_TEST_QUEUE"])
