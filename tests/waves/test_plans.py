"""Rollout plans: phases advance on evidence, wait for their time, halt on trouble, and every
decision lands in the plan's history and the audit log. The test drives the clock."""
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device, DeviceGroup
from factory.errors import ApplicationError, Conflict, Forbidden
from factory.models import AuditEntry
from waves.models import PlanDecision, PlanPhase, Rollout, RolloutPlan, Wave
from waves.plans.forecast import plan_forecast
from waves.plans.gates import phase_evidence
from waves.plans.phases import large_fleet_phases
from waves.plans.selectors import plan_get
from waves.plans.services import plan_approve, plan_evaluate, plan_pause, plan_resume, plan_set, plan_start, plan_wave_cancel
from waves.services import wave_complete, wave_rollout

from .conftest import seed
from .plan_devices import Fleet, webhook  # noqa: F401 (fixture)

Status = RolloutPlan.Status


@pytest.fixture
def us_east(factory, builds):
    """The seed's large-fleet example, scaled down: us-east (140 devices) and us-west (30)."""
    seed(factory, groups={"us-east": 140, "us-west": 30}, ungrouped=10, test_devices=3)


def minutes(start, n):
    return start + timedelta(minutes=n)


def kinds(wave):
    return list(PlanDecision.objects.filter(plan__wave=wave).order_by("id").values_list("kind", flat=True))


def phase_status(wave):
    return list(PlanPhase.objects.filter(plan__wave=wave).order_by("position").values_list("status", flat=True))


def staged_count(wave):
    """Devices staged by the wave's rollouts (alone, or through a full-group rollout)."""
    return sum(Rollout.objects.filter(wave=wave).values_list("device_count", flat=True))


def evaluate(wave, at):
    return plan_evaluate(plan=plan_get(wave=wave), now=at)


# --- a healthy plan ---------------------------------------------------------------------------


def test_healthy_large_fleet_plan_advances_phase_by_phase_never_before_its_wait(factory, bob, us_east, wave):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=large_fleet_phases("us-east", wait_minutes=60))
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    assert staged_count(wave) == 5 and phase_status(wave) == ["watching", "pending", "pending", "pending"]

    sizes = []
    start = t0
    for position, size in ((1, 5), (2, 20), (3, 100)):
        staged = fleet.staged(position)
        assert len(staged) == size and {d.group.name for d in staged} == {"us-east"}
        sizes.append(len(staged))
        fleet.update(staged, minutes(start, 10))
        for minute in (15, 30, 59):
            fleet.checkin_all(minutes(start, minute))
            result = evaluate(wave, minutes(start, minute))
            # every gate but the wait is met: the plan still waits
            assert result.outcome == "wait" and [g.key for g in result.evidence.unmet] == ["wait"]
            assert staged_count(wave) == sum(sizes)
        fleet.checkin_all(minutes(start, 60))
        result = evaluate(wave, minutes(start, 60))
        assert result.outcome == "advanced" and result.phase.position == position + 1
        start = minutes(start, 60)
        assert PlanPhase.objects.get(plan__wave=wave, position=position + 1).started_at == start

    # the last phase is the rest of the group: a full-group rollout
    rest = fleet.staged(4)
    assert len(rest) == 15 and Rollout.objects.filter(wave=wave).last().full_group
    fleet.update(rest, minutes(start, 5))
    fleet.checkin_all(minutes(start, 60))
    assert evaluate(wave, minutes(start, 60)).outcome == "finished"
    plan = plan_get(wave=wave)
    assert plan.status == Status.FINISHED and phase_status(wave) == ["passed"] * 4
    assert Device.objects.filter(group__name="us-east", target_version=42).count() == 140
    assert Device.objects.filter(group__name="us-west", target_version=42).count() == 0
    # the wave stays for a release manager to complete
    assert Wave.objects.get(pk=wave.pk).status == Wave.Status.ACTIVE
    # each rollout was made as the plan's author, with the phase's scope
    assert [(r.created_by, r.group_name, r.limit, r.full_group) for r in Rollout.objects.filter(wave=wave)] == [
        (bob, "us-east", "5", False),
        (bob, "us-east", "20", False),
        (bob, "us-east", "100", False),
        (bob, "us-east", "", True),
    ]
    assert kinds(wave) == ["set", "start", "rollout"] + ["wait", "advance", "rollout"] * 3 + ["advance", "finish"]
    # after finishing, evaluations change nothing
    assert evaluate(wave, minutes(start, 120)).outcome == "idle"


