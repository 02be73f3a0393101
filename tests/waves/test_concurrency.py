"""Real concurrent transactions on PostgreSQL: nothing staged twice, nothing lost."""
import threading

import pytest
from django.db import connection

from factory.builds import build_bad, build_mark_bad
from factory.errors import ApplicationError
from waves.models import Rollout, Wave, WaveDevice
from waves.services import wave_cancel, wave_complete, wave_init, wave_rollout

from .conftest import TAG, make_wave, seed

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def run_together(*calls):
    """Run the calls in threads released at once; return (results, errors)."""
    barrier = threading.Barrier(len(calls))
    results, errors = [None] * len(calls), [None] * len(calls)

    def run(i, call):
        try:
            barrier.wait()
            results[i] = call()
        except Exception as exc:  # the test inspects which call lost
            errors[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_two_rollouts_at_once_never_stage_a_device_twice_nor_lose_one(factory, bob, builds, offline_key):
    seed(factory, ungrouped=300)
    wave = make_wave(factory, bob, offline_key)
    results, errors = run_together(*[lambda: wave_rollout(wave=wave, actor=bob, limit=60) for _ in range(4)])
    assert errors == [None] * 4
    staged = list(WaveDevice.objects.filter(wave=wave).values_list("device_id", flat=True))
    assert len(staged) == len(set(staged)) == 240
    # every device a rollout reported is staged under that rollout
    for result in results:
        assert set(WaveDevice.objects.filter(rollout=result.rollout).values_list("device__uuid", flat=True)) == {
            __import__("uuid").UUID(d["uuid"]) for d in result.devices
        }


@pytest.mark.parametrize("finish", [wave_complete, wave_cancel])
def test_complete_or_cancel_racing_a_rollout_leaves_a_consistent_wave(factory, bob, builds, offline_key, finish):
    seed(factory, ungrouped=200)
    wave = make_wave(factory, bob, offline_key)
    results, errors = run_together(lambda: wave_rollout(wave=wave, actor=bob, limit=150), lambda: finish(wave=wave, actor=bob))
    wave.refresh_from_db()
    assert wave.status in ("complete", "canceled") and errors[1] is None
    if errors[0] is None:
        # the rollout won the lock: its devices were staged before the wave finished
        assert WaveDevice.objects.filter(wave=wave).count() == results[0].count == 150
        assert Rollout.objects.get(wave=wave).created_at <= wave.finished_at
    else:
        assert isinstance(errors[0], ApplicationError) and "only an active wave" in errors[0].message
        assert not WaveDevice.objects.filter(wave=wave).exists() and not Rollout.objects.filter(wave=wave).exists()


def test_concurrent_inits_on_one_tag_give_exactly_one_open_wave(factory, bob, builds):
    results, errors = run_together(*[lambda i=i: wave_init(factory=factory, actor=bob, name=f"w{i}", version=42, tag=TAG) for i in range(5)])
    assert sum(r is not None for r in results) == 1
    assert all(isinstance(e, ApplicationError) for e in errors if e is not None)
    assert Wave.objects.filter(tag=TAG, status__in=Wave.OPEN_STATUSES).count() == 1


def test_marking_a_build_bad_waits_for_a_rollout_that_passed_the_check(factory, bob, builds, offline_key):
    """A rollout that found the build good holds the build's rows until it commits; the mark lands
    after it, and every later rollout sees the mark."""
    seed(factory, ungrouped=200)
    wave = make_wave(factory, bob, offline_key)
    results, errors = run_together(lambda: wave_rollout(wave=wave, actor=bob, limit=150), lambda: build_mark_bad(factory=factory, actor=bob, version=42, reason="boot loop"))
    assert errors[1] is None
    bad = build_bad(factory=factory, version=42)
    if errors[0] is None:
        assert results[0].rollout.created_at < bad.marked_at  # the rollout went first, whole
    else:
        assert "Build 42 is marked bad" in errors[0].message and not WaveDevice.objects.filter(wave=wave).exists()
    with pytest.raises(ApplicationError, match="Build 42 is marked bad"):
        wave_rollout(wave=wave, actor=bob, limit=10)
