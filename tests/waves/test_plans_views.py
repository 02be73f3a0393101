"""Dashboard pages of rollout plans: the seed's large-fleet example planned and started from the
editor, the timeline of phases, gates and decisions, the halt banner on the wave's page, the
approval form, and what each role sees and may do."""
import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from factory.models import AuditEntry
from tests.factory.test_views import hx, login
from waves.models import PlanDecision, PlanPhase, PlanTemplate, Rollout, RolloutPlan, Wave
from waves.plans.selectors import plan_get, plan_phases
from waves.plans.services import plan_evaluate, plan_set, plan_start

from .conftest import seed
from .plan_devices import Fleet


@pytest.fixture
def us_east(factory, builds):
    seed(factory, groups={"us-east": 140, "us-west": 12})


def editor_post(client, wave, rows, **extra):
    """POST the editor's formset with `rows` (dicts of the phase form's fields)."""
    data = {"do": "save", "phases-TOTAL_FORMS": str(len(rows)), "phases-INITIAL_FORMS": "0", "phases-MIN_NUM_FORMS": "0", "phases-MAX_NUM_FORMS": "50"}
    for i, row in enumerate(rows):
        row = {"wait_minutes": 60, "advance": "auto", **row}
        for key, value in row.items():
            if value is True:
                data[f"phases-{i}-{key}"] = "on"
            elif value not in (None, False, ""):
                data[f"phases-{i}-{key}"] = str(value)
    data.update(extra)
    return client.post(reverse("plan-edit", args=[wave.name]), data)


def test_the_large_fleet_example_runs_as_one_plan_from_the_dashboard(client, factory, bob, us_east, wave):
    login(client, bob)
    # the wave's page offers to plan the rollout
    panel = client.get(reverse("plan-panel", args=[wave.name]), **hx("plan-panel"))
    assert b"Plan the rollout" in panel.content
    assert b'hx-get="%s"' % reverse("plan-panel", args=[wave.name]).encode() in client.get(reverse("wave-detail", args=[wave.name])).content

    # fill the editor in from the seed's example, then save what it shows
    filled = client.post(reverse("plan-edit", args=[wave.name]), {"do": "large-fleet", "example-group": "us-east", "example-wait_minutes": 45})
    assert filled.status_code == 200
    html = filled.content.decode()
    assert "Filled in the large-fleet example for group us-east" in html
    for value in ('value="5"', 'value="20"', 'value="100"', 'value="90%"', 'value="us-east: the rest"'):
        assert value in html
    assert not RolloutPlan.objects.filter(wave=wave).exists()  # nothing saved yet

    rows = [
        {"name": "us-east: canary 5", "group": "us-east", "limit": "5", "wait_minutes": 45, "min_reporting": 5, "min_success_ratio": "90%", "max_failure_ratio": "10%", "stuck_after_minutes": 30, "max_unhealthy": 0},
        {"name": "us-east: 20 more", "group": "us-east", "limit": "20", "wait_minutes": 45, "min_reporting": 15, "min_success_ratio": "90%", "max_failure_ratio": "10%", "stuck_after_minutes": 30, "max_unhealthy": 0},
        {"name": "us-east: 100 more", "group": "us-east", "limit": "100", "wait_minutes": 45, "min_reporting": 50, "min_success_ratio": "95%", "max_failure_ratio": "5%", "stuck_after_minutes": 30, "max_unhealthy": 0},
        {"name": "us-east: the rest", "group": "us-east", "wait_minutes": 45, "min_success_ratio": "95%", "max_failure_ratio": "5%", "stuck_after_minutes": 30, "max_unhealthy": 0},
    ]
    saved = editor_post(client, wave, rows)
    assert saved.status_code == 302 and saved["Location"] == reverse("plan-detail", args=[wave.name])
    phases = list(PlanPhase.objects.filter(plan__wave=wave).order_by("position"))
    assert [(p.group_name, p.limit, p.min_success_ratio, p.max_failure_ratio) for p in phases] == [
        ("us-east", "5", 0.9, 0.1), ("us-east", "20", 0.9, 0.1), ("us-east", "100", 0.95, 0.05), ("us-east", "", 0.95, 0.05),
    ]  # fmt: skip

    page = client.get(reverse("plan-detail", args=[wave.name]))
    assert b"Start plan" in page.content and b"About 135 devices" not in page.content
    started = client.post(reverse("plan-action", args=[wave.name, "start"]), **hx("plan-live"))
    assert started.status_code == 200 and set(json.loads(started["HX-Trigger"])) == {"plan-changed", "rollout-done"}
    assert b"Plan started" in started.content and b"5 staged" in started.content

    # the scheduler takes it from here, while the devices are healthy
    fleet = Fleet(factory, wave)
    for position in (1, 2, 3):
        start = PlanPhase.objects.get(plan__wave=wave, position=position).started_at
        fleet.update(fleet.staged(position), start + timedelta(minutes=5))
        fleet.checkin_all(start + timedelta(minutes=44))
        assert plan_evaluate(plan=plan_get(wave=wave), now=start + timedelta(minutes=44)).outcome == "wait"
        fleet.checkin_all(start + timedelta(minutes=45))
        assert plan_evaluate(plan=plan_get(wave=wave), now=start + timedelta(minutes=45)).outcome == "advanced"
    assert [r.device_count for r in Rollout.objects.filter(wave=wave)] == [5, 20, 100, 15]

    timeline = client.get(reverse("plan-detail", args=[wave.name]), **hx("plan-live")).content.decode()
    assert "<html" not in timeline
    assert timeline.count('<span class="pill decision-advance">advance</span>') == 3
    assert timeline.count('<span class="pill phase-status-passed">passed</span>') == 3
    assert 'class="gate met"' in timeline and 'class="gate wait"' in timeline  # the current phase's wait
    assert "us-east: the rest" in timeline and 'aria-current="step"' in timeline
    assert "15 staged" in timeline and "advance" in timeline


