"""Plan templates: save a plan (or phases) once, apply it to any new wave, per group."""
import pytest

from factory.errors import ApplicationError, Conflict, Forbidden, NotFound
from factory.models import AuditEntry
from waves.models import PlanPhase, PlanTemplate
from waves.plans.phases import large_fleet_phases
from waves.plans.selectors import plan_get
from waves.plans.services import plan_set
from waves.plans.templates import plan_template_apply, plan_template_delete, plan_template_list, plan_template_save
from waves.services import wave_cancel

from .conftest import make_wave, seed


@pytest.fixture
def regions(factory, builds):
    seed(factory, groups={"us-east": 30, "us-west": 30, "canary": 3})


def phases_of(wave):
    return list(PlanPhase.objects.filter(plan__wave=wave).order_by("position").values_list("name", "group_name", "limit"))


def test_a_per_group_template_applies_to_every_group_given(factory, bob, regions, wave):
    plan_template_save(factory=factory, actor=bob, name="canary then 5% 25% all", phases=[
        {"name": "{group} canary", "group": "{group}", "limit": "1", "wait_minutes": 30, "max_failure_ratio": 0},
        {"name": "{group} 5%", "group": "{group}", "limit": "5%", "wait_minutes": 60},
        {"name": "{group} 25%", "group": "{group}", "limit": "25%", "wait_minutes": 60},
        {"name": "{group} all", "group": "{group}", "wait_minutes": 60, "advance": "approval"},
    ])
    plan_template_apply(wave=wave, actor=bob, name="canary then 5% 25% all", groups=["us-east", "us-west"])
    assert phases_of(wave) == [
        ("us-east canary", "us-east", "1"), ("us-east 5%", "us-east", "5%"), ("us-east 25%", "us-east", "25%"), ("us-east all", "us-east", ""),
        ("us-west canary", "us-west", "1"), ("us-west 5%", "us-west", "5%"), ("us-west 25%", "us-west", "25%"), ("us-west all", "us-west", ""),
    ]  # fmt: skip
    assert PlanPhase.objects.get(plan__wave=wave, position=4).advance == "approval"
    assert plan_get(wave=wave).author == bob
    assert AuditEntry.objects.filter(action="plan.template-apply", target=wave.name, details__template="canary then 5% 25% all").exists()


def test_a_plan_saved_as_a_template_applies_to_the_next_wave(factory, bob, regions, wave, offline_key):
    plan_set(wave=wave, actor=bob, phases=large_fleet_phases("us-east"))
    plan_template_save(factory=factory, actor=bob, name="us-east large fleet", wave=wave)
    wave_cancel(wave=wave, actor=bob)
    nxt = make_wave(factory, bob, offline_key, name="v2.1-update", version=43)
    plan_template_apply(wave=nxt, actor=bob, name="us-east large fleet")
    assert phases_of(nxt) == phases_of(wave)
    assert [t.name for t in plan_template_list(factory=factory)] == ["us-east large fleet"]


def test_template_rules(factory, bob, carol, dave, regions, wave):
    plan_template_save(factory=factory, actor=bob, name="fixed", phases=[{"group": "canary"}])
    with pytest.raises(Conflict, match="already exists"):
        plan_template_save(factory=factory, actor=bob, name="fixed", phases=[{"group": "us-east"}])
    plan_template_save(factory=factory, actor=bob, name="fixed", phases=[{"group": "us-east"}], replace=True)
    assert PlanTemplate.objects.get(name="fixed").phases[0]["group"] == "us-east"
    with pytest.raises(ApplicationError, match="takes no groups"):
        plan_template_apply(wave=wave, actor=bob, name="fixed", groups=["us-west"])
    plan_template_save(factory=factory, actor=bob, name="per group", phases=[{"group": "{group}", "limit": 2}])
    with pytest.raises(ApplicationError, match="give the groups"):
        plan_template_apply(wave=wave, actor=bob, name="per group")
    with pytest.raises(ApplicationError, match="device group nowhere does not exist"):
        plan_template_apply(wave=wave, actor=bob, name="per group", groups=["nowhere"])
    with pytest.raises(ApplicationError, match="template name"):
        plan_template_save(factory=factory, actor=bob, name="  ", phases=[{"group": "canary"}])
    with pytest.raises(ApplicationError, match="Phase 1: Limit"):
        plan_template_save(factory=factory, actor=bob, name="bad", phases=[{"group": "{group}", "limit": "lots"}])
    for user in (carol, dave):
        with pytest.raises(Forbidden):
            plan_template_save(factory=factory, actor=user, name="mine", phases=[{"group": "canary"}])
        with pytest.raises(Forbidden):
            plan_template_apply(wave=wave, actor=user, name="fixed")
        with pytest.raises(Forbidden):
            plan_template_delete(factory=factory, actor=user, name="fixed")
    plan_template_delete(factory=factory, actor=bob, name="fixed")
    with pytest.raises(NotFound):
        plan_template_apply(wave=wave, actor=bob, name="fixed")
    assert [t.name for t in plan_template_list(factory=factory)] == ["per group"]
