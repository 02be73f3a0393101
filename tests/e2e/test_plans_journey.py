"""A release manager plans the seed's large-fleet example (us-east: 5, then 20, then 100, then the
rest) in a real Chromium, starts it, watches it advance, and meets the halt banner when the
next group fails. The scheduler is driven by the test with chosen times."""
from datetime import timedelta

import pytest
from playwright.sync_api import expect

from devices.fleet import fleet_load_for_benchmark
from factory.tuf.services.repository import ci_build_publish
from tests.tuf_helpers import offline_targets_key
from tests.waves.plan_devices import Fleet
from waves.models import PlanPhase, Rollout
from waves.plans.selectors import plan_get
from waves.plans.services import plan_evaluate
from waves.services import wave_init, wave_sign

from .test_journeys import no_dialogs, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
TAG = "production"


@pytest.fixture
def us_east_wave(factory, bob):
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=["intel-corei7-64"], tags=[TAG])
    fleet_load_for_benchmark(factory=factory, tag=TAG, groups={"us-east": 140, "us-west": 20}, version=41)
    archive = offline_targets_key(factory=factory, actor=bob)
    return wave_sign(wave=wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag=TAG), actor=bob, key_archive=archive)


def evaluate_after(wave, position, minutes):
    start = PlanPhase.objects.get(plan__wave=wave, position=position).started_at
    return plan_evaluate(plan=plan_get(wave=wave), now=start + timedelta(minutes=minutes))


def test_the_large_fleet_example_from_the_dashboard(page, live_server, factory, bob, us_east_wave, shot):
    wave = us_east_wave
    opened = no_dialogs(page)
    sign_in(page, live_server, "bob")
    page.goto(f"{live_server.url}/waves/{wave.name}/")
    page.get_by_role("link", name="Plan the rollout").click()
    expect(page.get_by_role("heading", name=f"Plan the rollout of {wave.name}")).to_be_visible()

    example = page.locator("form", has=page.get_by_role("heading", name="The large-fleet example"))
    example.get_by_label("Group", exact=True).select_option("us-east")
    example.get_by_label("Wait after each phase (min)").fill("30")
    example.get_by_role("button", name="Fill in the phases").click()
    expect(page.get_by_text("Filled in the large-fleet example for group us-east")).to_be_visible()
    expect(page.locator(".plan-editor-phase")).to_have_count(4)
    shot(page, "plan-01-editor-filled")
    page.get_by_role("button", name="Save plan").click()

    expect(page.get_by_role("heading", name=f"Rollout plan of {wave.name}")).to_be_visible()
    page.get_by_role("button", name="Start plan").click()
    expect(page.get_by_text("Plan started")).to_be_visible()
    expect(page.locator("#phase-1 .plan-counts")).to_contain_text("5 staged")

    fleet = Fleet(factory, wave)
    for position in (1, 2):
        start = PlanPhase.objects.get(plan__wave=wave, position=position).started_at
        fleet.update(fleet.staged(position), start + timedelta(minutes=5))
        fleet.checkin_all(start + timedelta(minutes=30))
        assert evaluate_after(wave, position, 30).outcome == "advanced"
    page.reload()
    expect(page.locator("#phase-3 .plan-counts")).to_contain_text("100 staged")
    expect(page.locator("#phase-1 .pill.phase-status-passed")).to_be_visible()
    shot(page, "plan-02-timeline-running")

    # the third chunk goes badly: the plan halts and the wave's page says so
    start = PlanPhase.objects.get(plan__wave=wave, position=3).started_at
    fleet.update(fleet.staged(3), start + timedelta(minutes=5), fail_rate=0.2)
    assert evaluate_after(wave, 3, 6).outcome == "halted"
    page.goto(f"{live_server.url}/waves/{wave.name}/")
    banner = page.locator(".plan-banner.halted")
    expect(banner).to_contain_text("Rollout plan halted.")
    expect(banner).to_contain_text("Phase 3 (us-east: 100 more) failed its gates")
    shot(page, "plan-03-halt-banner")
    cancel = banner.get_by_role("button", name="Cancel wave")
    expect(cancel).to_be_disabled()
    banner.get_by_label(f"Type {wave.name} to cancel the wave").fill(wave.name)
    expect(cancel).to_be_enabled()
    cancel.click()
    expect(page.get_by_text("Wave canceled")).to_be_visible()
    assert plan_get(wave=wave).status == "canceled"
    assert [r.device_count for r in Rollout.objects.filter(wave=wave)] == [5, 20, 100]
    assert opened == []
