"""Rollout plans API: set, show, start, approve, pause, resume, cancel and templates, with the
same rules (and refusals) as every other door."""
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factory.test_api import API, as_user, assert_error, tokens  # noqa: F401  (fixtures)
from waves.models import PlanTemplate, RolloutPlan, Wave
from waves.plans.phases import large_fleet_phases
from waves.plans.selectors import plan_get
from waves.plans.services import plan_evaluate

from .conftest import seed
from .plan_devices import Fleet


def put(api, path, payload):
    return api.client.put(api.url(path), json.dumps(payload), content_type="application/json", **api._headers())


@pytest.fixture
def us_east(factory, builds):
    seed(factory, groups={"us-east": 130, "us-west": 10})


def test_a_release_manager_sets_starts_and_watches_the_large_fleet_example(as_user, factory, us_east, wave):
    bob = as_user("bob")
    response = put(bob, f"waves/{wave.name}/plan", {"phases": large_fleet_phases("us-east", wait_minutes=30), "webhook_url": "https://hooks.example.com/bw"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "draft" and body["author"] == "bob" and body["webhook_url"] == "https://hooks.example.com/bw"
    assert [(p["group"], p["limit"], p["estimated_devices"]) for p in body["phases"]] == [
        ("us-east", "5", 5), ("us-east", "20", 20), ("us-east", "100", 100), ("us-east", "", 5),
    ]  # fmt: skip
    assert body["phases"][0]["min_success_ratio"] == 0.9 and body["phases"][0]["evidence"] is None

    body = bob.post(f"waves/{wave.name}/plan/start").json()
    assert body["status"] == "running" and body["current_phase"] == 1
    first = body["phases"][0]
    assert first["status"] == "watching" and first["rollout"] and first["evidence"]["staged"] == 5
    assert {g["key"]: g["met"] for g in first["evidence"]["gates"]} == {
        "wait": False, "min_reporting": False, "min_success_ratio": False, "max_failure_ratio": True, "max_unhealthy": True,
    }  # fmt: skip
    assert [d["kind"] for d in body["decisions"]] == ["set", "start", "rollout"]
    assert body["forecast"]["completion_at"] is None and "no device" in body["forecast"]["basis"]

    # everyone in the factory may watch
    for name in ("carol", "dave"):
        assert as_user(name).get(f"waves/{wave.name}/plan").json()["current_phase"] == 1
    assert_error(as_user("eve").get(f"waves/{wave.name}/plan"), 403, "forbidden")


def test_gates_and_decisions_through_the_api(as_user, factory, alice, fleet100, wave):
    bob = as_user("bob")
    phases = [
        {"group": "canary", "wait_minutes": 0, "min_success_ratio": "80%", "advance": "approval", "approver_must_differ": True},
        {"group": "beta", "max_failure_ratio": 0.1},
    ]
    assert put(bob, f"waves/{wave.name}/plan", {"phases": phases}).status_code == 200
    bob.post(f"waves/{wave.name}/plan/start")
    fleet = Fleet(factory, wave)
    fleet.update(fleet.staged(1), timezone.now())
    assert plan_evaluate(plan=plan_get(wave=wave), now=timezone.now() + timedelta(minutes=1)).outcome == "awaiting-approval"
    assert_error(bob.post(f"waves/{wave.name}/plan/approve", {"reason": "mine"}), 403, "forbidden")
    assert_error(as_user("carol").post(f"waves/{wave.name}/plan/approve", {"reason": "qa ok"}), 403, "forbidden")
    assert_error(as_user("alice").post(f"waves/{wave.name}/plan/approve", {}), 400, "invalid")
    body = as_user("alice").post(f"waves/{wave.name}/plan/approve", {"reason": "canaries fine"}).json()
    approval = next(d for d in body["decisions"] if d["kind"] == "approve")
    assert approval["actor"] == "alice" and approval["reason"] == "canaries fine" and approval["phase"] == 1
    assert approval["evidence"]["updated"] == 5
    assert body["phases"][1]["status"] == "watching"

    assert bob.post(f"waves/{wave.name}/plan/pause", {"reason": "freeze"}).json()["status"] == "paused"
    assert_error(bob.post(f"waves/{wave.name}/plan/pause"), 409, "conflict")
    assert bob.post(f"waves/{wave.name}/plan/resume").json()["status"] == "running"
    body = bob.post(f"waves/{wave.name}/plan/cancel", {"reason": "bad build"}).json()
    assert body["status"] == "canceled" and Wave.objects.get(pk=wave.pk).status == "canceled"


def test_plan_input_errors_are_clear_and_change_nothing(as_user, fleet100, wave):
    bob = as_user("bob")
    path = f"waves/{wave.name}/plan"
    assert_error(put(bob, path, {"phases": [{"group": "canary", "wait": 5}]}), 400, "invalid")
    body = assert_error(put(bob, path, {"phases": [{"group": "nope"}]}), 400, "invalid")
    assert body["detail"] == "Phase 1: device group nope does not exist"
    assert "not a number between 0 and 1" in assert_error(put(bob, path, {"phases": [{"limit": 5, "min_success_ratio": "most"}]}), 400)["detail"]
    assert_error(put(bob, path, {"phases": [{"limit": 5, "min_success_ratio": 2}]}), 400, "invalid")
    assert_error(put(bob, path, {}), 400, "invalid")
    assert_error(put(bob, path, {"phases": [{"limit": 5}], "template": "x"}), 400, "invalid")
    assert_error(put(as_user("carol"), path, {"phases": [{"limit": 5}]}), 403, "forbidden")
    assert_error(put(bob, "waves/nope/plan", {"phases": [{"limit": 5}]}), 404, "not_found")
    assert_error(bob.get(path), 404, "not_found")
    assert_error(bob.post(f"{path}/start"), 404, "not_found")
    assert not RolloutPlan.objects.exists()


def test_templates_through_the_api(as_user, factory, us_east, wave):
    bob = as_user("bob")
    phases = [{"name": "{group} canary", "group": "{group}", "limit": 2, "wait_minutes": 15}, {"name": "{group} rest", "group": "{group}"}]
    response = bob.post("plan-templates/", {"name": "canary then all", "phases": phases})
    assert response.status_code == 201, response.content
    assert_error(bob.post("plan-templates/", {"name": "canary then all", "phases": phases}), 409, "conflict")
    assert_error(as_user("dave").post("plan-templates/", {"name": "mine", "phases": phases}), 403, "forbidden")
    assert [t["name"] for t in as_user("carol").get("plan-templates/").json()] == ["canary then all"]
    body = put(bob, f"waves/{wave.name}/plan", {"template": "canary then all", "groups": ["us-east", "us-west"]}).json()
    assert [p["name"] for p in body["phases"]] == ["us-east canary", "us-east rest", "us-west canary", "us-west rest"]
    assert bob.post("plan-templates/", {"name": "from the wave", "wave": wave.name}).status_code == 201
    assert bob.get("plan-templates/from the wave").json()["phases"][2]["group"] == "us-west"
    assert bob.delete("plan-templates/canary then all").status_code == 204
    assert_error(bob.get("plan-templates/canary then all"), 404, "not_found")


def test_template_and_phase_names_are_checked_at_the_api_and_nothing_changes(as_user, factory, us_east, wave):
    bob = as_user("bob")
    for name in ("canary\r\nthen all", "esc\x1b[31m", "a/b"):
        body = assert_error(bob.post("plan-templates/", {"name": name, "phases": [{"group": "{group}"}]}), 400, "invalid")
        assert "A template name may" in body["detail"]
    body = assert_error(put(bob, f"waves/{wave.name}/plan", {"phases": [{"name": "canary\nX-Forged: 1", "group": "us-east"}]}), 400, "invalid")
    assert "A phase name may" in body["detail"]
    assert not PlanTemplate.objects.exists() and not RolloutPlan.objects.exists()


def test_the_plan_paths_are_in_the_openapi_schema(client):
    paths = client.get(f"{API}/openapi.json").json()["paths"]
    for path in ("/waves/{wave}/plan", "/waves/{wave}/plan/approve", "/plan-templates/"):
        assert f"{API}/factories/{{factory}}{path}" in paths


def test_pace_and_windows_through_the_api(as_user, factory, fleet100, wave):
    bob = as_user("bob")
    path = f"waves/{wave.name}/plan"
    payload = {
        "phases": [{"group": "beta", "pace_per_minute": 5, "wait_minutes": 0}, {"limit": 10, "pace_start": 2, "pace_factor": 2, "pace_ceiling": 8}],
        "windows": ["mon-fri 00:00-00:00", {"days": ["sat", "sun"], "start": "00:00", "end": "00:00"}],
        "timezone": "Europe/Berlin",
        "group_windows": {"canary": "sat 00:00-06:00"},
    }
    body = put(bob, path, payload).json()
    assert body["windows"][0] == {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "00:00", "end": "00:00"}
    assert body["timezone"] == "Europe/Berlin" and body["group_windows"]["canary"][0]["days"] == ["sat"]
    assert body["windows_summary"].startswith("mon-fri 00:00-00:00; sat,sun 00:00-00:00 (Europe/Berlin)")
    assert [p["pace"] for p in body["phases"]] == ["5 a minute", "2, x2 each minute, up to 8"]
    body = bob.post(f"{path}/start").json()
    first = body["phases"][0]
    assert first["staged_count"] == 5 and first["pace_progress"] == "staged 5 at 5 a minute" and not first["batches_done"]
    assert first["evidence"]["staged"] == 5 and body["next_opening"] is not None
    # bad input: a clear message, nothing changed
    bob.post(f"{path}/pause")
    detail = assert_error(put(bob, path, {**payload, "timezone": "Nowhere/City"}), 400, "invalid")["detail"]
    assert "Unknown time zone 'Nowhere/City'" in detail
    assert_error(put(bob, path, {**payload, "windows": "funday 01:00-02:00"}), 400, "invalid")
    assert_error(put(bob, path, {"phases": [{"group": "beta", "pace_per_minute": 5, "pace_start": 2, "pace_factor": 2}]}), 400, "invalid")
    assert_error(put(bob, path, {"phases": [{"group": "beta", "pace_start": 2, "pace_factor": 1}]}), 400, "invalid")
    assert plan_get(wave=wave).timezone == "Europe/Berlin"


def test_pace_and_windows_are_in_the_openapi_schema(client):
    schemas = client.get(f"{API}/openapi.json").json()["components"]["schemas"]
    assert {"pace_per_minute", "pace_start", "pace_factor", "pace_ceiling"} <= set(schemas["PhaseIn"]["properties"])
    assert {"windows", "timezone", "group_windows"} <= set(schemas["PlanSetIn"]["properties"])
    assert {"windows_summary", "next_opening"} <= set(schemas["PlanOut"]["properties"])
