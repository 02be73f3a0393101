"""TUF repository costs on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bw_tuf .venv/bin/python bench/tuf.py

Prints: wave init, sign (key archive) and complete for a tag whose wave carries 1,000 targets;
one periodic refresh of timestamps and snapshots over 100 tags (one with an active wave);
metadata bytes per view; and a device poll after warm-up (queries and time). Works in its own
throw-away factory, deleted at the end.
"""
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

# Run as a script, this file's folder would come first on sys.path and this module would hide
# the `tuf` package it benchmarks: put the project root there instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.project.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from devices.services import device_create  # noqa: E402
from factory.services import factory_purge  # noqa: E402
from factory.tuf.models import TufRoot, TufView  # noqa: E402
from factory.tuf.services import keyring as tuf_keyring, root_changes, signed_views  # noqa: E402
from factory.tuf.services.repository import ci_build_publish, factory_create  # noqa: E402
from factory.tuf.tasks import tuf_views_refresh  # noqa: E402
from waves import served_views  # noqa: E402
from waves.services import wave_cancel, wave_complete, wave_init, wave_rollout, wave_sign  # noqa: E402

TAG = "production"
HWIDS_PER_BUILD = 500  # two builds of 500 hardware IDs: the wave carries 1,000 targets
TAGS = 100
RUNS = 5


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - start) * 1000


def line(label, value):
    print(f"  {label:<58} {value}")


def main():
    assert connection.vendor == "postgresql", "benchmarks run on PostgreSQL: set DATABASE_URL"
    name = f"bench-tuf-{uuid.uuid4().hex[:8]}"
    factory = factory_create(name=name)
    try:
        run(factory)
    finally:
        factory_purge(factory=factory)