def test_every_decision_is_in_the_audit_log(factory, bob, us_east, wave):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=large_fleet_phases("us-east")[:2])
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    fleet.update(fleet.staged(1), minutes(t0, 5))
    fleet.checkin_all(minutes(t0, 30))
    evaluate(wave, minutes(t0, 30))
    fleet.checkin_all(minutes(t0, 61))
    evaluate(wave, minutes(t0, 61))
    plan_pause(wave=wave, actor=bob, reason="lunch")
    plan_resume(wave=wave, actor=bob)
    decisions = list(PlanDecision.objects.filter(plan__wave=wave).order_by("id"))
    audit = {e.details.get("decision"): e for e in AuditEntry.objects.filter(factory=factory, action__startswith="plan.")}
    assert [d.kind for d in decisions] == ["set", "start", "rollout", "wait", "advance", "rollout", "pause", "resume"]
    for decision in decisions:
        entry = audit[decision.pk]
        assert entry.action == f"plan.{decision.kind}" and entry.target == wave.name
        assert entry.actor == decision.actor
    assert audit[decisions[-2].pk].details["reason"] == "lunch" and audit[decisions[-2].pk].actor_name == "bob"
    # the scheduler's own decisions are the system's
    assert audit[decisions[4].pk].actor_name == "system"


def test_wait_decisions_are_recorded_when_what_the_phase_waits_for_changes(factory, bob, us_east, wave):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=[{"group": "us-east", "limit": 5, "wait_minutes": 30, "min_reporting": 5, "min_success_ratio": "100%"}])
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    for minute in range(1, 10):
        evaluate(wave, minutes(t0, minute))
    staged = fleet.staged(1)
    fleet.update(staged[:3], minutes(t0, 10))
    for minute in range(11, 20):
        evaluate(wave, minutes(t0, minute))
    waits = PlanDecision.objects.filter(plan__wave=wave, kind="wait").order_by("id")
    assert [w.evidence["unmet"] for w in waits] == [["min_reporting", "min_success_ratio", "wait"]]
    fleet.update(staged[3:], minutes(t0, 20))
    evaluate(wave, minutes(t0, 21))
    assert [w.evidence["unmet"] for w in waits.all()] == [["min_reporting", "min_success_ratio", "wait"], ["wait"]]
    assert waits.last().evidence["updated"] == 5


# --- halts ------------------------------------------------------------------------------------


def canary_beta_fleet(**overrides):
    common = {"wait_minutes": 60, "min_reporting": 5, "min_success_ratio": 0.8, "max_failure_ratio": 0.1, "stuck_after_minutes": 45, **overrides}
    return [
        {"name": "canary", "group": "canary", **common},
        {"name": "beta", "group": "beta", **common},
        {"name": "fleet 50", "limit": "50", **common},
    ]


def test_a_group_with_an_injected_failure_rate_halts_the_plan_at_its_phase(factory, bob, fleet100, wave, django_capture_on_commit_callbacks, webhook):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet(), webhook_url=webhook.url)
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    fleet.update(fleet.staged(1), minutes(t0, 5))
    fleet.checkin_all(minutes(t0, 60))
    assert evaluate(wave, minutes(t0, 60)).outcome == "advanced"

    beta = fleet.staged(2)
    updated, failed = fleet.update(beta, minutes(t0, 70), fail_rate=0.25)
    assert len(failed) == 5
    fleet.checkin_all(minutes(t0, 75))
    with django_capture_on_commit_callbacks(execute=True):
        result = evaluate(wave, minutes(t0, 75))
    # a halt does not wait for the wait time: trouble stops the plan at once
    assert result.outcome == "halted" and result.phase.position == 2
    plan = plan_get(wave=wave)
    assert plan.status == Status.HALTED and phase_status(wave) == ["passed", "failed", "pending"]
    assert "Phase 2 (beta)" in plan.halted_reason and "25%" in plan.halted_reason and "5 failed" in plan.halted_reason
    # the fleet-wide phase never rolled out, and further evaluations leave the plan alone
    assert staged_count(wave) == 25 and Rollout.objects.filter(wave=wave).count() == 2
    assert evaluate(wave, minutes(t0, 200)).outcome == "idle" and Rollout.objects.filter(wave=wave).count() == 2
    halt = PlanDecision.objects.get(plan=plan, kind="halt")
    assert halt.evidence["failed"] == 5 and halt.evidence["staged"] == 20
    assert AuditEntry.objects.filter(action="plan.halt", target=wave.name).count() == 1
    (call,) = webhook.calls
    assert call["event"] == "plan.halted" and call["wave"] == wave.name and call["phase"]["position"] == 2
    assert call["evidence"]["failed"] == 5


