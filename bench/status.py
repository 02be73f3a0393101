"""Live wave status on the bench fleet (bench/fleet.py: 1,000,000 devices, or
BREAKWATER_BENCH_DEVICES) in 100 groups on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakwater_bench .venv/bin/python bench/status.py

Stages the bench wave like a wave in full swing (the big group, a tenth of the fleet, as a full-group
rollout, 10,000 devices fleet-wide, devices downloading, installing, updated and failed, with
their events), then prints the time of one aggregation cycle (the sample the Celery task stores
every interval) and its parts, and the server time of the live status pages and exports
through Django's full request stack. Everything runs in one transaction that is rolled back,
so the shared bench database is left as it was (it takes the staging and event tables for
itself while it runs). Goals: aggregation <= 1 s, page <= 300 ms.
"""
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleet import bench_fleet, bench_wave  # noqa: E402  (sets up Django)

from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils import timezone  # noqa: E402

from factory.models import Role  # noqa: E402
from factory.services import user_create  # noqa: E402
from waves import status  # noqa: E402
from waves.states import STATES  # noqa: E402
from waves.models import Rollout, WaveGroup, WaveStatusSample  # noqa: E402
from waves.services import wave_rollout  # noqa: E402
from waves.status_counts import counts_compact  # noqa: E402
from waves.status_table import wave_status  # noqa: E402

REPEAT = 5
REASONS = ("no space left on device", "checksum mismatch", "download timed out", "ostree deploy failed", "reboot loop")


class Rollback(Exception):
    pass


def _backend_cpu_seconds(pid):
    """CPU time the PostgreSQL backend `pid` has used (it runs on this machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(fn, repeat=REPEAT, warmup=1):
    """(median ms, fastest ms, CPU ms) of `fn`.

    Wall times depend on what else the machine is doing; the fastest run is the least disturbed.
    The CPU time is measured apart, with parallel query off: the work this process and its
    database backend do, which is the wall time on an idle machine with one core to spare.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    cpu = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
        cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        for _ in range(repeat):
            before = time.process_time() + _backend_cpu_seconds(backend)
            fn()
            cpu.append(time.process_time() + _backend_cpu_seconds(backend) - before)
        cursor.execute("SET LOCAL max_parallel_workers_per_gather TO DEFAULT")
    return statistics.median(times) * 1000, min(times) * 1000, statistics.median(cpu) * 1000