def run(factory):
    from django.contrib.auth import get_user_model

    from factory.models import Role
    from factory.services import user_create

    user_create(username=f"{factory.name}-rm", factory=factory, role=Role.RELEASE_MANAGER)
    actor = get_user_model().objects.get(username=f"{factory.name}-rm")
    archive = root_changes.offline_key_generate(factory=factory, actor=actor)
    hwids = [f"board-{i:03d}" for i in range(HWIDS_PER_BUILD)]
    _, publish_ms = timed(lambda: ci_build_publish(factory=factory, version=1, hardware_ids=hwids, tags=[TAG]))
    ci_build_publish(factory=factory, version=2, hardware_ids=hwids, tags=[TAG])
    first = wave_sign(wave=wave_init(factory=factory, actor=actor, name="base", version=1, tag=TAG), actor=actor, key_archive=archive)
    wave_complete(wave=first, actor=actor)

    print(f"TUF benchmark on PostgreSQL ({connection.settings_dict['NAME']}), factory {factory.name}")
    print(f"\nWave of CI build 2 on a tag whose production targets hold {HWIDS_PER_BUILD} targets (wave: {2 * HWIDS_PER_BUILD} targets), median of {RUNS}:")
    inits, signs, cancels = [], [], []
    for i in range(RUNS):
        wave, ms = timed(lambda: wave_init(factory=factory, actor=actor, name=f"w{i}", version=2, tag=TAG))
        inits.append(ms)
        wave, ms = timed(lambda: wave_sign(wave=wave, actor=actor, key_archive=archive))
        signs.append(ms)
        assert wave.status == "active"
        if i < RUNS - 1:
            _, ms = timed(lambda: wave_cancel(wave=wave, actor=actor))
            cancels.append(ms)
    targets_count = len(served_views.device_targets(device=_device(factory, TAG, staged_in=wave, actor=actor)))
    _, complete_ms = timed(lambda: wave_complete(wave=wave, actor=actor))
    line("wave init (build targets, online signature)", f"{statistics.median(inits):8.1f} ms")
    line("wave sign (key archive: verify, append, publish the view)", f"{statistics.median(signs):8.1f} ms")
    line("wave cancel (drop the view, re-sign production)", f"{statistics.median(cancels):8.1f} ms")
    line("wave complete (promote the bytes, re-sign production)", f"{complete_ms:8.1f} ms")
    line("targets in the staged device's view", f"{targets_count:8d}")
    line(f"CI build publish ({HWIDS_PER_BUILD} targets, CI view re-signed)", f"{publish_ms:8.1f} ms")

    # 100 tags, one with an active wave: the periodic refresh re-signs them all.
    tags = [f"tag-{i:03d}" for i in range(TAGS - 1)]
    for tag in tags:
        signed_views.production_view_ensure(factory_id=factory.id, tag=tag)
    wave = wave_sign(wave=wave_init(factory=factory, actor=actor, name="refresh-wave", version=2, tag=tags[0], source_tag=TAG), actor=actor, key_archive=archive)
    anchors = TufView.objects.filter(factory=factory, kind="production").count()
    views = TufView.objects.filter(factory=factory).exclude(kind="ci").count()
    print(f"\nPeriodic refresh of timestamps and snapshots: {anchors} production tags, {views} views (one wave view):")
    moment = timezone.now()
    for round_ in range(3):
        moment += timedelta(hours=13)  # past the re-signing margin of 1-day timestamps
        with CaptureQueriesContext(connection) as queries:
            signed, ms = timed(lambda: tuf_views_refresh(now=moment.isoformat()))
        factory_tags = signed  # other factories in the database may be due as well
        line(f"round {round_ + 1}: tags re-signed (all factories)", f"{factory_tags:8d}")
        line(f"round {round_ + 1}: wall time, per tag", f"{ms:8.1f} ms  {ms / max(1, signed):6.2f} ms/tag  {len(queries) / max(1, signed):5.1f} queries/tag")
    wave_cancel(wave=wave, actor=actor)
    keyring = tuf_keyring.Keyring(factory.id)
    view = TufView.objects.get(factory=factory, kind="production", tag=tags[1])
    durations = [timed(lambda: signed_views.view_sign(view, keyring, version=view.version + 1, now=timezone.now()))[1] for _ in range(200)]
    line("signing CPU alone: snapshot + timestamp of one view (median)", f"{statistics.median(durations):8.3f} ms")

    print("\nMetadata bytes per view:")
    _bytes("CI view (two builds, 1,000 targets)", TufView.objects.get(factory=factory, kind="ci"))
    _bytes(f"production view of {TAG} (1,000 targets)", TufView.objects.get(factory=factory, kind="production", tag=TAG))
    _bytes("production view of a tag without waves (empty baseline)", TufView.objects.get(factory=factory, kind="production", tag=tags[1]))
    wave = wave_sign(wave=wave_init(factory=factory, actor=actor, name="sized", version=2, tag=tags[1], source_tag=TAG), actor=actor, key_archive=archive)
    _bytes("wave view (500 targets)", TufView.objects.get(kind="wave", wave=wave))
    root = TufRoot.objects.filter(factory=factory, channel="production").order_by("-version").first()
    line(f"production root v{root.version}", f"{len(bytes(root.data)):8d} bytes")

    print("\nDevice poll after warm-up (timestamp.json, production device staged in an active wave):")
    device = _device(factory, tags[1], staged_in=wave, actor=actor)
    for filename in ("timestamp.json", "snapshot.json", "targets.json"):
        served_views.device_metadata(device=device, filename=filename)
    with CaptureQueriesContext(connection) as queries:
        served_views.device_metadata(device=device, filename="timestamp.json")
    durations = []
    for _ in range(1000):
        _, ms = timed(lambda: served_views.device_metadata(device=device, filename="timestamp.json"))
        durations.append(ms)
    line("queries per metadata request", f"{len(queries):8d}")
    line("time per metadata request (median, p99)", f"{statistics.median(durations):8.3f} ms  {sorted(durations)[989]:.3f} ms")


def _device(factory, tag, *, staged_in, actor):
    device = device_create(factory=factory, uuid=uuid.uuid4(), name=f"bench-{uuid.uuid4().hex[:6]}", tag=tag, is_production=True, hardware_id="board-000")
    wave_rollout(wave=staged_in, actor=actor, uuids=str(device.uuid))
    signed_views.views_changed(factory=factory, tag=tag)
    return device


def _bytes(label, view):
    sizes = f"targets {len(bytes(view.targets)):8d}  snapshot {len(bytes(view.snapshot)):5d}  timestamp {len(bytes(view.timestamp)):5d}"
    line(label, sizes)


if __name__ == "__main__":
    main()