def test_failures_within_the_threshold_do_not_halt(factory, bob, fleet100, wave):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet(max_failure_ratio=0.1, min_success_ratio=0.9))
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    fleet.update(fleet.staged(1), minutes(t0, 5))
    fleet.checkin_all(minutes(t0, 60))
    evaluate(wave, minutes(t0, 60))
    fleet.update(fleet.staged(2), minutes(t0, 70), fail_rate=0.1)  # 2 of 20: exactly the limit
    fleet.checkin_all(minutes(t0, 120))
    result = evaluate(wave, minutes(t0, 120))
    assert result.outcome == "advanced" and result.phase.position == 3


def test_devices_that_never_come_back_after_updating_halt_the_plan(factory, bob, fleet100, wave):
    fleet = Fleet(factory, wave)
    phases = canary_beta_fleet(stuck_after_minutes=30, max_unhealthy=1)
    plan_set(wave=wave, actor=bob, phases=phases)
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    fleet.update(fleet.staged(1), minutes(t0, 5))
    fleet.checkin_all(minutes(t0, 60))
    evaluate(wave, minutes(t0, 60))
    fleet.update(fleet.staged(2), minutes(t0, 65), never_return=2)
    # right after updating, silence is not yet trouble
    fleet.checkin_all(minutes(t0, 80))
    assert evaluate(wave, minutes(t0, 80)).outcome == "wait"
    fleet.checkin_all(minutes(t0, 95))
    assert evaluate(wave, minutes(t0, 95)).outcome == "wait"
    fleet.checkin_all(minutes(t0, 100))
    result = evaluate(wave, minutes(t0, 100))
    assert result.outcome == "halted" and result.phase.position == 2
    assert result.evidence.unhealthy == 2 and result.evidence.updated == 20
    assert "silent after updating ≤ 1" in plan_get(wave=wave).halted_reason


def test_stuck_devices_count_as_failed(factory, bob, fleet100, wave):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet(stuck_after_minutes=20, max_failure_ratio=0.2))
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    canary = fleet.staged(1)
    fleet.update(canary[:3], minutes(t0, 5))
    fleet.start_download(canary[3:4], minutes(t0, 5))  # starts, then nothing
    fleet.checkin_all(minutes(t0, 10))
    ev = evaluate(wave, minutes(t0, 19)).evidence
    assert (ev.updated, ev.stuck, ev.in_progress, ev.reporting) == (3, 0, 1, 4)
    result = evaluate(wave, minutes(t0, 26))
    # one device silent since the start, one silent since its download began: 2 of 5 = 40%
    assert result.outcome == "halted" and result.evidence.stuck == 2 and result.evidence.failure_ratio == 0.4


# --- approvals --------------------------------------------------------------------------------


def approval_phases():
    return [
        {"name": "canary", "group": "canary", "wait_minutes": 30, "min_reporting": 5, "advance": "approval", "approver_must_differ": True},
        {"name": "beta", "group": "beta", "wait_minutes": 30, "advance": "approval"},
        {"name": "rest", "limit": "10", "wait_minutes": 30},
    ]