def test_a_halted_plan_shows_a_banner_on_the_wave_page_and_can_resume_or_cancel(client, factory, bob, carol, fleet100, wave):
    plan_set(wave=wave, actor=bob, phases=[{"name": "canary", "group": "canary", "max_failure_ratio": 0.1}, {"group": "beta"}])
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    fleet = Fleet(factory, wave)
    fleet.update(fleet.staged(1), t0 + timedelta(minutes=2), fail_rate=0.4)
    assert plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=3)).outcome == "halted"

    panel = login(client, carol).get(reverse("plan-panel", args=[wave.name]), **hx("plan-panel")).content.decode()
    assert "Rollout plan halted." in panel and "Phase 1 (canary) failed its gates: failures ≤ 10%: 40%" in panel
    assert "Resume plan" not in panel and "A release manager can resume the plan" in panel
    assert login(client, carol).post(reverse("plan-action", args=[wave.name, "resume"]), {"reason": "qa says go"}).status_code == 403

    login(client, bob)
    panel = client.get(reverse("plan-panel", args=[wave.name]), **hx("plan-panel")).content.decode()
    assert "Resume plan" in panel and "Cancel wave" in panel
    refused = client.post(reverse("plan-action", args=[wave.name, "resume"]), {"reason": ""}, **hx("plan-panel"))
    assert refused.status_code == 400 and b"Say why" in refused.content
    wrong_name = client.post(reverse("plan-action", args=[wave.name, "cancel"]), {"confirm": "nope"}, **hx("plan-panel"))
    assert wrong_name.status_code == 400 and Wave.objects.get(pk=wave.pk).status == "active"
    resumed = client.post(reverse("plan-action", args=[wave.name, "resume"]), {"reason": "two canaries have a known disk fault"}, **hx("plan-panel"))
    assert resumed.status_code == 200 and b"Plan resumed" in resumed.content
    assert PlanDecision.objects.get(plan__wave=wave, kind="resume").actor == bob
    # it halts again on the same evidence; this time the wave is canceled from the banner
    plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=4))
    canceled = client.post(reverse("plan-action", args=[wave.name, "cancel"]), {"confirm": wave.name, "reason": "bad build"})
    assert canceled.status_code == 302
    assert Wave.objects.get(pk=wave.pk).status == "canceled" and plan_get(wave=wave).status == "canceled"
    assert AuditEntry.objects.filter(action="plan.cancel", actor=bob).exists()


