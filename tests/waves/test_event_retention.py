"""Device events expire after the retention, in batches, except the reports waves still read:
an open wave's status, failures and time to update are the same after a purge."""
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from devices.checkins import Checkin, checkins_write, events_write
from devices.models import Device, DeviceEvent
from factory.errors import ApplicationError
from factory.project.celery import app
from tests.factory.test_api import as_user, tokens  # noqa: F401  (fixtures)
from tests.factory.test_views import login
from waves import event_retention_tasks
from waves.event_retention import device_events_purge
from waves.models import Rollout, Wave
from waves.services import wave_complete, wave_rollout
from waves.status import failures_merged, wave_snapshot
from waves.status_table import wave_status

DAY = timedelta(days=1)


def report(device, event_type, *, version, success=None, detail="", days_ago, now):
    """An event the device reported and the gateway received `days_ago` days before `now`."""
    at = now - days_ago * DAY
    event = DeviceEvent.objects.create(
        factory_id=device.factory_id, device=device, event_type=event_type, target_name=f"{device.hardware_id}-lmp-{version}",
        target_version=version, success=success, detail=detail, reported_at=at,
    )
    DeviceEvent.objects.filter(pk=event.pk).update(received_at=at)
    return event


def remaining(device=None):
    events = DeviceEvent.objects.filter(device=device) if device else DeviceEvent.objects.all()
    return sorted(events.values_list("event_type", "target_version"))


def test_expired_events_go_in_batches_and_recent_ones_stay(fleet100):
    now = timezone.now()
    device = fleet100.filter(is_production=True).first()
    for days_ago in (200, 150, 120, 100, 91):
        report(device, "download-started", version=40, days_ago=days_ago, now=now)
    recent = [report(device, "install-completed", version=41, success=True, days_ago=days_ago, now=now) for days_ago in (89, 1)]

    with CaptureQueriesContext(connection) as queries:
        purge = device_events_purge(now=now, batch=2)
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("DELETE")]
    assert purge.deleted == 5 and purge.done and purge.kept == {}
    # Five expired events, two ids a statement: three short deletes, then the recent ones end it.
    assert purge.batches == len(deletes) == 3
    assert set(DeviceEvent.objects.values_list("pk", flat=True)) == {e.pk for e in recent}


def test_a_second_purge_deletes_nothing_and_a_dry_run_says_what_would_go(fleet100):
    now = timezone.now()
    device = fleet100.filter(is_production=True).first()
    for days_ago in (100, 95, 2):
        report(device, "download-started", version=40, days_ago=days_ago, now=now)
    dry = device_events_purge(now=now, dry_run=True)
    assert dry.deleted == 2 and DeviceEvent.objects.count() == 3
    assert device_events_purge(now=now).deleted == 2
    again = device_events_purge(now=now)
    assert again.deleted == 0 and again.done
    assert remaining() == [("download-started", 40)]


def test_the_retention_is_the_setting_and_zero_keeps_events_for_ever(fleet100, settings):
    now = timezone.now()
    device = fleet100.filter(is_production=True).first()
    report(device, "download-started", version=40, days_ago=40, now=now)
    report(device, "download-started", version=40, days_ago=3000, now=now)
    settings.BREAKWATER_EVENT_RETENTION_DAYS = 0
    assert device_events_purge(now=now).deleted == 0 and DeviceEvent.objects.count() == 2
    settings.BREAKWATER_EVENT_RETENTION_DAYS = 30
    assert device_events_purge(now=now).deleted == 2
    with pytest.raises(ApplicationError, match="positive number of days"):
        device_events_purge(now=now, days=-1)


def status_table(wave):
    """The counts of the wave's status table (`waves status`), without the time it was read."""
    table = wave_status(wave=wave)
    return {"groups": table["groups"], "totals": table["totals"]}


def _open_wave_history(factory, bob, wave, now):
    """A wave opened 120 days before `now`: beta rolled out the next day; 110 days ago one device
    failed (no space), one updated, one started downloading; older events of other builds."""
    Wave.objects.filter(pk=wave.pk).update(created_at=now - 120 * DAY)
    wave.refresh_from_db()
    wave_rollout(wave=wave, actor=bob, group="beta")
    Rollout.objects.filter(wave=wave).update(created_at=now - 119 * DAY)
    failed, updated, downloading, *_ = Device.objects.filter(group__name="beta").order_by("name")
    for event_type in ("download-started", "download-completed", "install-started"):
        report(failed, event_type, version=42, days_ago=111, now=now)
    report(failed, "install-completed", version=42, success=False, detail="no space left on device", days_ago=110, now=now)
    report(updated, "download-started", version=42, days_ago=112, now=now)
    report(updated, "install-completed", version=42, success=True, days_ago=110, now=now)
    Device.objects.filter(pk=updated.pk).update(target_version=42, target_name=f"{updated.hardware_id}-lmp-42")
    report(downloading, "download-started", version=42, days_ago=110, now=now)
    report(downloading, "install-completed", version=41, success=True, days_ago=300, now=now)
    return failed, updated, downloading


