"""Pacing inside a phase: a paced phase stages its devices in batches over time (N a minute, or
growing exponentially up to a ceiling); a halt or a pause stops the rest; a paced tick costs the
same few queries however large the group. The test drives the clock."""
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices.models import Device
from factory.errors import ApplicationError
from waves.models import PlanDecision, PlanPhase, Rollout, RolloutPlan
from waves.plans.forecast import plan_forecast
from waves.plans.gates import phase_evidence
from waves.plans.pacing import next_batch_size, pace_label, pace_minutes
from waves.plans.selectors import phase_devices, plan_get
from waves.plans.services import plan_evaluate, plan_pause, plan_resume, plan_set, plan_start, plan_wave_cancel

from .conftest import make_wave, seed
from .plan_devices import Fleet

Status = RolloutPlan.Status
# Gates count reports made after the wave was created: the clock starts at the next whole hour.
# A whole hour at least an hour after the module is imported: every report at T0 or later comes
# after the waves the tests create (reports before a wave's creation do not count), even when the
# suite crosses an hour boundary between collecting this module and running it.
T0 = (datetime.now(dt_timezone.utc) + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)


def at(minutes, seconds=0):
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def evaluate(wave, now):
    return plan_evaluate(plan=plan_get(wave=wave), now=now)


def phase1(wave):
    return PlanPhase.objects.select_related("plan__wave", "rollout").get(plan__wave=wave, position=1)


def batch_sizes(wave):
    return list(Rollout.objects.filter(wave=wave).order_by("id").values_list("device_count", flat=True))


@pytest.fixture
def big(factory, builds):
    seed(factory, groups={"big": 35, "other": 10}, ungrouped=5)


def paced(**overrides):
    return [{"name": "paced", "group": "big", "wait_minutes": 10, **overrides}, {"name": "rest", "group": "other", "wait_minutes": 0}]


def test_a_rate_paced_phase_stages_n_a_minute_until_its_scope_is_staged(factory, bob, big, wave):
    plan_set(wave=wave, actor=bob, phases=paced(pace_per_minute=10))
    plan_start(wave=wave, actor=bob, now=T0)
    phase = phase1(wave)
    assert phase.staged_count == 10 and not phase.batches_done and phase.last_batch_at == T0
    for minute, staged in ((1, 20), (2, 30)):
        result = evaluate(wave, at(minute))
        assert result.outcome == "batch" and "staged 10 more" in result.reason
        assert phase1(wave).staged_count == staged
    # the last batch is short: every device of the group is staged, the phase stops batching
    assert evaluate(wave, at(3)).outcome == "batch"
    phase = phase1(wave)
    assert batch_sizes(wave) == [10, 10, 10, 5] and phase.staged_count == 35 and phase.batches_done
    # every batch is tied to the phase, each staged new devices, and the gates count them all
    assert Rollout.objects.filter(phase=phase).count() == 4
    assert phase_devices(phase).count() == 35 == phase_devices(phase).distinct().count()
    evidence = phase_evidence(phase, now=at(4))
    assert evidence.staged == 35
    # the wait starts at the last batch, not at the phase's start
    assert evidence.wait_ends_at == at(13)
    assert evaluate(wave, at(12)).outcome == "wait"
    assert evaluate(wave, at(13)).outcome == "advanced"
    assert list(PlanDecision.objects.filter(plan__wave=wave, kind="batch").values_list("evidence__devices", flat=True)) == [10, 10, 5]


def test_the_rate_counts_whole_minutes_and_a_stall_releases_at_most_two_minutes_worth(factory, bob, big, wave):
    plan_set(wave=wave, actor=bob, phases=paced(pace_per_minute=4))
    plan_start(wave=wave, actor=bob, now=T0)
    # a second evaluation in the same minute (a duplicate tick) stages nothing
    result = evaluate(wave, at(0, 10))
    assert result.outcome == "batch" and "due a minute after" in result.reason and batch_sizes(wave) == [4]
    evaluate(wave, at(1))
    # the scheduler stalled for 10 minutes: two minutes' worth, not ten
    evaluate(wave, at(11))
    assert batch_sizes(wave) == [4, 4, 8]


def test_exponential_batches_grow_by_the_factor_up_to_the_ceiling(factory, bob, big, wave):
    plan_set(wave=wave, actor=bob, phases=paced(pace_start=2, pace_factor=2, pace_ceiling=8))
    plan_start(wave=wave, actor=bob, now=T0)
    for minute in range(1, 7):
        evaluate(wave, at(minute))
    assert batch_sizes(wave)[:5] == [2, 4, 8, 8, 8]
    assert sum(batch_sizes(wave)) == 35 and phase1(wave).batches_done


def test_a_limit_caps_the_phase_total_and_a_percentage_is_resolved_at_the_first_batch(factory, bob, big, wave):
    plan_set(wave=wave, actor=bob, phases=paced(pace_per_minute=10, limit="25"))
    plan_start(wave=wave, actor=bob, now=T0)
    evaluate(wave, at(1))
    evaluate(wave, at(2))
    assert batch_sizes(wave) == [10, 10, 5] and phase1(wave).batches_done


def test_a_percentage_limit_of_a_paced_phase(factory, bob, big, builds, offline_key):
    wave = make_wave(factory, bob, offline_key, name="pct")
    plan_set(wave=wave, actor=bob, phases=paced(pace_per_minute=5, limit="40%"))  # 40% of 35 = 14
    plan_start(wave=wave, actor=bob, now=T0)
    assert Rollout.objects.get(wave=wave).options["phase_total"] == 14
    for minute in (1, 2, 3):
        evaluate(wave, at(minute))
    assert batch_sizes(wave) == [5, 5, 4] and phase1(wave).batches_done


