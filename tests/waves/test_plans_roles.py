"""Who may do what with a rollout plan: release managers and admins run plans; QA and support
watch them; members of another factory see nothing. A refusal changes nothing."""
import pytest
from django.utils import timezone

from factory.errors import Forbidden
from factory.models import AuditEntry
from waves.models import PlanDecision, RolloutPlan, Wave
from waves.plans.forecast import plan_show
from waves.plans.selectors import plan_get
from waves.plans.services import plan_approve, plan_pause, plan_resume, plan_set, plan_start, plan_wave_cancel

from .plan_devices import Fleet

PHASES = [{"group": "canary", "wait_minutes": 0, "advance": "approval"}, {"group": "beta"}]


def attempts(wave):
    return {
        "set": lambda user: plan_set(wave=wave, actor=user, phases=PHASES),
        "start": lambda user: plan_start(wave=wave, actor=user),
        "approve": lambda user: plan_approve(wave=wave, actor=user, reason="fine by me"),
        "pause": lambda user: plan_pause(wave=wave, actor=user),
        "resume": lambda user: plan_resume(wave=wave, actor=user, reason="go on"),
        "cancel": lambda user: plan_wave_cancel(wave=wave, actor=user),
    }


@pytest.mark.parametrize("who", ["carol", "dave", "eve"])
def test_qa_support_and_other_factories_cannot_change_a_plan(request, factory, alice, bob, fleet100, wave, who):
    user = request.getfixturevalue(who)
    plan_set(wave=wave, actor=bob, phases=PHASES)
    plan_start(wave=wave, actor=bob)
    before = (PlanDecision.objects.count(), AuditEntry.objects.count())
    for action, attempt in attempts(wave).items():
        with pytest.raises(Forbidden):
            attempt(user)
    assert (PlanDecision.objects.count(), AuditEntry.objects.count()) == before
    assert plan_get(wave=wave).status == RolloutPlan.Status.RUNNING
    assert Wave.objects.get(pk=wave.pk).status == Wave.Status.ACTIVE


def test_release_managers_and_admins_run_plans_and_everyone_in_the_factory_watches(factory, alice, bob, carol, dave, fleet100, wave):
    plan_set(wave=wave, actor=alice, phases=PHASES)
    plan_start(wave=wave, actor=bob)
    fleet = Fleet(factory, wave)
    fleet.update(fleet.staged(1), timezone.now())
    from waves.plans.services import plan_evaluate

    assert plan_evaluate(plan=plan_get(wave=wave)).outcome == "awaiting-approval"
    plan_pause(wave=wave, actor=alice)
    plan_resume(wave=wave, actor=bob)
    plan_approve(wave=wave, actor=alice, reason="canaries fine")
    shown = plan_show(plan=plan_get(wave=wave))
    assert [row["phase"].status for row in shown["phases"]] == ["passed", "watching"]
    assert [d.actor.username if d.actor else None for d in shown["decisions"]] == [
        "alice", "bob", "bob", None, "alice", "bob", "alice", "alice",
    ]