def test_an_approval_gate_waits_for_an_approval_and_records_who_gave_it(factory, alice, bob, carol, dave, fleet100, wave, django_capture_on_commit_callbacks, webhook):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=approval_phases(), webhook_url=webhook.url)
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    with pytest.raises(Conflict, match="phase 1 is watching"):
        plan_approve(wave=wave, actor=alice, reason="too early")
    fleet.update(fleet.staged(1), minutes(t0, 5))
    fleet.checkin_all(minutes(t0, 30))
    with django_capture_on_commit_callbacks(execute=True):
        assert evaluate(wave, minutes(t0, 30)).outcome == "awaiting-approval"
    assert webhook.calls[-1]["event"] == "plan.awaiting-approval"
    for minute in (40, 90, 600):
        fleet.checkin_all(minutes(t0, minute))
        assert evaluate(wave, minutes(t0, minute)).outcome == "awaiting-approval"
    assert staged_count(wave) == 5 and phase_status(wave) == ["awaiting-approval", "pending", "pending"]

    for user in (carol, dave):
        with pytest.raises(Forbidden):
            plan_approve(wave=wave, actor=user, reason="looks fine")
    with pytest.raises(Forbidden, match="other than the plan's author bob"):
        plan_approve(wave=wave, actor=bob, reason="my own plan")
    with pytest.raises(ApplicationError, match="Say why"):
        plan_approve(wave=wave, actor=alice, reason="  ")
    assert staged_count(wave) == 5

    plan_approve(wave=wave, actor=alice, reason="canaries healthy for 10 hours", now=minutes(t0, 601))
    approval = PlanDecision.objects.get(plan__wave=wave, kind="approve")
    assert approval.actor == alice and approval.reason == "canaries healthy for 10 hours" and approval.phase.position == 1
    assert approval.evidence["updated"] == 5
    beta_rollout = Rollout.objects.filter(wave=wave).last()
    # the approver rolled the next phase out
    assert beta_rollout.created_by == alice and beta_rollout.group_name == "beta"
    assert phase_status(wave) == ["passed", "watching", "pending"]
    entry = AuditEntry.objects.get(action="plan.approve")
    assert entry.actor_name == "alice" and entry.details["reason"] == "canaries healthy for 10 hours"

    # phase 2 needs an approval too, and its author may give it (no four-eyes rule there)
    fleet.update(fleet.staged(2), minutes(t0, 610))
    fleet.checkin_all(minutes(t0, 640))
    assert evaluate(wave, minutes(t0, 640)).outcome == "awaiting-approval"
    plan_approve(wave=wave, actor=bob, reason="beta fine")
    assert Rollout.objects.filter(wave=wave).last().created_by == bob


def test_an_approval_is_refused_and_the_plan_halts_when_failures_arrived_meanwhile(factory, alice, bob, fleet100, wave):
    fleet = Fleet(factory, wave)
    phases = approval_phases()
    phases[0]["max_failure_ratio"] = 0.2
    plan_set(wave=wave, actor=bob, phases=phases)
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    canary = fleet.staged(1)
    fleet.update(canary, minutes(t0, 5))
    fleet.checkin_all(minutes(t0, 30))
    assert evaluate(wave, minutes(t0, 30)).outcome == "awaiting-approval"
    # two canaries report a failure of the wave's version (after a later retry) and roll back
    fleet.update(canary[:2], minutes(t0, 40), fail_rate=1.0)
    Device.objects.filter(pk__in=[d.pk for d in canary[:2]]).update(target_version=41)
    with pytest.raises(Conflict, match="Not approved: Phase 1 .* failed its gates"):
        plan_approve(wave=wave, actor=alice, reason="ship it", now=minutes(t0, 45))
    assert plan_get(wave=wave).status == Status.HALTED and staged_count(wave) == 5
    assert "approve" not in kinds(wave)


# --- pause, resume, cancel --------------------------------------------------------------------


def test_a_paused_plan_neither_advances_nor_halts_until_resumed(factory, bob, fleet100, wave):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet())
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    fleet.update(fleet.staged(1), minutes(t0, 5))
    plan_pause(wave=wave, actor=bob, reason="holiday freeze")
    fleet.checkin_all(minutes(t0, 120))
    assert evaluate(wave, minutes(t0, 120)).outcome == "idle"
    assert staged_count(wave) == 5
    with pytest.raises(Conflict, match="only a running plan can be paused"):
        plan_pause(wave=wave, actor=bob)
    plan_resume(wave=wave, actor=bob)
    assert evaluate(wave, minutes(t0, 121)).outcome == "advanced"


