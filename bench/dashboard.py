"""Server time of every dashboard page with a 1,000,000-device factory on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakwater_bench .venv/bin/python bench/dashboard.py

Loads the bench fleet (bench/fleet.py: 1,000,000 production devices in 100 groups, one of
100,000), an active wave with 10,000 devices staged one by one plus one full-group rollout,
200,000 audit entries, device events and saved lists. Then requests each page in-process with
Django's test client as a release manager and prints the median and worst of REPEAT requests
(after one warm-up), the number of SQL queries and the response size. Goal: every page < 300 ms.
"""
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

# Run as a script, Python puts bench/ first on the path, where bench/tuf.py would hide the
# python-tuf package: the project root takes its place.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.fleet import BENCH_TAG, bench_fleet, bench_wave  # noqa: E402  (sets up Django)

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils import timezone  # noqa: E402

from devices.models import Device, DeviceEvent, DeviceGroup  # noqa: E402
from factory.models import AuditEntry, Role  # noqa: E402
from factory.services import user_create  # noqa: E402
from waves import devicelists  # noqa: E402
from waves.models import Rollout, SavedDeviceList, WaveDevice, WaveGroup  # noqa: E402
from waves.selectors import factory_status  # noqa: E402
from waves.status_table import wave_status  # noqa: E402
from waves.services import wave_rollout  # noqa: E402

REPEAT = 7
GOAL_MS = 300
AUDIT_ROWS = 200_000
EVENT_DEVICES = 20_000


def bench_user(factory):
    user = get_user_model().objects.filter(username="bench-rm").first()
    if user is None:
        user = user_create(username="bench-rm", factory=factory, role=Role.RELEASE_MANAGER, password="bench-rm-pass")
    return user


def bench_state(factory, wave, user):
    """Rollouts, events, audit entries and saved lists, made once and reused by later runs."""
    if not Rollout.objects.filter(wave=wave).exists():
        started = time.perf_counter()
        for _ in range(10):
            wave_rollout(wave=wave, actor=user, limit="1000")
        wave_rollout(wave=wave, actor=user, group="g050")
        print(f"staged {WaveDevice.objects.filter(wave=wave).count():,} devices and group g050 in {time.perf_counter() - started:.1f}s")
    if not DeviceEvent.objects.filter(factory=factory).exists():
        started = time.perf_counter()
        ids = list(WaveDevice.objects.filter(wave=wave).values_list("device_id", flat=True)[:EVENT_DEVICES])
        ids += list(Device.objects.filter(factory=factory).order_by("id").values_list("id", flat=True)[: EVENT_DEVICES - len(ids)])
        now = timezone.now()
        steps = ["download-started", "download-completed", "install-started", "install-applied", "install-completed"]
        with connection.cursor() as cursor:
            columns = "factory_id, device_id, event_type, target_name, target_version, success, detail, reported_at, received_at, event_id"
            with cursor.cursor.copy(f"COPY devices_deviceevent ({columns}) FROM STDIN") as copy:
                for n, device_id in enumerate(ids):
                    failed = n % 50 == 0
                    for i, step in enumerate(steps):
                        success = None if step != "install-completed" else not failed
                        at = now - timedelta(minutes=60 - i * 5)
                        copy.write_row((factory.id, device_id, step, "intel-corei7-64-lmp-42", 42, success, "no space left" if failed and success is False else "", at, at, ""))
            cursor.execute("ANALYZE devices_deviceevent")
        print(f"wrote {len(ids) * len(steps):,} device events in {time.perf_counter() - started:.1f}s")
    if AuditEntry.objects.filter(factory=factory).count() < AUDIT_ROWS:
        started = time.perf_counter()
        now = timezone.now()
        actions = ["group.create", "wave.rollout", "devicelist.update", "token.create", "group.assign"]
        with connection.cursor() as cursor:
            columns = "factory_id, actor_id, actor_name, action, target, details, created_at"
            with cursor.cursor.copy(f"COPY factory_auditentry ({columns}) FROM STDIN") as copy:
                for n in range(AUDIT_ROWS):
                    copy.write_row((factory.id, user.id, user.username, actions[n % 5], f"t{n}", '{"devices": 1}', now - timedelta(seconds=AUDIT_ROWS - n)))
            cursor.execute("ANALYZE factory_auditentry")
        print(f"wrote {AUDIT_ROWS:,} audit entries in {time.perf_counter() - started:.1f}s")
        # The steady state of a live database: autovacuum has set the visibility maps, so counts
        # can be answered from indexes alone.
        with connection.cursor() as cursor:
            for table in ("devices_device", "devices_deviceevent", "factory_auditentry", "waves_wavedevice"):
                cursor.execute(f"VACUUM ANALYZE {table}")
    if not SavedDeviceList.objects.filter(factory=factory, name="phase1").exists():
        uuids = [str(u) for u in Device.objects.filter(factory=factory, group__name="big").values_list("uuid", flat=True)[:10_000]]
        devicelists.device_list_create(factory=factory, actor=user, name="phase1", uuids=uuids)


