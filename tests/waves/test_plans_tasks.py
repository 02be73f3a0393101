"""The rollout plans' beat task: every running plan evaluated once per tick, each claimed with a
conditional update so two workers never act on one plan twice."""
import threading
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from waves.plans import services as plan_services
from waves.models import PlanDecision, Rollout, RolloutPlan
from waves.plans.selectors import plan_get
from waves.plans.services import plan_set, plan_start, plans_evaluate_due

from .conftest import make_wave, seed
from .plan_devices import Fleet


def one_phase_then_fleet(wait=10):
    return [{"group": "canary", "wait_minutes": wait}, {"limit": "10", "wait_minutes": wait}]


def test_the_task_is_registered_and_scheduled_every_minute():
    from factory.project.celery import app

    app.loader.import_default_modules()
    assert "waves.plan_tasks.plans_evaluate" in app.tasks
    entry = settings.CELERY_BEAT_SCHEDULE["rollout-plans"]
    assert entry["task"] == "waves.plan_tasks.plans_evaluate" and entry["schedule"] == 60.0


def test_the_task_evaluates_running_plans_only(factory, bob, fleet100, wave, builds, offline_key):
    from waves.plan_tasks import plans_evaluate

    plan_set(wave=wave, actor=bob, phases=one_phase_then_fleet(wait=0))
    plan_start(wave=wave, actor=bob, now=timezone.now() - timedelta(minutes=5))
    assert plans_evaluate() == {"advanced": 1}
    assert Rollout.objects.filter(wave=wave).count() == 2
    # a paused or draft plan is not the task's business
    plan_services.plan_pause(wave=wave, actor=bob)
    assert plans_evaluate() == {}


def test_a_plan_claimed_by_another_worker_is_left_alone_until_its_claim_expires(factory, bob, fleet100, wave):
    plan_set(wave=wave, actor=bob, phases=one_phase_then_fleet())
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    later = t0 + timedelta(minutes=11)
    # another worker holds the plan
    RolloutPlan.objects.filter(wave=wave).update(evaluating_until=later + timedelta(minutes=3))
    assert plans_evaluate_due(now=later) == []
    assert Rollout.objects.filter(wave=wave).count() == 1
    # that worker died: its claim runs out, and the plan is evaluated again
    (result,) = plans_evaluate_due(now=later + timedelta(minutes=4))
    assert result.outcome == "advanced" and Rollout.objects.filter(wave=wave).count() == 2
    # a duplicate of the same tick finds it evaluated; the next tick evaluates it again
    assert plans_evaluate_due(now=later + timedelta(minutes=4, seconds=10)) == []
    (result,) = plans_evaluate_due(now=later + timedelta(minutes=5))
    assert result.outcome == "wait"


def test_one_failing_plan_does_not_stop_the_others(factory, bob, fleet100, builds, offline_key, monkeypatch):
    seed(factory, groups={"canary": 2}, tag="other")
    first = make_wave(factory, bob, offline_key)
    second = make_wave(factory, bob, offline_key, name="other-update", tag="other", source_tag="production")
    for wave in (first, second):
        plan_set(wave=wave, actor=bob, phases=[{"group": "canary", "wait_minutes": 0}, {"limit": 1}])
        plan_start(wave=wave, actor=bob, now=timezone.now() - timedelta(minutes=1))
    real = plan_services.plan_evaluate

    def broken_for_the_first(*, plan, now=None):
        if plan.pk == plan_get(wave=first).pk:
            raise RuntimeError("database hiccup")
        return real(plan=plan, now=now)

    monkeypatch.setattr(plan_services, "plan_evaluate", broken_for_the_first)
    results = plans_evaluate_due()
    assert [r.plan.wave.name for r in results] == ["other-update"]
    # the failed plan's claim is released so the next tick retries it
    assert RolloutPlan.objects.get(wave=first).evaluating_until is None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_workers_at_once_advance_a_plan_once(factory, bob, builds, offline_key):
    seed(factory, groups={"canary": 5}, ungrouped=50)
    wave = make_wave(factory, bob, offline_key)
    plan_set(wave=wave, actor=bob, phases=[{"group": "canary", "wait_minutes": 10}, {"limit": "10"}])
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    Fleet(factory, wave).update(Fleet(factory, wave).staged(1), t0 + timedelta(minutes=2))
    now = t0 + timedelta(minutes=11)
    barrier = threading.Barrier(4)
    outcomes = []

    def worker():
        try:
            barrier.wait()
            outcomes.extend(r.outcome for r in plans_evaluate_due(now=now))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == ["advanced"]
    assert Rollout.objects.filter(wave=wave).count() == 2
    assert PlanDecision.objects.filter(plan__wave=wave, kind="advance").count() == 1


def test_a_halted_or_paused_plan_ends_when_its_wave_is_canceled_by_hand(factory, bob, fleet100, wave):
    from waves.services import wave_cancel

    plan_set(wave=wave, actor=bob, phases=one_phase_then_fleet())
    plan_start(wave=wave, actor=bob)
    plan_services.plan_pause(wave=wave, actor=bob)
    wave_cancel(wave=wave, actor=bob)
    (result,) = plans_evaluate_due()
    assert result.outcome == "canceled" and plan_get(wave=wave).status == RolloutPlan.Status.CANCELED
    assert plans_evaluate_due() == []
