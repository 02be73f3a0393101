"""Maintenance windows: phases release devices only inside them (days, hours, a time zone; per
plan, or per group). Outside, nothing is staged, the plan says when the window opens, and the
gates still halt."""
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest

from factory.errors import ApplicationError
from waves.models import PlanDecision, Rollout, RolloutPlan
from waves.plans.forecast import plan_show
from waves.plans.selectors import plan_get
from waves.plans.services import plan_evaluate, plan_set, plan_start
from waves.plans.windows import group_windows_clean, next_opening, window_open, window_schedule, window_text, windows_clean

from .conftest import seed
from .plan_devices import Fleet

Status = RolloutPlan.Status
UTC = dt_timezone.utc


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def plan_like(windows, tz="UTC", group_windows=None):
    return RolloutPlan(windows=windows_clean(windows), timezone=tz, group_windows=group_windows_clean(group_windows or {}))


# --- parsing ----------------------------------------------------------------------------------


def test_windows_are_parsed_from_text_or_settings():
    assert windows_clean("mon-fri 02:00-05:00") == [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "02:00", "end": "05:00"}]
    assert windows_clean([{"days": ["sat", "sunday"], "start": "2:00", "end": "6:30"}]) == [{"days": ["sat", "sun"], "start": "02:00", "end": "06:30"}]
    assert windows_clean("fri-mon 22:00-04:00")[0]["days"] == ["mon", "fri", "sat", "sun"]
    assert windows_clean("daily 00:00-00:00; sat 01:00-02:00")[1] == {"days": ["sat"], "start": "01:00", "end": "02:00"}
    assert window_text(windows_clean("mon-fri 02:00-05:00")[0]) == "mon-fri 02:00-05:00"
    assert window_text(windows_clean("sat,mon 02:00-05:00")[0]) == "mon,sat 02:00-05:00"
    assert windows_clean(None) == [] and windows_clean("") == []
    assert group_windows_clean(["beta=sat 00:00-06:00"]) == {"beta": [{"days": ["sat"], "start": "00:00", "end": "06:00"}]}


@pytest.mark.parametrize(
    "raw, message",
    [
        ("xyz 02:00-05:00", "unknown day 'xyz'"),
        ("mon-xyz 02:00-05:00", "unknown day in 'mon-xyz'"),
        ("mon 25:00-05:00", "must be HH:MM"),
        ("mon 02:00-5", "must be HH:MM"),
        ("mon 02:00-02:00", "different start and end"),
        ("whenever", "is not a window such as"),
        ([{"days": ["mon"], "start": "01:00", "end": "02:00", "tz": "x"}], "unknown setting tz"),
    ],
)
def test_bad_windows_are_refused_with_a_clear_message(raw, message):
    with pytest.raises(ApplicationError, match=message):
        windows_clean(raw)


# --- open, next opening, across midnight, time zones ------------------------------------------


def test_window_open_and_the_next_opening():
    plan = plan_like("mon-fri 02:00-05:00")
    tuesday = utc(2026, 12, 1, 3, 0)
    assert window_open(plan, "", tuesday) and not window_open(plan, "", utc(2026, 12, 1, 5, 0))
    assert next_opening(plan, "", utc(2026, 12, 1, 6, 0)) == utc(2026, 12, 2, 2, 0)
    # Friday after the window: Monday's
    assert next_opening(plan, "", utc(2026, 12, 4, 6, 0)) == utc(2026, 12, 7, 2, 0)
    assert next_opening(plan, "", tuesday) == tuesday
    assert window_open(plan_like(""), "", tuesday)


def test_a_window_crossing_midnight_is_open_the_next_morning():
    plan = plan_like("fri 22:00-04:00")
    assert window_open(plan, "", utc(2026, 12, 4, 23, 0))  # Friday night
    assert window_open(plan, "", utc(2026, 12, 5, 3, 59))  # Saturday morning
    assert not window_open(plan, "", utc(2026, 12, 5, 4, 0))
    assert not window_open(plan, "", utc(2026, 12, 6, 3, 0))  # Sunday morning: Saturday opens no window


def test_windows_are_in_the_plans_time_zone_across_daylight_saving():
    plan = plan_like("daily 02:00-03:00", tz="Europe/Berlin")
    # winter: 02:00 Berlin is 01:00 UTC; summer: 00:00 UTC
    assert window_open(plan, "", utc(2026, 12, 1, 1, 30)) and not window_open(plan, "", utc(2026, 12, 1, 2, 30))
    assert window_open(plan, "", utc(2026, 7, 1, 0, 30)) and not window_open(plan, "", utc(2026, 7, 1, 1, 30))
    # the night the clocks go back (25 Oct 2026), the window still opens at 02:00 local
    opening = next_opening(plan, "", utc(2026, 10, 24, 12, 0))
    assert opening.astimezone(UTC) == utc(2026, 10, 25, 0, 0)


def test_group_windows_replace_the_plans_for_that_group():
    plan = plan_like("mon-fri 02:00-05:00", group_windows={"beta": ["sat 00:00-06:00"]})
    saturday = utc(2026, 12, 5, 3, 0)
    assert window_open(plan, "beta", saturday) and not window_open(plan, "canary", saturday) and not window_open(plan, "", saturday)
    assert not window_open(plan, "beta", utc(2026, 12, 1, 3, 0))