def test_approval_from_the_dashboard_refuses_the_author_when_required(client, factory, alice, bob, dave, fleet100, wave):
    plan_set(wave=wave, actor=bob, phases=[{"group": "canary", "wait_minutes": 0, "advance": "approval", "approver_must_differ": True}, {"group": "beta"}])
    plan_start(wave=wave, actor=bob)
    fleet = Fleet(factory, wave)
    fleet.update(fleet.staged(1), timezone.now())
    assert plan_evaluate(plan=plan_get(wave=wave), now=timezone.now() + timedelta(minutes=1)).outcome == "awaiting-approval"

    page = login(client, bob).get(reverse("plan-detail", args=[wave.name])).content.decode()
    assert "awaits approval" in page and "needs a release manager other than you" in page and "Approve and roll out" not in page
    denied = client.post(reverse("plan-action", args=[wave.name, "approve"]), {"reason": "mine"})
    assert denied.status_code == 403 and b"other than the plan&#x27;s author bob" in denied.content
    assert "Approve and roll out" not in login(client, dave).get(reverse("plan-detail", args=[wave.name])).content.decode()

    page = login(client, alice).get(reverse("plan-detail", args=[wave.name])).content.decode()
    assert "Approve and roll out the next phase" in page
    approved = client.post(reverse("plan-action", args=[wave.name, "approve"]), {"reason": "canaries look good"}, **hx("plan-live"))
    assert approved.status_code == 200 and b"Approved" in approved.content
    decision = PlanDecision.objects.get(plan__wave=wave, kind="approve")
    assert decision.actor == alice and decision.reason == "canaries look good"
    assert Rollout.objects.filter(wave=wave).last().created_by == alice


def test_the_editor_keeps_started_phases_and_reports_service_errors(client, factory, bob, fleet100, wave):
    plan_set(wave=wave, actor=bob, phases=[{"name": "canary", "group": "canary"}, {"group": "beta"}])
    plan_start(wave=wave, actor=bob)
    login(client, bob)
    running = client.get(reverse("plan-edit", args=[wave.name])).content.decode()
    assert "pause it before changing its phases" in running and "Save plan" not in running
    client.post(reverse("plan-action", args=[wave.name, "pause"]), {"reason": ""})
    editor = client.get(reverse("plan-edit", args=[wave.name])).content.decode()
    assert "rolled out: its scope is kept" in editor and "Save plan" in editor

    # a bad limit comes back from the service, at the top, and nothing changes
    data = {
        "do": "save", "phases-TOTAL_FORMS": "2", "phases-INITIAL_FORMS": "2", "phases-MIN_NUM_FORMS": "0", "phases-MAX_NUM_FORMS": "50",
        "phases-0-wait_minutes": "30", "phases-0-advance": "auto",
        "phases-1-group": "beta", "phases-1-limit": "lots", "phases-1-wait_minutes": "60", "phases-1-advance": "auto",
    }  # fmt: skip
    bad = client.post(reverse("plan-edit", args=[wave.name]), data)
    assert bad.status_code == 400 and "Phase 2: Limit &#x27;lots&#x27; must be a number" in bad.content.decode()
    assert PlanPhase.objects.get(plan__wave=wave, position=2).limit == ""
    # the rolled-out phase's scope fields are ignored even if a request sends them
    data.update({"phases-0-group": "beta", "phases-1-limit": "10"})
    assert client.post(reverse("plan-edit", args=[wave.name]), data).status_code == 302
    first, second = PlanPhase.objects.filter(plan__wave=wave).order_by("position")
    assert (first.group_name, first.wait_minutes, second.limit) == ("canary", 30, "10")

    added = client.post(reverse("plan-edit", args=[wave.name]), {**data, "do": "add"}).content.decode()
    assert "Phase 3" in added and PlanPhase.objects.filter(plan__wave=wave).count() == 2


def test_templates_from_the_dashboard(client, factory, bob, us_east, wave):
    plan_set(wave=wave, actor=bob, phases=[{"name": "us-east canary", "group": "us-east", "limit": "2"}, {"name": "us-east rest", "group": "us-east"}])
    login(client, bob)
    saved = client.post(reverse("plan-template-save", args=[wave.name]), {"template-name": "canary then all", "template-per_group": "us-east"})
    assert saved.status_code == 200 and b"Saved template canary then all" in saved.content
    template = PlanTemplate.objects.get(name="canary then all")
    assert [(p["name"], p["group"]) for p in template.phases] == [("{group} canary", "{group}"), ("{group} rest", "{group}")]
    filled = client.post(reverse("plan-edit", args=[wave.name]), {"do": "template", "fill-template": "canary then all", "fill-groups": "us-west, us-east"}).content.decode()
    assert filled.index('value="us-west canary"') < filled.index('value="us-east canary"')
    client.post(reverse("plan-template-delete", args=[wave.name, template.pk]))
    assert not PlanTemplate.objects.exists()