def test_a_halted_plan_resumes_with_a_reason_and_relaxed_gates(factory, bob, fleet100, wave):
    fleet = Fleet(factory, wave)
    phases = canary_beta_fleet()
    plan_set(wave=wave, actor=bob, phases=phases)
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    fleet.update(fleet.staged(1), minutes(t0, 5), fail_rate=0.2)  # 1 of 5 fails: over 10%
    assert evaluate(wave, minutes(t0, 6)).outcome == "halted"
    with pytest.raises(ApplicationError, match="Say why"):
        plan_resume(wave=wave, actor=bob)
    # a halted plan's current phase keeps its scope but its gates may change
    changed = [dict(p) for p in phases]
    changed[0]["group"] = "beta"
    with pytest.raises(ApplicationError, match="Phase 1 \\(canary\\) has already rolled out; its scope cannot change"):
        plan_set(wave=wave, actor=bob, phases=changed)
    relaxed = [dict(p) for p in phases]
    relaxed[0].update(max_failure_ratio=0.25, min_success_ratio=0.75)
    plan_set(wave=wave, actor=bob, phases=relaxed)
    plan_resume(wave=wave, actor=bob, reason="the failing canary has a broken disk")
    assert plan_get(wave=wave).status == Status.RUNNING and phase_status(wave) == ["watching", "pending", "pending"]
    fleet.checkin_all(minutes(t0, 60))
    assert evaluate(wave, minutes(t0, 60)).outcome == "advanced"
    resume = PlanDecision.objects.get(plan__wave=wave, kind="resume")
    assert resume.reason == "the failing canary has a broken disk" and resume.evidence["was"] == "halted"
    # a passed phase cannot change at all
    plan_pause(wave=wave, actor=bob)
    relaxed[0]["wait_minutes"] = 5
    with pytest.raises(ApplicationError, match="Phase 1 \\(canary\\) has passed"):
        plan_set(wave=wave, actor=bob, phases=relaxed)


def test_a_halted_plan_can_have_its_wave_canceled(factory, bob, fleet100, wave):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet())
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    fleet.update(fleet.staged(1), minutes(t0, 5), fail_rate=0.6)
    evaluate(wave, minutes(t0, 6))
    plan_wave_cancel(wave=wave, actor=bob, reason="bad build")
    assert Wave.objects.get(pk=wave.pk).status == Wave.Status.CANCELED
    assert plan_get(wave=wave).status == Status.CANCELED
    with pytest.raises(Conflict):
        plan_resume(wave=wave, actor=bob, reason="oops")
    assert [e.action for e in AuditEntry.objects.filter(target=wave.name).order_by("id")][-2:] == ["wave.cancel", "plan.cancel"]


def test_a_wave_completed_or_canceled_by_hand_ends_its_plan(factory, bob, fleet100, wave):
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet())
    plan_start(wave=wave, actor=bob)
    wave_complete(wave=wave, actor=bob)
    result = evaluate(wave, timezone.now())
    assert result.outcome == "finished" and plan_get(wave=wave).status == Status.FINISHED
    assert "was completed" in PlanDecision.objects.filter(plan__wave=wave).last().reason


# --- rollouts that cannot happen --------------------------------------------------------------


def test_a_phase_with_no_device_left_is_skipped(factory, bob, fleet100, wave):
    fleet = Fleet(factory, wave)
    wave_rollout(wave=wave, actor=bob, group="beta")  # by hand, before the plan
    phases = canary_beta_fleet()
    phases[1]["limit"] = "5"  # five more of beta: none left
    plan_set(wave=wave, actor=bob, phases=phases)
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    fleet.update(fleet.staged(1), minutes(t0, 5))
    fleet.checkin_all(minutes(t0, 60))
    result = evaluate(wave, minutes(t0, 60))
    assert result.outcome == "advanced" and result.phase.position == 3
    assert phase_status(wave) == ["passed", "passed", "watching"]
    assert "skip" in kinds(wave) and fleet.staged(2) == []


def test_a_refused_rollout_halts_the_plan_and_resumes_after_the_fix(factory, bob, fleet100, wave):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet())
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    DeviceGroup.objects.filter(factory=factory, name="beta").delete()
    fleet.update(fleet.staged(1), minutes(t0, 5))
    fleet.checkin_all(minutes(t0, 60))
    result = evaluate(wave, minutes(t0, 60))
    assert result.outcome == "halted" and result.phase.position == 2
    assert "could not be rolled out: Device group beta does not exist" in plan_get(wave=wave).halted_reason
    with pytest.raises(ApplicationError, match="device group beta does not exist"):
        plan_set(wave=wave, actor=bob, phases=canary_beta_fleet())
    fixed = canary_beta_fleet()
    fixed[1] = {**fixed[1], "group": "", "limit": "20", "name": "twenty"}
    plan_set(wave=wave, actor=bob, phases=fixed)
    plan_resume(wave=wave, actor=bob, reason="beta was merged into the fleet")
    assert evaluate(wave, minutes(t0, 61)).outcome == "advanced"
    assert len(fleet.staged(2)) == 20
    # the halt stays in the history of the phase that was replaced
    assert PlanDecision.objects.get(plan__wave=wave, kind="halt").phase.position == 2