def test_an_open_wave_keeps_the_reports_it_reads_and_its_status_does_not_change(factory, bob, fleet100, wave):
    now = timezone.now()
    failed, updated, downloading = _open_wave_history(factory, bob, wave, now)
    before = wave_snapshot(wave=wave, now=now), status_table(wave)
    assert before[0]["totals"]["failed"] == 1 and before[0]["totals"]["downloading"] == 1 and before[0]["update_times"]
    assert failures_merged(before[0]["groups"])["reason"] == {"no space left on device": 1}

    purge = device_events_purge(now=now, batch=3)
    assert purge.deleted == 1  # the build-41 report from 300 days ago
    assert purge.kept == {(factory.pk, 42): 7}
    assert wave_snapshot(wave=wave, now=now) == before[0]
    assert status_table(wave) == before[1]
    assert remaining(downloading) == [("download-started", 42)]


def test_a_finished_wave_keeps_its_reports_for_the_retention_after_it_finished(factory, bob, fleet100, wave):
    now = timezone.now()
    _open_wave_history(factory, bob, wave, now)
    wave_complete(wave=wave, actor=bob)
    finished = Wave.objects.get(pk=wave.pk).finished_at
    assert device_events_purge(now=finished + 89 * DAY).kept == {(factory.pk, 42): 7}
    assert DeviceEvent.objects.filter(target_version=42).count() == 7
    purge = device_events_purge(now=finished + 91 * DAY)
    assert purge.deleted == 7 and purge.kept == {}
    assert DeviceEvent.objects.count() == 0


def test_a_devices_history_page_and_api_show_what_is_left(client, as_user, factory, dave, fleet100):
    now = timezone.now()
    device = fleet100.filter(is_production=True).first()
    report(device, "download-started", version=40, days_ago=100, now=now)
    report(device, "install-completed", version=41, success=False, detail="checksum mismatch", days_ago=2, now=now)
    device_events_purge(now=now)
    page = login(client, dave).get(reverse("device-detail", args=[device.uuid]))
    assert page.status_code == 200
    assert "checksum mismatch" in page.content.decode()
    body = as_user("dave").get(f"devices/{device.uuid}/events").json()
    assert [(e["event_type"], e["target_version"]) for e in body["items"]] == [("install-completed", 41)]


def test_the_beat_purges_hourly_and_a_long_purge_goes_on_in_a_task_of_its_own(fleet100, monkeypatch):
    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "waves.event_retention_tasks.device_events_purge")
    assert entry["schedule"] == 3600.0 and entry["task"] in app.tasks
    now = timezone.now()
    device = fleet100.filter(is_production=True).first()
    events = [report(device, "download-started", version=40, days_ago=100 + n, now=now) for n in range(5)]
    monkeypatch.setattr(event_retention_tasks, "MAX_BATCHES", 1)
    monkeypatch.setattr(event_retention_tasks, "BATCH", 2)
    sent = []
    monkeypatch.setattr(event_retention_tasks.device_events_purge, "delay", lambda **kwargs: sent.append(kwargs))
    assert event_retention_tasks.device_events_purge() == 2
    assert sent == [{"after": events[1].pk}]
    while sent:
        event_retention_tasks.device_events_purge(**sent.pop())
    assert DeviceEvent.objects.count() == 0


def test_purge_events_command_dry_run_names_the_waves_that_keep_events(factory, bob, fleet100, wave):
    now = timezone.now()
    _open_wave_history(factory, bob, wave, now)
    out = StringIO()
    call_command("purge_events", "--dry-run", stdout=out)
    text = out.getvalue()
    assert "would delete 1 device events received before" in text
    assert "would keep 7 older ones that waves still read:" in text and "acme: v2.0-update (7 events)" in text
    assert DeviceEvent.objects.count() == 8
    out = StringIO()
    call_command("purge_events", stdout=out)
    assert out.getvalue().startswith("deleted 1 device events") and DeviceEvent.objects.count() == 7
    out = StringIO()
    call_command("purge_events", "--days", "0", stdout=out)
    assert "kept for ever" in out.getvalue()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_purge_in_progress_blocks_no_check_in_or_event_report(factory, fleet100):
    now = timezone.now()
    device = fleet100.filter(is_production=True).first()
    report(device, "download-started", version=40, days_ago=100, now=now)
    deleting, release, done = threading.Event(), threading.Event(), threading.Event()

    def purge_and_hold():
        # One batch's transaction, held open with its rows locked.
        try:
            with transaction.atomic():
                DeviceEvent.objects.filter(device=device, received_at__lt=now - 90 * DAY).delete()
                deleting.set()
                release.wait(30)
        finally:
            connections.close_all()
            done.set()

    thread = threading.Thread(target=purge_and_hold)
    thread.start()
    try:
        assert deleting.wait(30)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")  # blocked would fail, not hang
        assert checkins_write({device.pk: Checkin(seen=now.timestamp())}) == 1
        row = {"device_id": device.pk, "factory_id": factory.pk, "event_type": "download-started", "target_version": 42, "reported_at": now.isoformat()}
        assert events_write([row]) == 1
    finally:
        release.set()
        done.wait(30)
        thread.join(30)
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert DeviceEvent.objects.filter(device=device).count() == 1