def test_template_and_phase_names_are_checked_at_the_form_and_nothing_changes(client, factory, bob, us_east, wave):
    plan_set(wave=wave, actor=bob, phases=[{"name": "us-east canary", "group": "us-east", "limit": "2"}])
    login(client, bob)
    saved = client.post(reverse("plan-template-save", args=[wave.name]), {"template-name": "canary\r\nthen all"})
    assert b"A template name may only hold printable characters" in saved.content
    edited = editor_post(client, wave, [{"name": "canary\x1b[2J", "group": "us-east"}])
    assert edited.status_code == 400 and b"phase name may only hold printable characters" in edited.content
    assert not PlanTemplate.objects.exists()
    assert [p.name for p in plan_phases(plan_get(wave=wave))] == ["us-east canary"]


@pytest.mark.parametrize("who", ["carol", "dave"])
def test_qa_and_support_watch_but_cannot_edit_or_act(client, request, factory, bob, fleet100, wave, who):
    plan_set(wave=wave, actor=bob, phases=[{"group": "canary"}])
    user = request.getfixturevalue(who)
    login(client, user)
    page = client.get(reverse("plan-detail", args=[wave.name]))
    assert page.status_code == 200 and b"Start plan" not in page.content and b"Edit plan" not in page.content
    assert client.get(reverse("plan-edit", args=[wave.name])).status_code == 403
    assert editor_post(client, wave, [{"group": "beta"}]).status_code == 403
    for action in ("start", "pause", "resume", "approve", "cancel", "force", "skip"):
        assert client.post(reverse("plan-action", args=[wave.name, action]), {"reason": "x", "confirm": wave.name}).status_code == 403
    assert plan_get(wave=wave).status == "draft" and not Rollout.objects.exists()


def test_other_factories_see_nothing(client, eve, wave):
    login(client, eve)
    assert client.get(reverse("plan-detail", args=[wave.name])).status_code == 404


def test_pace_and_windows_from_the_editor_and_on_the_plan_page(client, factory, bob, fleet100, wave):
    login(client, bob)
    rows = [{"group": "beta", "pace_per_minute": 5, "wait_minutes": 1}, {"group": "canary", "pace_start": 1, "pace_factor": 2, "pace_ceiling": 4}]
    windows = {"windows": "mon-fri 00:00-00:00\nsat,sun 00:00-00:00", "timezone": "Europe/Berlin", "group_windows": "canary=sat 00:00-06:00"}
    bad = editor_post(client, wave, rows, **{**windows, "timezone": "Atlantis/City"})
    assert bad.status_code == 400 and "Unknown time zone &#x27;Atlantis/City&#x27;" in bad.content.decode()
    both = editor_post(client, wave, [{"group": "beta", "pace_per_minute": 5, "pace_start": 1, "pace_factor": 2}], **windows)
    assert both.status_code == 400 and "not both" in both.content.decode() and not RolloutPlan.objects.filter(wave=wave).exists()

    assert editor_post(client, wave, rows, **windows).status_code == 302
    plan = plan_get(wave=wave)
    assert plan.timezone == "Europe/Berlin" and len(plan.windows) == 2 and list(plan.group_windows) == ["canary"]
    first, second = plan_phases(plan)
    assert first.pace_per_minute == 5 and (second.pace_start, second.pace_factor, second.pace_ceiling) == (1, 2.0, 4)
    editor = client.get(reverse("plan-edit", args=[wave.name])).content.decode()
    assert "mon-fri 00:00-00:00\nsat,sun 00:00-00:00" in editor and "canary=sat 00:00-06:00" in editor and 'value="Europe/Berlin"' in editor

    plan_start(wave=wave, actor=bob)
    page = client.get(reverse("plan-detail", args=[wave.name])).content.decode()
    assert "paced: 5 a minute" in page and "paced: 1, x2 each minute, up to 4" in page
    assert "Staged 5 at 5 a minute." in page
    assert "mon-fri 00:00-00:00; sat,sun 00:00-00:00 (Europe/Berlin); group canary: sat 00:00-06:00" in page
    assert "The window is open now." in page