def test_start_refuses_when_the_first_rollout_is_refused_and_changes_nothing(factory, bob, fleet100, wave):
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet())
    DeviceGroup.objects.filter(factory=factory, name="canary").delete()
    with pytest.raises(ApplicationError, match="Phase 1 \\(canary\\) could not be rolled out"):
        plan_start(wave=wave, actor=bob)
    assert plan_get(wave=wave).status == Status.DRAFT and kinds(wave) == ["set"]


def test_the_scheduler_acts_as_the_author_and_halts_when_the_author_may_no_longer(factory, alice, bob, fleet100, wave):
    from factory.models import Membership, Role

    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet())
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    Membership.objects.filter(user=bob, factory=factory).update(role=Role.SUPPORT)
    bob._breakwater_roles = {}
    fleet.update(fleet.staged(1), minutes(t0, 5))
    fleet.checkin_all(minutes(t0, 60))
    result = evaluate(wave, minutes(t0, 60))
    assert result.outcome == "halted" and "Role support may not do this" in result.reason


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phase, message",
    [
        ({}, "choose what it rolls out to"),
        ({"group": "nope"}, "device group nope does not exist"),
        ({"limit": "5x"}, "must be a number of devices"),
        ({"limit": "0"}, "Limit must be between 1 and 10,000"),
        ({"limit": "150%"}, "between 1% and 100%"),
        ({"limit": 5, "min_success_ratio": 1.5}, "between 0 and 1"),
        ({"limit": 5, "max_failure_ratio": "lots"}, "is not a number between 0 and 1"),
        ({"limit": 5, "wait_minutes": -1}, "wait time"),
        ({"limit": 5, "wait": 10}, "unknown setting wait"),
        ({"limit": 5, "advance": "maybe"}, "advance must be"),
        ({"limit": 5, "approver_must_differ": True}, "only a phase that advances by approval"),
        ({"limit": 5, "max_unhealthy": 0}, "the health gate needs"),
        ({"uuids": "not-a-uuid"}, "Not a device UUID"),
        ({"saved_list": "missing"}, "saved device list missing does not exist"),
        ({"saved_list": "x", "uuids": "7a733e81-f948-43a9-a358-56f3deb5f184"}, "either a saved device list or UUIDs"),
    ],
)
def test_bad_phases_are_refused_with_a_clear_message_and_change_nothing(factory, bob, fleet100, wave, phase, message):
    good = {"group": "canary"}
    with pytest.raises(ApplicationError, match=message):
        plan_set(wave=wave, actor=bob, phases=[good, phase])
    assert not RolloutPlan.objects.filter(wave=wave).exists()


def test_a_plan_needs_phases_and_a_valid_webhook(factory, bob, fleet100, wave):
    with pytest.raises(ApplicationError, match="at least one phase"):
        plan_set(wave=wave, actor=bob, phases=[])
    with pytest.raises(ApplicationError, match="not an http"):
        plan_set(wave=wave, actor=bob, phases=[{"group": "canary"}], webhook_url="ftp://example.com/hook")
    with pytest.raises(ApplicationError, match="at most 50 phases"):
        plan_set(wave=wave, actor=bob, phases=[{"limit": 1}] * 51)


def test_a_running_plan_must_be_paused_before_it_changes(factory, bob, fleet100, wave):
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet())
    plan_start(wave=wave, actor=bob)
    with pytest.raises(Conflict, match="pause it before changing"):
        plan_set(wave=wave, actor=bob, phases=canary_beta_fleet())
    with pytest.raises(Conflict, match="only a draft plan can start"):
        plan_start(wave=wave, actor=bob)


