"""Advancing a plan by hand: force a waiting phase on, or skip one, with a reason, audited, for
the roles that may roll out; refused (changing nothing) where it would hide trouble."""
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from factory.errors import ApplicationError, Conflict, Forbidden
from factory.models import AuditEntry
from tests.factory.test_views import hx, login
from waves.models import PlanDecision, PlanPhase, RolloutPlan, Rollout
from waves.plans.selectors import plan_get, plan_phases
from waves.plans.services import plan_evaluate, plan_force, plan_pause, plan_set, plan_skip, plan_start

from .conftest import seed
from .plan_devices import Fleet
from .test_plans_windows import next_weekday

Status = RolloutPlan.Status


@pytest.fixture
def groups(factory, builds):
    seed(factory, groups={"canary": 4, "beta": 6, "gamma": 3})


PHASES = [
    {"name": "canary", "group": "canary", "wait_minutes": 60, "max_failure_ratio": 0.0},
    {"name": "beta", "group": "beta", "wait_minutes": 60},
    {"name": "gamma", "group": "gamma", "wait_minutes": 0},
]


def statuses(wave):
    return [p.status for p in plan_phases(plan_get(wave=wave))]


def test_force_passes_a_waiting_phase_and_rolls_out_the_next(factory, bob, groups, wave):
    plan_set(wave=wave, actor=bob, phases=PHASES)
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    assert plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=5)).outcome == "wait"
    plan_force(wave=wave, actor=bob, reason="canaries look fine, release beta now", now=t0 + timedelta(minutes=6))
    assert statuses(wave) == ["passed", "watching", "pending"]
    decision = PlanDecision.objects.get(plan__wave=wave, kind="force")
    assert decision.actor == bob and decision.reason == "canaries look fine, release beta now"
    assert any(g["key"] == "wait" and not g["met"] for g in decision.evidence["gates"])
    assert AuditEntry.objects.filter(action="plan.force", actor=bob, target=wave.name, details__phase=1).exists()
    assert list(Rollout.objects.filter(wave=wave).order_by("id").values_list("group__name", "created_by__username")) == [
        ("canary", "bob"),
        ("beta", "bob"),
    ]


def test_force_rolls_out_a_phase_held_back_by_its_window(factory, bob, groups, wave):
    monday_noon = next_weekday(0, 12)
    plan_set(wave=wave, actor=bob, phases=PHASES[:1], windows=["tue 02:00-05:00"])
    plan_start(wave=wave, actor=bob, now=monday_noon)
    assert not Rollout.objects.filter(wave=wave).exists()
    plan_force(wave=wave, actor=bob, reason="security fix, cannot wait for the window", now=monday_noon + timedelta(minutes=1))
    assert statuses(wave) == ["watching"] and Rollout.objects.get(wave=wave).device_count == 4
    decision = PlanDecision.objects.get(plan__wave=wave, kind="force")
    assert decision.evidence["forced"] == "rollout" and "opens Tue 02:00" in decision.evidence["window"]


def test_force_is_refused_where_it_would_hide_trouble_and_changes_nothing(factory, bob, groups, wave):
    plan_set(wave=wave, actor=bob, phases=PHASES)
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    for reason in ("", "   "):
        with pytest.raises(ApplicationError, match="Say why"):
            plan_force(wave=wave, actor=bob, reason=reason)
    devices = Fleet(factory, wave)
    devices.update(devices.staged(1), t0 + timedelta(minutes=5), fail_rate=0.5)
    with pytest.raises(Conflict, match="failing its gates"):
        plan_force(wave=wave, actor=bob, reason="ship it", now=t0 + timedelta(minutes=6))
    assert statuses(wave) == ["watching", "pending", "pending"] and Rollout.objects.filter(wave=wave).count() == 1
    assert not PlanDecision.objects.filter(plan__wave=wave, kind="force").exists()
    plan_pause(wave=wave, actor=bob)
    with pytest.raises(Conflict, match="paused; only a running plan"):
        plan_force(wave=wave, actor=bob, reason="ship it")


def test_force_does_not_replace_an_approval(factory, bob, alice, groups, wave):
    plan_set(wave=wave, actor=bob, phases=[{"group": "canary", "wait_minutes": 0, "advance": "approval"}, {"group": "beta"}])
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    with pytest.raises(Conflict, match="advances by approval"):
        plan_force(wave=wave, actor=alice, reason="go")
    assert plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=1)).outcome == "awaiting-approval"
    with pytest.raises(Conflict, match="advances by approval: approve it instead"):
        plan_force(wave=wave, actor=alice, reason="go")