def test_a_paced_phase_advances_only_after_every_batch(factory, bob, big, wave):
    plan_set(wave=wave, actor=bob, phases=paced(pace_per_minute=10, wait_minutes=0))
    plan_start(wave=wave, actor=bob, now=T0)
    evidence = phase_evidence(phase1(wave), now=at(0))
    batches = next(g for g in evidence.gates if g.key == "batches")
    assert not batches.met and batches.observed == "staged 10 at 10 a minute"
    for minute in range(1, 4):
        assert evaluate(wave, at(minute)).outcome == "batch"
    assert evaluate(wave, at(4)).outcome == "advanced"


def test_a_halt_stops_the_remaining_batches(factory, bob, big, wave):
    plan_set(wave=wave, actor=bob, phases=paced(pace_per_minute=10, max_failure_ratio=0.1))
    plan_start(wave=wave, actor=bob, now=T0)
    fleet = Fleet(factory, wave)
    fleet.update(fleet.staged(1), at(0, 40), fail_rate=0.5)
    result = evaluate(wave, at(1))
    assert result.outcome == "halted"
    assert plan_get(wave=wave).status == Status.HALTED and batch_sizes(wave) == [10]
    assert evaluate(wave, at(5)).outcome == "idle" and batch_sizes(wave) == [10]


def test_a_pause_stops_batches_and_a_resume_continues_them(factory, bob, big, wave):
    plan_set(wave=wave, actor=bob, phases=paced(pace_per_minute=10))
    plan_start(wave=wave, actor=bob, now=T0)
    plan_pause(wave=wave, actor=bob, reason="lunch")
    assert evaluate(wave, at(1)).outcome == "idle" and evaluate(wave, at(2)).outcome == "idle"
    assert batch_sizes(wave) == [10]
    plan_resume(wave=wave, actor=bob)
    assert evaluate(wave, at(3)).outcome == "batch" and batch_sizes(wave) == [10, 20]


def test_a_paced_tick_costs_the_same_queries_whatever_the_group_size(factory, bob, builds, offline_key):
    seed(factory, groups={"small": 30, "large": 600})
    counts = {}
    for group in ("small", "large"):
        wave = make_wave(factory, bob, offline_key, name=f"w-{group}")
        plan_set(wave=wave, actor=bob, phases=[{"group": group, "pace_per_minute": 5, "wait_minutes": 10}])
        plan_start(wave=wave, actor=bob, now=T0)
        evaluate(wave, at(1))
        with CaptureQueriesContext(connection) as queries:
            assert evaluate(wave, at(2)).outcome == "batch"
        counts[group] = len(queries)
        plan_wave_cancel(wave=wave, actor=bob)
    # The same statements for 30 or 600 devices; a batch's sample reads one to four index
    # windows (waves.services._sample: online/offline, wrapping around a random start).
    assert abs(counts["small"] - counts["large"]) <= 3 and max(counts.values()) <= 27, counts


def test_bad_pace_settings_are_refused_and_change_nothing(factory, bob, big, wave):
    plan_set(wave=wave, actor=bob, phases=paced(pace_per_minute=10))
    for settings, message in (
        ({"pace_per_minute": 10, "pace_start": 5, "pace_factor": 2}, "not both"),
        ({"pace_start": 5, "pace_factor": 1}, "above 1"),
        ({"pace_start": 5, "pace_factor": 0.5}, "above 1"),
        ({"pace_start": 5}, "needs pace_start and pace_factor"),
        ({"pace_start": 10, "pace_factor": 2, "pace_ceiling": 5}, "may not be below the first batch"),
        ({"pace_per_minute": 0}, "pace (devices a minute) must be between 1"),
        ({"pace_per_minute": "fast"}, "is not a number"),
        ({"pace_per_minute": 2.5}, "whole number"),
    ):
        with pytest.raises(ApplicationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            plan_set(wave=wave, actor=bob, phases=paced(**settings))
    assert phase1(wave).pace_per_minute == 10 and phase1(wave).pace_start is None


def test_pace_arithmetic():
    rate = PlanPhase(pace_per_minute=10)
    exp = PlanPhase(pace_start=5, pace_factor=2, pace_ceiling=200)
    assert pace_label(rate) == "10 a minute" and pace_label(exp) == "5, x2 each minute, up to 200"
    assert pace_minutes(rate, 100) == 9 and pace_minutes(rate, 0) == 0
    # 5, 10, 20, 40, 80, 160 (315 by minute 5), then 200 a minute
    assert pace_minutes(exp, 315) == 5 and pace_minutes(exp, 515) == 6
    exp.last_batch_at, exp.staged_count = T0, 35
    assert next_batch_size(exp, at(1)) == 40
    exp.staged_count = 315
    assert next_batch_size(exp, at(1)) == 200


def test_the_forecast_takes_a_paced_phase_its_rate(factory, bob, big, wave):
    plan_set(wave=wave, actor=bob, phases=paced(pace_per_minute=5, wait_minutes=10))
    plan_start(wave=wave, actor=bob, now=T0)
    fleet = Fleet(factory, wave)
    fleet.update(fleet.staged(1), at(0, 50))
    forecast = plan_forecast(plan=plan_get(wave=wave), now=at(1))
    # 35 devices at 5 a minute: the last batch at minute 6, then the 10-minute wait
    first = forecast["phases"][0]
    assert first["ends_at"] >= at(16) and first["pace"] == "5 a minute"
    assert Device.objects.filter(factory=factory).count() == 50