def test_a_plan_starts_only_on_an_active_wave(factory, bob, fleet100, builds, offline_key):
    from waves.services import wave_init

    unsigned = wave_init(factory=factory, actor=bob, name="unsigned", version=42, tag="production")
    plan_set(wave=unsigned, actor=bob, phases=[{"group": "canary"}])
    with pytest.raises(Conflict, match="sign it"):
        plan_start(wave=unsigned, actor=bob)


def test_uuids_and_saved_lists_are_phase_scopes(factory, bob, fleet100, wave):
    from waves.models import SavedDeviceList

    beta = list(Device.objects.filter(group__name="beta").order_by("name"))
    SavedDeviceList.objects.create(factory=factory, name="beta-first", uuids="\n".join(str(d.uuid) for d in beta[:4]))
    phases = [
        {"uuids": ";".join(str(d.uuid) for d in beta[10:13]), "wait_minutes": 0},
        {"saved_list": "beta-first", "group": "beta", "wait_minutes": 0},
    ]
    plan_set(wave=wave, actor=bob, phases=phases)
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    fleet = Fleet(factory, wave)
    assert fleet.staged(1) == beta[10:13]
    assert evaluate(wave, minutes(t0, 1)).outcome == "advanced"
    assert fleet.staged(2) == beta[:4]


# --- evidence and forecast --------------------------------------------------------------------


def test_percent_limits_follow_the_seed(factory, bob, us_east, wave):
    plan_set(wave=wave, actor=bob, phases=[{"group": "us-east", "limit": "5%"}, {"limit": "10%"}])
    plan_start(wave=wave, actor=bob)
    # ceil(5% of 140) in us-east
    assert staged_count(wave) == 7


def test_forecast_from_the_observed_update_times(factory, bob, us_east, wave):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=large_fleet_phases("us-east", wait_minutes=60))
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    plan = plan_get(wave=wave)
    assert plan_forecast(plan=plan, now=minutes(t0, 5))["completion_at"] is None
    staged = fleet.staged(1)
    fleet.update(staged[:2], minutes(t0, 10))
    fleet.update(staged[2:], minutes(t0, 90))
    forecast = plan_forecast(plan=plan, now=minutes(t0, 30))
    assert forecast["observed_updates"] == 5 and forecast["typical_update_minutes"] == 90.0
    # 90% need 90 minutes (longer than the 60-minute wait): phase 1 ends at t0+90, then three
    # phases of 90 minutes each
    assert forecast["completion_at"] == minutes(t0, 90 + 3 * 90)
    assert [p["ends_at"] for p in forecast["phases"]] == [minutes(t0, 90 * i) for i in (1, 2, 3, 4)]
    assert forecast["updates_last_hour"] == 2  # the two at t0+10; the others are yet to come
    assert plan_forecast(plan=plan, now=minutes(t0, 95))["updates_last_hour"] == 3


def test_phase_evidence_counts(factory, bob, fleet100, wave):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=[{"group": "beta", "min_reporting": 10, "stuck_after_minutes": 30, "max_unhealthy": 5}])
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    beta = fleet.staged(1)
    fleet.update(beta[:6], minutes(t0, 5))
    fleet.update(beta[6:8], minutes(t0, 5), fail_rate=1.0)
    fleet.start_download(beta[8:10], minutes(t0, 5))
    phase = PlanPhase.objects.get(plan__wave=wave)
    ev = phase_evidence(phase, now=minutes(t0, 10))
    assert (ev.staged, ev.updated, ev.failed, ev.stuck, ev.in_progress, ev.reporting, ev.unhealthy) == (20, 6, 2, 0, 2, 10, 0)
    assert {g.key: g.met for g in ev.gates} == {"wait": False, "min_reporting": True, "max_unhealthy": True}
    ev = phase_evidence(phase, now=minutes(t0, 40))
    # silent since the start (10) or since their download began (2); updated and silent since (6)
    assert (ev.stuck, ev.unhealthy) == (12, 6)
    assert [g.key for g in ev.halting] == ["max_unhealthy"]


def test_a_dead_webhook_never_blocks_a_halt(factory, bob, fleet100, wave, django_capture_on_commit_callbacks):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet(), webhook_url=f"http://127.0.0.1:{port}/hook")
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    fleet.update(fleet.staged(1), minutes(t0, 2), fail_rate=0.6)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert evaluate(wave, minutes(t0, 3)).outcome == "halted"
    assert len(callbacks) == 1 and plan_get(wave=wave).status == Status.HALTED
