"""Rollout selection on the bench fleet (bench/fleet.py: 1,000,000 devices, or
BREAKWATER_BENCH_DEVICES) on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakwater_bench .venv/bin/python bench/rollout.py

Prints, for `--limit 10000` fleet-wide with none, a tenth and nine tenths of the fleet already
staged, the service time next to the best single SQL statement for the same selection;
`--uuids` with 10,000 UUIDs; a full-group rollout of the big group (a tenth of the fleet); and
`wave_status`. Figures are named by shares of the fleet, so the sizes line up. Each rollout
runs inside a transaction that is rolled back, so every measurement starts from the same state.
Goals: each rollout <= 1 s, full-group <= 50 ms, status <= 1 s, limit within 1.5x of the SQL.
"""
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

# Run as `python bench/x.py`, this folder comes first on sys.path, and bench/tuf.py would shadow
# the tuf package: put the project root there instead.
sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.fleet import bench_fleet, bench_wave  # noqa: E402  (sets up Django)

from django.db import connection, transaction  # noqa: E402

from devices.models import Device, DeviceGroup  # noqa: E402
from waves.models import Rollout, WaveDevice  # noqa: E402
from waves.selectors import offline_cutoff  # noqa: E402
from waves.status_table import wave_status  # noqa: E402
from waves.services import wave_rollout  # noqa: E402

REPEAT = 3


class Rollback(Exception):
    pass


def _once(fn, rollback):
    started = time.perf_counter()
    try:
        with transaction.atomic():
            fn()
            if rollback:
                raise Rollback
    except Rollback:
        pass
    return time.perf_counter() - started


def measure(fn, repeat=REPEAT, rollback=True):
    """Median seconds of `fn` over `repeat` runs, then its peak traced memory (MiB) in one more
    run: tracing every allocation slows Python down, so it stays out of the timed runs."""
    times = [_once(fn, rollback) for _ in range(repeat)]
    tracemalloc.start()
    _once(fn, rollback)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return statistics.median(times), peak


BASELINE_SQL = """
WITH picked AS (
  SELECT d.id FROM devices_device d
   WHERE d.factory_id = %(factory)s AND d.is_production AND d.tag = %(tag)s
     AND (d.target_version IS NULL OR d.target_version < %(version)s)
     AND NOT EXISTS (SELECT 1 FROM waves_wavedevice wd WHERE wd.wave_id = %(wave)s AND wd.device_id = d.id)
     AND (d.group_id IS NULL OR d.group_id NOT IN (SELECT group_id FROM waves_wavegroup WHERE wave_id = %(wave)s))
   ORDER BY (d.last_seen >= %(cutoff)s) DESC, d.sample_key
   LIMIT %(limit)s
)
INSERT INTO waves_wavedevice (wave_id, device_id, rollout_id) SELECT %(wave)s, id, %(rollout)s FROM picked
"""


def baseline(wave, rollout_id, limit=10_000):
    with connection.cursor() as cursor:
        cursor.execute(
            BASELINE_SQL,
            {"factory": wave.factory_id, "tag": wave.tag, "version": wave.version, "wave": wave.id, "cutoff": offline_cutoff(), "limit": limit, "rollout": rollout_id},
        )


def stage_share(wave, percent):
    """Pre-stage about `percent` % of the fleet in one rollout row (outside any measurement);
    returns how many. The devices are picked by a hash of their id, unrelated to the sample
    keys selection reads, and in one pass without a sort: ORDER BY random() over 10,000,000
    devices spills to disk for many minutes."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM waves_wavedevice WHERE wave_id = %s", [wave.id])
        # A live database never drops millions of staged rows at once; autovacuum would clean
        # up after such a delete, and its dead index entries would be measured otherwise.
        cursor.execute("VACUUM ANALYZE waves_wavedevice")
    Rollout.objects.filter(wave=wave).delete()
    if not percent:
        return 0
    rollout = Rollout.objects.create(wave=wave, limit=f"{percent}%")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO waves_wavedevice (wave_id, device_id, rollout_id) "
            "SELECT %s, id, %s FROM devices_device WHERE factory_id = %s AND (id * 2654435761) %% 1000 < %s",
            [wave.id, rollout.id, wave.factory_id, percent * 10],
        )
        count = cursor.rowcount
        # As autovacuum would after such an insert: the visibility map lets the staged-row
        # probes of a selection read the index alone.
        cursor.execute("VACUUM ANALYZE waves_wavedevice")
    Rollout.objects.filter(pk=rollout.pk).update(device_count=count)
    return count


def main():
    factory = bench_fleet()
    wave = bench_wave(factory)
    user = None  # the operator's shell: no role check cost in the figures
    rows = []
    scratch = Rollout.objects.create(wave=wave, limit="bench")
    total = Device.objects.filter(factory=factory).count()
    for share in (0, 10, 90):
        staged = stage_share(wave, share)
        scratch = Rollout.objects.create(wave=wave, limit="bench")
        t, mem = measure(lambda: wave_rollout(wave=wave, actor=user, limit="10000"))
        b, _ = measure(lambda: baseline(wave, scratch.id))
        rows.append((f"rollout --limit 10000 ({share}% staged)", t, mem, f"{staged:,} staged; SQL baseline {b * 1000:.0f} ms, ratio {t / b:.2f}"))
    stage_share(wave, 0)
    listed = [str(u) for u in Device.objects.filter(factory=factory).order_by("?").values_list("uuid", flat=True)[:10_000]]
    text = "\n".join(listed)
    t, mem = measure(lambda: wave_rollout(wave=wave, actor=user, uuids=text))
    rows.append(("rollout --uuids (10,000 UUIDs)", t, mem, ""))
    big = DeviceGroup.objects.get(factory=factory, name="big")
    t, mem = measure(lambda: wave_rollout(wave=wave, actor=user, group=big.name))
    rows.append(("rollout full group (the big group: a tenth of the fleet)", t, mem, f"{Device.objects.filter(group=big).count():,} devices"))
    t, mem = measure(lambda: wave_rollout(wave=wave, actor=user, group=big.name, limit="10000"))
    rows.append(("rollout --group big --limit 10000", t, mem, ""))
    staged = stage_share(wave, 10)
    t, mem = measure(lambda: wave_status(wave=wave), rollback=False)
    rows.append(("wave_status (100 groups, 10% staged)", t, mem, f"{staged:,} staged"))
    stage_share(wave, 0)

    print(f"\n{total:,} devices")
    print(f"\n{'operation':<48} {'time':>10} {'peak mem':>10}  notes")
    for name, t, mem, note in rows:
        print(f"{name:<48} {t * 1000:>7.0f} ms {mem:>7.1f} MiB  {note}")


if __name__ == "__main__":
    main()