def measure(client, method, url, data=None, headers=None, before=None):
    """Median and worst milliseconds of REPEAT requests (after a warm-up), queries, bytes.
    `before` runs ahead of each timed request (untimed), e.g. to empty the cache."""
    call = client.post if method == "POST" else client.get
    response = call(url, data or {}, **(headers or {}))
    assert response.status_code in (200, 302), f"{method} {url}: {response.status_code} {response.content[:300]!r}"
    times = []
    for _ in range(REPEAT):
        if before:
            before()
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = call(url, data or {}, **(headers or {}))
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), len(queries), len(response.content), response


def main():
    factory = bench_fleet()
    wave = bench_wave(factory)
    user = bench_user(factory)
    bench_state(factory, wave, user)
    client = Client()
    client.force_login(user)

    device = Device.objects.filter(factory=factory, events__isnull=False).first()
    big = DeviceGroup.objects.get(factory=factory, name="big")
    middle = Device.objects.filter(factory=factory).order_by("name", "id").values_list("id", flat=True)[500_000]
    saved = SavedDeviceList.objects.get(factory=factory, name="phase1")
    hx = {"HTTP_HX_REQUEST": "true"}
    total = Device.objects.filter(factory=factory).count()
    print(
        f"\nfactory {factory.name}: {total:,} devices, {DeviceGroup.objects.filter(factory=factory).count()} groups, "
        f"{WaveDevice.objects.filter(wave=wave).count():,} staged + {WaveGroup.objects.filter(wave=wave).count()} full group(s), "
        f"{AuditEntry.objects.filter(factory=factory).count():,} audit entries\n"
    )

    preview = client.post(reverse("rollout-preview", args=[wave.name]), {"group": "big", "limit": "1000"}, **hx, HTTP_HX_TARGET="rollout-panel")
    token = preview["HX-Push-Url"].rstrip("/").rsplit("/", 1)[-1]
    pages = [
        ("waves list", "GET", reverse("wave-list"), None, None),
        ("wave page (summary, status, history)", "GET", reverse("wave-detail", args=[wave.name]), None, None),
        ("wave status poll (htmx fragment)", "GET", reverse("wave-detail", args=[wave.name]), None, {**hx, "HTTP_HX_TARGET": "wave-status"}),
        ("rollout preview: group big --limit 1000", "POST", reverse("rollout-preview", args=[wave.name]), {"group": "big", "limit": "1000"}, {**hx, "HTTP_HX_TARGET": "rollout-panel"}),
        ("rollout preview: fleet --limit 10000", "POST", reverse("rollout-preview", args=[wave.name]), {"limit": "10000"}, {**hx, "HTTP_HX_TARGET": "rollout-panel"}),
        ("rollout preview: saved list (10,000 UUIDs)", "POST", reverse("rollout-preview", args=[wave.name]), {"saved_list": saved.id}, {**hx, "HTTP_HX_TARGET": "rollout-panel"}),
        ("rollout preview page (1,000 devices)", "GET", reverse("rollout-preview-show", args=[wave.name, token]), None, None),
        ("create wave form", "GET", reverse("wave-create"), None, None),
        ("devices list", "GET", reverse("device-list"), None, None),
        ("devices list, page in the middle", "GET", reverse("device-list") + f"?after={middle}", None, {**hx, "HTTP_HX_TARGET": "device-results"}),
        ("devices: group big", "GET", reverse("device-list") + f"?group={big.id}", None, {**hx, "HTTP_HX_TARGET": "device-results"}),
        ("devices: offline", "GET", reverse("device-list") + "?online=offline", None, {**hx, "HTTP_HX_TARGET": "device-results"}),
        ("devices: target version 41, tag", "GET", reverse("device-list") + f"?version=41&tag={BENCH_TAG}", None, {**hx, "HTTP_HX_TARGET": "device-results"}),
        ("devices: staged in an active wave", "GET", reverse("device-list") + "?wave=yes", None, {**hx, "HTTP_HX_TARGET": "device-results"}),
        ("devices: not staged in an active wave", "GET", reverse("device-list") + "?wave=no", None, {**hx, "HTTP_HX_TARGET": "device-results"}),
        ("devices: name search dev-09999", "GET", reverse("device-list") + "?q=dev-09999", None, {**hx, "HTTP_HX_TARGET": "device-results"}),
        ("devices: UUID search", "GET", reverse("device-list") + f"?q={device.uuid}", None, {**hx, "HTTP_HX_TARGET": "device-results"}),
        ("devices: no match (test devices)", "GET", reverse("device-list") + "?kind=test", None, {**hx, "HTTP_HX_TARGET": "device-results"}),
        ("device page (certificate, timeline)", "GET", reverse("device-detail", args=[device.uuid]), None, None),
        ("groups (100 groups with counts)", "GET", reverse("group-list"), None, None),
        ("factory status", "GET", reverse("factory-status"), None, None),
        ("audit log", "GET", reverse("audit-log"), None, None),
        ("audit log: action filter, older page", "GET", reverse("audit-log") + "?action=wave.rollout&after=" + str(AuditEntry.objects.filter(factory=factory).order_by("-created_at", "-id").values_list("id", flat=True)[100_000]), None, {**hx, "HTTP_HX_TARGET": "audit-results"}),
        ("saved device lists", "GET", reverse("devicelist-list"), None, None),
        ("saved list page (10,000 UUIDs)", "GET", reverse("devicelist-detail", args=[saved.id]), None, None),
        # Status reads are shared through the cache for one status interval; the first view of
        # each interval computes them:
        ("wave page, status computed (once an interval)", "GET", reverse("wave-detail", args=[wave.name]), None, None, cache.clear),
        ("status poll, status computed (once an interval)", "GET", reverse("wave-detail", args=[wave.name]), None, {**hx, "HTTP_HX_TARGET": "wave-status"}, cache.clear),
        ("factory status, computed (once an interval)", "GET", reverse("factory-status"), None, None, cache.clear),
    ]
    print(f"{'page':<50} {'median':>9} {'worst':>9} {'queries':>8} {'size':>9}")
    slow = []
    for name, method, url, data, headers, *before in pages:
        median, worst, queries, size, _ = measure(client, method, url, data, headers, *before)
        flag = "" if median < GOAL_MS else "  <- over the goal"
        if flag:
            slow.append(name)
        print(f"{name:<50} {median:>6.0f} ms {worst:>6.0f} ms {queries:>8} {size / 1024:>6.0f} kB{flag}")
    print(f"\n{len(pages) - len(slow)} of {len(pages)} pages under {GOAL_MS} ms (median of {REPEAT}).")
    if slow:
        print("over the goal: " + ", ".join(slow))

    # What the slow rows spend their time in: the wave engine's reads and dry runs, timed alone.
    listed = devicelists.device_list_uuids(saved)
    engine = [
        ("selector wave_status", lambda: wave_status(wave=wave)),
        ("selector factory_status", lambda: factory_status(factory=factory)),
        ("dry run --limit 10000 (fleet)", lambda: wave_rollout(wave=wave, actor=user, limit="10000", dry_run=True)),
        ("dry run --uuids (10,000 UUIDs)", lambda: wave_rollout(wave=wave, actor=user, uuids=listed, dry_run=True)),
    ]
    print(f"\n{'wave engine call':<50} {'median':>9} {'worst':>9}")
    for name, call in engine:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        print(f"{name:<50} {statistics.median(times):>6.0f} ms {max(times):>6.0f} ms")


if __name__ == "__main__":
    main()
