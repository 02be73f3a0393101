"""Bulk loader for benchmark fleets on PostgreSQL (COPY, minutes not hours).

Benchmark devices skip registration (no certificates): they exist to measure selection,
status and pages at 1,000,000 devices, not to talk to the gateway.
"""
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


def group_sizes(total, groups, big):
    """One group of `big` devices, the rest spread evenly over the other groups."""
    rest = total - big
    per = rest // (groups - 1)
    sizes = [big] + [per] * (groups - 1)
    sizes[-1] += rest - per * (groups - 1)
    return sizes


def bench_fleet(total=1_000_000, groups=100, big_group=100_000, online_ratio=0.9, version=41, stdout=sys.stdout):
    """Return the bench factory, loading `total` production devices on first use."""
    from factory.tuf.services.repository import ci_build_publish, factory_create

    assert connection.vendor == "postgresql", "benchmarks run on PostgreSQL: set DATABASE_URL"
    factory = Factory.objects.filter(name=BENCH_FACTORY).first()
    if factory is None:
        factory = factory_create(name=BENCH_FACTORY)
        for v in (40, 41, 42, 43):
            ci_build_publish(factory=factory, version=v, hardware_ids=HWIDS, tags=[BENCH_TAG])
    have = Device.objects.filter(factory=factory).count()
    if have >= total:
        return factory
    started = time.perf_counter()
    sizes = group_sizes(total, groups, big_group)
    group_ids = []
    for i, size in enumerate(sizes):
        g, _ = DeviceGroup.objects.get_or_create(factory=factory, name="big" if i == 0 else f"g{i:03d}")
        group_ids.append((g.id, size))
    now = timezone.now()
    online_seen = now - timedelta(minutes=5)
    offline_seen = now - timedelta(days=3)
    rng = random.Random(42)
    columns = (
        "factory_id, uuid, name, is_production, tag, group_id, hardware_id, target_name, target_version, "
        "last_seen, certificate_serial, created_at, sample_key"
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
                            online_seen if rng.random() < online_ratio else offline_seen, "", now, rng.random(),
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
