"""Bulk loader for benchmark fleets on PostgreSQL (COPY, minutes not hours).

Benchmark devices skip registration (no certificates): they exist to measure selection,
status and pages at 1,000,000 devices and more, not to talk to the gateway.

The fleet's size is BREAKWATER_BENCH_DEVICES (default 1,000,000), one size per database: the
fleet scripts read it, and `bench/run.py --sizes` runs them at each size on a database of its
own. Load one ahead of a run (it is loaded on first use anyway):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakwater_bench_10m .venv/bin/python bench/fleet.py --devices 10000000

Measured on the 2-core development VM: 1,000,000 devices load in about 30 s on a quiet machine
and take 0.5 GiB with their indexes; 10,000,000 took 19 minutes at a load average of 8 to 11
and take 4.5 GiB.
"""
import argparse
import os
import random
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

# Run as `python bench/x.py`, this folder comes first on sys.path, and bench/tuf.py would shadow
# the tuf package: put the project root there instead.
sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.project.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from devices.models import Device, DeviceGroup  # noqa: E402
from factory.models import Factory  # noqa: E402

BENCH_FACTORY = "bench"
BENCH_TAG = "production"
HWIDS = ["intel-corei7-64", "raspberrypi4-64"]
SIZE_VARIABLE = "BREAKWATER_BENCH_DEVICES"
DEFAULT_SIZE = 1_000_000


def fleet_size():
    """The bench fleet's size for this process: BREAKWATER_BENCH_DEVICES, default 1,000,000."""
    return int(os.environ.get(SIZE_VARIABLE, DEFAULT_SIZE))


def big_group_size(total):
    """The one big group holds a tenth of the fleet: 100,000 devices at 1,000,000."""
    return total // 10


def group_sizes(total, groups, big):
    """One group of `big` devices, the rest spread evenly over the other groups."""
    rest = total - big
    per = rest // (groups - 1)
    sizes = [big] + [per] * (groups - 1)
    sizes[-1] += rest - per * (groups - 1)
    return sizes


def bench_fleet(total=None, groups=100, big_group=None, online_ratio=0.9, version=41, stdout=sys.stdout):
    """Return the bench factory, loading `total` production devices (default `fleet_size()`) on
    first use."""
    from factory.tuf.services.repository import ci_build_publish, factory_create

    total = fleet_size() if total is None else total
    big_group = big_group_size(total) if big_group is None else big_group
    assert connection.vendor == "postgresql", "benchmarks run on PostgreSQL: set DATABASE_URL"
    factory = Factory.objects.filter(name=BENCH_FACTORY).first()
    if factory is None:
        factory = factory_create(name=BENCH_FACTORY)
        for v in (40, 41, 42, 43):
            ci_build_publish(factory=factory, version=v, hardware_ids=HWIDS, tags=[BENCH_TAG])
    have = Device.objects.filter(factory=factory).count()
    if have >= total:
        return factory
    if have:
        raise SystemExit(f"this database holds a bench fleet of {have:,} devices, not {total:,}: one size per database (bench/run.py --sizes)")
    started = time.perf_counter()
    sizes = group_sizes(total, groups, big_group)
    group_ids = []
    for i, size in enumerate(sizes):
        g, _ = DeviceGroup.objects.get_or_create(factory=factory, name="big" if i == 0 else f"g{i:03d}")
        group_ids.append((g.id, size))
    now = timezone.now()
    online_seen = now - timedelta(minutes=5)
    offline_seen = now - timedelta(days=3)
    # Registered a month ago: devices that joined a rolled-out group within the stuck threshold
    # are few in a live fleet, and the wave status looks each of them up.
    registered = now - timedelta(days=30)
    rng = random.Random(42)
    columns = (
        "factory_id, uuid, name, is_production, tag, group_id, hardware_id, target_name, target_version, "
        "last_seen, certificate_serial, created_at, sample_key, config_tag"
    )
    n = 0
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY devices_device ({columns}) FROM STDIN") as copy:
            for group_id, size in group_ids:
                for _ in range(size):
                    hwid = HWIDS[n % 2]
                    copy.write_row(
                        (
                            factory.id, uuid.UUID(int=rng.getrandbits(128), version=4), f"dev-{n:07d}", True, BENCH_TAG, group_id,
                            hwid, f"{hwid}-lmp-{version}", version,
                            online_seen if rng.random() < online_ratio else offline_seen, "", registered, rng.random(), "",
                        )
                    )
                    n += 1
        # The steady state of a live database, where autovacuum has set the visibility map: without
        # it the first run after a load reads the heap for every index entry and measures the load.
        cursor.execute("VACUUM ANALYZE devices_device")
    print(f"loaded {n:,} devices in {time.perf_counter() - started:.1f}s", file=stdout)
    return factory


def bench_wave(factory, name="bench-wave", version=42):
    """The bench factory's active wave of `version`, signed with a freshly registered offline key."""
    from factory.tuf.services.root_changes import offline_key_generate
    from waves.models import Wave
    from waves.services import wave_init, wave_sign

    wave = Wave.objects.filter(factory=factory, name__startswith=name, status=Wave.Status.ACTIVE).order_by("-id").first()
    if wave is not None:
        return wave
    # bench/api_cli.py cancels the tag's open waves to create its own, and a canceled wave keeps
    # its name: the next run's bench wave takes a new one.
    earlier = Wave.objects.filter(factory=factory, name__startswith=name).count()
    if earlier:
        name = f"{name}-{earlier + 1}"
    archive = offline_key_generate(factory=factory, actor=None, role="targets")
    wave = wave_init(factory=factory, actor=None, name=name, version=version, tag=BENCH_TAG)
    return wave_sign(wave=wave, actor=None, key_archive=archive)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Load the bench fleet into DATABASE_URL's database.")
    parser.add_argument("--devices", type=int, default=fleet_size(), help=f"fleet size (default {SIZE_VARIABLE} or 1,000,000)")
    args = parser.parse_args(argv)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    bench_fleet(total=args.devices)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        size = cursor.fetchone()[0]
    print(f"bench fleet of {args.devices:,} devices ready in {time.perf_counter() - started:.0f} s; database size {size / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