def test_skip_passes_a_phase_that_has_not_rolled_out(factory, bob, groups, wave):
    plan_set(wave=wave, actor=bob, phases=PHASES)
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    # A later phase, by position: nothing rolls out now.
    plan_skip(wave=wave, actor=bob, reason="beta is covered by the canaries", position=2, now=t0)
    assert statuses(wave) == ["watching", "passed", "pending"]
    with pytest.raises(Conflict, match="has rolled out to devices; it cannot be skipped"):
        plan_skip(wave=wave, actor=bob, reason="x", position=1)
    with pytest.raises(Conflict, match="already passed"):
        plan_skip(wave=wave, actor=bob, reason="x", position=2)
    with pytest.raises(ApplicationError, match="has no phase 9"):
        plan_skip(wave=wave, actor=bob, reason="x", position=9)
    assert PlanDecision.objects.get(plan__wave=wave, kind="skip").actor == bob
    assert AuditEntry.objects.filter(action="plan.skip", actor=bob, details__phase=2).exists()
    # The canaries pass: the plan goes from canary straight to gamma.
    assert plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=61)).outcome == "advanced"
    assert list(Rollout.objects.filter(wave=wave).order_by("id").values_list("group__name", flat=True)) == ["canary", "gamma"]


def test_skipping_the_current_phase_held_by_its_window_starts_the_next(factory, bob, groups, wave):
    monday_noon = next_weekday(0, 12)
    plan_set(wave=wave, actor=bob, phases=PHASES[:2], windows=["tue 02:00-05:00"], group_windows=["beta=daily 00:00-00:00"])
    plan_start(wave=wave, actor=bob, now=monday_noon)
    assert not Rollout.objects.filter(wave=wave).exists()
    plan_skip(wave=wave, actor=bob, reason="canary hardware is out for repair", now=monday_noon)
    assert statuses(wave) == ["passed", "watching"]
    assert Rollout.objects.get(wave=wave).group.name == "beta"


@pytest.mark.parametrize("user", ["carol", "dave", "eve"])
def test_only_release_managers_advance_by_hand(factory, bob, groups, wave, user, request):
    plan_set(wave=wave, actor=bob, phases=PHASES)
    plan_start(wave=wave, actor=bob)
    for call in (plan_force, plan_skip):
        with pytest.raises(Forbidden):
            call(wave=wave, actor=request.getfixturevalue(user), reason="because")
    assert statuses(wave) == ["watching", "pending", "pending"]
    assert not PlanDecision.objects.filter(kind__in=("force", "skip")).exists()


def test_a_draft_plan_is_edited_not_skipped(factory, bob, groups, wave):
    plan_set(wave=wave, actor=bob, phases=PHASES)
    with pytest.raises(Conflict, match="draft; only a started plan"):
        plan_skip(wave=wave, actor=bob, reason="x")
    assert PlanPhase.objects.filter(plan__wave=wave, status="passed").count() == 0


def test_force_and_skip_from_the_dashboard(client, factory, bob, carol, groups, wave):
    plan_set(wave=wave, actor=bob, phases=PHASES)
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    page = login(client, bob).get(reverse("plan-detail", args=[wave.name])).content.decode()
    assert "Advance by hand" in page and "Force phase 1 on" in page
    assert '<option value="2">2: beta</option>' in page and '<option value="1">' not in page  # phase 1 rolled out
    refused = client.post(reverse("plan-action", args=[wave.name, "force"]), {"reason": ""}, **hx("plan-live"))
    assert refused.status_code == 400 and "Say why" in refused.content.decode()
    skipped = client.post(reverse("plan-action", args=[wave.name, "skip"]), {"reason": "beta covered", "phase": "2"}, **hx("plan-live"))
    assert skipped.status_code == 200 and "Phase skipped" in skipped.content.decode()
    forced = client.post(reverse("plan-action", args=[wave.name, "force"]), {"reason": "canaries fine"}, **hx("plan-live"))
    assert forced.status_code == 200, forced.content.decode()[:500]
    assert statuses(wave) == ["passed", "passed", "watching"]
    html = forced.content.decode()
    assert "canaries fine" in html and "force" in html
    assert "Advance by hand" not in login(client, carol).get(reverse("plan-detail", args=[wave.name])).content.decode()
