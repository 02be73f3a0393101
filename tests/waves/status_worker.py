"""Steps of the killed-worker test, each run in its own process against the embedded install
(a SQLite file and the filesystem broker in a temporary BREAKWATER_VAR_DIR):

    python -m tests.waves.status_worker setup          -> {"wave": id}
    python -m tests.waves.status_worker send WAVE BUCKET...
    python -m tests.waves.status_worker check WAVE     -> {"samples": {bucket: totals}, "direct": {state: n}}
"""
import json
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.project.settings")

import django  # noqa: E402

django.setup()


def setup():
    from django.utils import timezone

    from devices.models import Device
    from factory.models import Role
    from factory.services import user_create
    from factory.tuf.services.repository import ci_build_publish, factory_create
    from tests.tuf_helpers import offline_targets_key
    from tests.waves.conftest import HWIDS, TAG, make_wave, seed
    from tests.waves.test_status_aggregation import check_in, report
    from waves.services import wave_rollout

    factory = factory_create(name="acme")
    bob = user_create(username="bob", factory=factory, role=Role.RELEASE_MANAGER, password="bob-pass-1")
    archive = offline_targets_key(factory=factory, actor=bob)
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    seed(factory, groups={"canary": 5, "beta": 20}, ungrouped=25)
    wave = make_wave(factory, bob, archive)
    wave_rollout(wave=wave, actor=bob, group="canary")
    wave_rollout(wave=wave, actor=bob, group="beta", limit="10")
    canary = list(Device.objects.filter(group__name="canary").order_by("name"))
    report(canary[0], "install-completed", success=True, at=timezone.now())
    check_in(canary[0], version=42)
    report(canary[1], "download-started")
    report(canary[2], "install-completed", success=False, detail="no space left on device")
    return {"wave": wave.id}


def send(wave_id, *buckets):
    from waves.tasks import wave_status_aggregate

    queue = os.environ.get("STATUS_TEST_QUEUE")
    for bucket in buckets:
        wave_status_aggregate.apply_async((int(wave_id), int(bucket)), **({"queue": queue} if queue else {}))
    return {"sent": [int(b) for b in buckets]}


def check(wave_id):
    from tests.waves.test_status_aggregation import direct_counts
    from waves.models import Wave, WaveStatusSample

    wave = Wave.objects.get(pk=int(wave_id))
    direct = {}
    for states in direct_counts(wave).values():
        for state, count in states.items():
            direct[state] = direct.get(state, 0) + count
    samples = {str(bucket): totals for bucket, totals in WaveStatusSample.objects.filter(wave=wave).values_list("bucket", "totals")}
    return {"samples": samples, "direct": direct}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    print(json.dumps({"setup": setup, "send": send, "check": check}[command](*args)))