def fleet_scan(factory):
    """The yardstick: counting the tag's devices, the least any pass over the fleet costs."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM devices_device WHERE factory_id = %s AND is_production AND tag = 'production'", [factory.id])
        cursor.fetchone()


def stage(wave):
    """A wave in full swing; returns a description of what was staged."""
    with connection.cursor() as cursor:
        # Whatever other benchmarks left staged or reported goes for the length of this
        # transaction: TRUNCATE is rolled back with it, and leaves no dead rows to wade through.
        cursor.execute("TRUNCATE waves_wavedevice, devices_deviceevent, waves_waveactivity, waves_waveactivitycount")
    WaveGroup.objects.filter(wave=wave).delete()
    Rollout.objects.filter(wave=wave).delete()
    wave_rollout(wave=wave, actor=None, group="big")
    wave_rollout(wave=wave, actor=None, limit="10000")
    since = wave.created_at
    with connection.cursor() as cursor:
        # Of the staged devices (the big group and the fleet-wide sample), by id modulo 20:
        # 0-7 updated, 8-9 installing, 10-12 downloading, 13 failed, 14-19 not started yet.
        cursor.execute(
            """
            CREATE TEMP TABLE bench_staged ON COMMIT DROP AS
            SELECT d.id, d.hardware_id, d.id %% 20 AS k FROM devices_device d
             WHERE d.factory_id = %(factory)s AND (d.group_id IN (SELECT group_id FROM waves_wavegroup WHERE wave_id = %(wave)s)
                   OR d.id IN (SELECT device_id FROM waves_wavedevice WHERE wave_id = %(wave)s))
            """,
            {"factory": wave.factory_id, "wave": wave.id},
        )
        steps = [
            ("download-started", "NULL", "k <= 13", 60),
            ("download-completed", "NULL", "k <= 12", 120),
            ("install-started", "NULL", "k <= 9", 180),
            ("install-applied", "NULL", "k <= 9", 240),
            ("install-completed", "TRUE", "k <= 7", 300),
            ("install-completed", "FALSE", "k = 13", 300),
        ]
        for event_type, success, where, seconds in steps:
            cursor.execute(
                f"""
                INSERT INTO devices_deviceevent (factory_id, device_id, event_type, target_name, target_version, success, detail, reported_at, received_at, event_id)
                SELECT %(factory)s, id, %(type)s, hardware_id || '-lmp-42', 42, {success},
                       CASE WHEN {success} IS FALSE THEN (ARRAY{list(REASONS)!r})[1 + id %% 5] ELSE '' END,
                       %(since)s + make_interval(secs => %(seconds)s + id %% 600), now(), ''
                  FROM bench_staged WHERE {where}
                """,
                {"factory": wave.factory_id, "type": event_type, "since": since, "seconds": seconds},
            )
        cursor.execute(
            "UPDATE devices_device d SET target_version = 42, target_name = d.hardware_id || '-lmp-42' FROM bench_staged s WHERE d.id = s.id AND s.k <= 7"
        )
        cursor.execute("SELECT COUNT(*) FROM bench_staged")
        staged = cursor.fetchone()[0]
        cursor.execute("SELECT COUNT(*) FROM devices_deviceevent WHERE factory_id = %s AND target_version = 42", [wave.factory_id])
        events = cursor.fetchone()[0]
        for table in ("devices_device", "devices_deviceevent", "waves_wavedevice", "waves_wavegroup"):
            cursor.execute(f"ANALYZE {table}")
    return staged, events


def main():
    factory = bench_fleet()
    wave = bench_wave(factory)
    with connection.cursor() as cursor:
        # As autovacuum would have on a live system: earlier runs rolled back leave dead rows.
        for table in ("devices_device", "devices_deviceevent", "waves_wavedevice", "waves_wavestatussample"):
            cursor.execute(f"VACUUM (ANALYZE) {table}")
    print(f"load average (1, 5, 15 min) at the start: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    rows = []
    try:
        with transaction.atomic():
            started = time.perf_counter()
            staged, events = stage(wave)
            print(f"staged {staged:,} devices with {events:,} events in {time.perf_counter() - started:.1f}s (rolled back at the end)")
            params = status._params(wave, now=timezone.now(), cutoff=status.offline_cutoff(), stuck_cutoff=timezone.now())

            bucket = [status.status_bucket() + 1000]

            def cycle():
                bucket[0] += 1
                status.wave_status_sample_take(wave=wave, bucket=bucket[0])

            rows.append(("yardstick: COUNT(*) of the tag's devices", *measure(lambda: fleet_scan(factory)), "the floor of any pass"))
            rows.append(("aggregation cycle (one sample, 100 groups)", *measure(cycle), "goal <= 100 ms"))
            counts_compact(now=timezone.now())
            rows.append(("  states per group, from the counts", *measure(lambda: status._states(wave, params, counted=True)), "goal <= 100 ms"))
            rows.append(("  states per group, recounted (1 statement)", *measure(lambda: status._states(wave, params, counted=False), repeat=3), "the pass it replaces"))
            rows.append(("wave_status (the status table, API, CLI)", *measure(lambda: wave_status(wave=wave)), "goal <= 100 ms"))
            differences = status.wave_counts_check(wave=wave, repair=False)
            print("counts against a full recount:", "equal" if not differences else f"DIFFERENT {differences!r}")
            rows.append(("  failures by reason/hardware/version", *measure(lambda: status._failures(params)), ""))
            rows.append(("  time to update per phase", *measure(lambda: status.wave_update_times(wave=wave, params=params)), ""))
            rows.append(("  sample already taken (a re-run)", *measure(lambda: status.wave_status_sample_take(wave=wave, bucket=bucket[0])), ""))
            sample = WaveStatusSample.objects.filter(wave=wave).order_by("-bucket").first()
            totals = sample.totals

            # A month of samples every 15 s for the time series the page draws from.
            first = status.status_bucket() - 30 * 24 * 240
            WaveStatusSample.objects.bulk_create(
                [WaveStatusSample(wave=wave, bucket=first + i, taken_at=timezone.now(), totals=totals, groups={}) for i in range(0, 30 * 24 * 240, 1)],
                batch_size=5000,
            )
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE waves_wavestatussample")

            user = user_create(username="bench-support", factory=factory, role=Role.SUPPORT)
            client = Client()
            client.force_login(user)
            hx = {"HTTP_HX_REQUEST": "true"}

            def get(url, **headers):
                response = client.get(url, **headers)
                assert response.status_code == 200, (url, response.status_code)
                return response

            rows.append(("wave live panel (htmx poll, 172,800 samples)", *measure(lambda: get(reverse("wave-live-status", args=[wave.name]), **hx, HTTP_HX_TARGET="wave-live")), "goal <= 300 ms"))
            rows.append(("factory status refresh (beat task, per interval)", *measure(lambda: status.factory_status_refresh(factory=factory), repeat=3), ""))
            rows.append(("factory live panel (htmx poll)", *measure(lambda: get(reverse("factory-live-status"), **hx, HTTP_HX_TARGET="factory-live")), "goal <= 300 ms"))
            rows.append(("wave status CSV (computed now)", *measure(lambda: get(reverse("wave-status-csv", args=[wave.name])), repeat=3), "an export"))
            rows.append(("wave status history CSV (172,800 rows)", *measure(lambda: get(reverse("wave-status-history-csv", args=[wave.name])), repeat=3), "an export"))
            try:
                rows.append(("wave detail page (full, for reference)", *measure(lambda: get(reverse("wave-detail", args=[wave.name])), repeat=3), "dashboard page"))
            except AssertionError as error:
                print(f"wave detail page not measured: {error}")
            print("\nlatest sample totals:", {k: totals[k] for k in ("total", "online", "stuck", *STATES)})
            raise Rollback
    except Rollback:
        pass

    print(f"\n{'measurement':<52} {'median':>10} {'fastest':>10} {'CPU':>10}  notes")
    for name, median, fastest, cpu, note in rows:
        print(f"{name:<52} {median:>7.0f} ms {fastest:>7.0f} ms {cpu:>7.0f} ms  {note}")
    print("(median and fastest: wall time; CPU: this process and its database backend, parallel query off)")
    print(f"\nload average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