def test_time_inside_windows_adds_up_across_gaps():
    plan = plan_like("daily 02:00-03:00")
    # 90 minutes of batches from 02:30: 30 today, 60 tomorrow
    assert window_schedule(plan, "", utc(2026, 12, 1, 2, 30), 90) == utc(2026, 12, 2, 3, 0)
    assert window_schedule(plan_like(""), "", utc(2026, 12, 1, 2, 30), 90) == utc(2026, 12, 1, 4, 0)


# --- the evaluator ----------------------------------------------------------------------------


def next_weekday(weekday, hour):
    """The next such weekday (0 = Monday) at `hour` UTC, at least a day ahead (gates count
    reports made after the wave was created)."""
    day = datetime.now(UTC).date() + timedelta(days=1)
    while day.weekday() != weekday:
        day += timedelta(days=1)
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


@pytest.fixture
def groups(factory, builds):
    seed(factory, groups={"canary": 10, "beta": 20}, ungrouped=5)


def test_outside_its_window_a_phase_does_not_start_and_the_plan_says_when_it_opens(factory, bob, groups, wave):
    monday_noon = next_weekday(0, 11)  # 12:00 Berlin
    plan_set(wave=wave, actor=bob, phases=[{"group": "canary", "wait_minutes": 0}], windows=["tue 02:00-05:00"], time_zone="Europe/Berlin")
    plan_start(wave=wave, actor=bob, now=monday_noon)
    assert plan_get(wave=wave).status == Status.RUNNING and not Rollout.objects.filter(wave=wave).exists()
    for minutes in (1, 2, 3):
        result = plan_evaluate(plan=plan_get(wave=wave), now=monday_noon + timedelta(minutes=minutes))
        assert result.outcome == "wait" and result.reason == "waiting for the maintenance window: opens Tue 02:00 Europe/Berlin"
    # recorded once, not at every tick
    waits = PlanDecision.objects.filter(plan__wave=wave, kind="wait")
    assert waits.count() == 1 and waits.get().evidence["unmet"] == ["window"]
    shown = plan_show(plan=plan_get(wave=wave), now=monday_noon, forecast=False)
    assert shown["windows"] == "tue 02:00-05:00 (Europe/Berlin)" and shown["next_opening"] == monday_noon.replace(hour=1) + timedelta(days=1)
    # Tuesday 02:00 Berlin = 01:00 UTC
    result = plan_evaluate(plan=plan_get(wave=wave), now=monday_noon.replace(hour=1) + timedelta(days=1))
    assert result.outcome == "advanced" and Rollout.objects.filter(wave=wave).get().device_count == 10


def test_a_paced_phase_stages_only_inside_its_window_and_gates_still_halt(factory, bob, groups, wave):
    tuesday = next_weekday(1, 2)  # 02:00-04:00 UTC window
    phases = [{"group": "beta", "pace_per_minute": 5, "wait_minutes": 0, "max_failure_ratio": 0.2}]
    plan_set(wave=wave, actor=bob, phases=phases, windows="tue 02:00-04:00")
    plan_start(wave=wave, actor=bob, now=tuesday + timedelta(minutes=118))
    assert plan_evaluate(plan=plan_get(wave=wave), now=tuesday + timedelta(minutes=119)).outcome == "batch"
    # the window closes: no more batches, a wait decision
    result = plan_evaluate(plan=plan_get(wave=wave), now=tuesday + timedelta(minutes=121))
    assert result.outcome == "wait" and "opens Tue 02:00 UTC" in result.reason
    assert list(Rollout.objects.filter(wave=wave).values_list("device_count", flat=True)) == [5, 5]
    # trouble outside the window still halts
    fleet = Fleet(factory, wave)
    fleet.update(fleet.staged(1), tuesday + timedelta(minutes=125), fail_rate=0.5)
    assert plan_evaluate(plan=plan_get(wave=wave), now=tuesday + timedelta(minutes=126)).outcome == "halted"


def test_a_group_window_lets_its_phase_start_when_the_plans_is_closed(factory, bob, groups, wave):
    saturday = next_weekday(5, 3)
    plan_set(
        wave=wave,
        actor=bob,
        phases=[{"group": "beta", "wait_minutes": 0}],
        windows="mon-fri 02:00-05:00",
        group_windows={"beta": "sat 00:00-06:00"},
    )
    plan_start(wave=wave, actor=bob, now=saturday)
    assert Rollout.objects.filter(wave=wave).get().device_count == 20


def test_bad_windows_change_nothing(factory, bob, groups, wave):
    plan_set(wave=wave, actor=bob, phases=[{"group": "canary"}], windows="mon 01:00-02:00", time_zone="Europe/Berlin")
    for kwargs, message in (
        ({"time_zone": "Mars/Olympus"}, "Unknown time zone 'Mars/Olympus'"),
        ({"windows": "someday 01:00-02:00"}, "unknown day"),
        ({"windows": "mon 1am-2am"}, "must be HH:MM"),
        ({"group_windows": {"nope": "sat 00:00-06:00"}}, "device group nope does not exist"),
        ({"group_windows": ["beta"]}, "must be GROUP=WINDOW"),
    ):
        with pytest.raises(ApplicationError, match=message):
            plan_set(wave=wave, actor=bob, phases=[{"group": "beta"}], **kwargs)
    plan = plan_get(wave=wave)
    assert plan.windows == [{"days": ["mon"], "start": "01:00", "end": "02:00"}] and plan.timezone == "Europe/Berlin" and plan.group_windows == {}
    assert plan.phases.get().group_name == "canary"
