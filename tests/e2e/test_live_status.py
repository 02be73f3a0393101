"""The live wave status in a real Chromium: devices report, the aggregation runs (as beat would
run it), and the wave's chart and numbers change without a page reload, keeping the user's zoom."""
import time

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from devices.checkins import Checkin, checkins_write, events_write
from devices.fleet import fleet_seed
from devices.models import Device
from factory.tuf.services.repository import ci_build_publish
from tests.tuf_helpers import offline_targets_key
from waves import status, tasks
from waves.services import wave_init, wave_rollout, wave_sign

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TAG = "production"
HWIDS = ["intel-corei7-64", "raspberrypi4-64"]


@pytest.fixture
def watched_wave(factory, bob, settings):
    # Sample and poll every second so the test does not wait for the default 15 s.
    settings.BREAKWATER_STATUS_INTERVAL_SECONDS = 1
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    fleet_seed(factory=factory, tag=TAG, groups={"canary": 5, "beta": 20}, ungrouped=25, version=41, hardware_ids=HWIDS)
    key_archive = offline_targets_key(factory=factory, actor=bob)
    wave = wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag=TAG)
    wave = wave_sign(wave=wave, actor=bob, key_archive=key_archive)
    wave_rollout(wave=wave, actor=bob, group="canary")
    aggregate(wave)
    return wave


def aggregate(wave):
    """One beat tick for this wave: a sample for a new interval."""
    for _ in range(30):
        if tasks.wave_status_aggregate.apply(args=(wave.id, status.status_bucket())).get() == "created":
            return
        time.sleep(0.2)
    raise AssertionError("no new status interval within 6 s")


def devices_report(devices, *, updated, failed):
    """What the gateway's flusher writes when devices report progress and check in."""
    now = timezone.now()
    rows, checkins = [], {}
    for device in devices[:updated]:
        for step in ("download-started", "download-completed", "install-started", "install-applied"):
            rows.append({"factory_id": device.factory_id, "device_id": device.id, "event_type": step, "target_version": 42, "reported_at": now.isoformat()})
        rows.append({"factory_id": device.factory_id, "device_id": device.id, "event_type": "install-completed", "target_version": 42, "success": True, "reported_at": now.isoformat()})
        checkins[device.id] = Checkin(seen=now.timestamp(), target_name=f"{device.hardware_id}-lmp-42", target_version=42)
    for device in devices[updated : updated + failed]:
        rows.append(
            {"factory_id": device.factory_id, "device_id": device.id, "event_type": "install-completed", "target_version": 42, "success": False, "detail": "no space left on device", "reported_at": now.isoformat()}
        )
    events_write(rows)
    checkins_write(checkins)


UPDATED_NOW = """() => {
  const el = document.getElementById("wave-chart-progress");
  const trace = el && el.data && el.data.find((t) => t.name === "updated");
  return trace ? trace.y[trace.y.length - 1] : null;
}"""


def test_the_wave_chart_follows_device_reports_without_a_reload(page, live_server, factory, dave, watched_wave, shot):
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill("dave")
    page.get_by_label("Password").fill("dave-pass-1")
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{live_server.url}/waves/{watched_wave.name}/")

    live = page.locator("#wave-live")
    expect(live).to_contain_text("Sampled at")
    page.wait_for_function("() => document.querySelector('#wave-chart-progress .main-svg') !== null")
    assert page.evaluate(UPDATED_NOW) == 0
    # The first chart draws at once; the rest wait until they scroll into view.
    assert page.evaluate("() => document.querySelector('#wave-chart-online .main-svg') === null")
    page.locator("#wave-chart-online").scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelector('#wave-chart-online .main-svg') !== null", timeout=20_000)
    page.locator("#wave-chart-progress").scroll_into_view_if_needed()
    expect(live.locator('[data-state="scheduled"] .n')).to_have_text("5")

    # The user zooms into the progress chart; a reload would lose this marker and the zoom.
    page.evaluate(
        """() => {
          window.__sameDocument = true;
          const el = document.getElementById("wave-chart-progress");
          const range = el.layout.xaxis.range;
          return window.Plotly.relayout(el, {"xaxis.range": [range[0], range[1]], "yaxis.range": [0, 40]});
        }"""
    )

    devices_report(list(Device.objects.filter(group__name="canary").order_by("name")), updated=3, failed=1)
    aggregate(watched_wave)

    page.wait_for_function(f"() => ({UPDATED_NOW})() === 3", timeout=20_000)
    expect(live.locator('[data-state="updated"] .n')).to_have_text("3")
    expect(live.locator('[data-state="failed"] .n')).to_have_text("1")
    assert page.evaluate("() => window.__sameDocument === true")  # no reload happened
    assert page.evaluate("() => document.getElementById('wave-chart-progress').layout.yaxis.range") == [0, 40]  # zoom kept
    page.locator("#wave-chart-failures").scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelector('#wave-chart-failures .main-svg') !== null", timeout=20_000)
    failures = page.evaluate("() => document.getElementById('wave-chart-failures').data[0].y")
    assert failures == ["no space left on device"]
    shot(page, "live-wave-status")


def test_the_factory_page_draws_its_fleet_charts(page, live_server, factory, dave, watched_wave, shot):
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill("dave")
    page.get_by_label("Password").fill("dave-pass-1")
    page.get_by_role("button", name="Sign in").click()
    # Reach the page through the navigation (an htmx swap): plotly.js is fetched then.
    page.get_by_role("link", name="Status").click()
    page.wait_for_function("() => document.querySelector('#factory-chart-versions .main-svg') !== null", timeout=20_000)
    names = page.evaluate("() => document.getElementById('factory-chart-versions').data.map((t) => t.name)")
    assert names == ["v41"]
    expect(page.locator("#factory-live")).to_contain_text("v2.0-update")
    shot(page, "live-factory-status")


def test_plotly_is_fetched_only_once_the_wave_page_has_painted(page, live_server, factory, dave, watched_wave):
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill("dave")
    page.get_by_label("Password").fill("dave-pass-1")
    page.get_by_role("button", name="Sign in").click()
    # Twice: the second load finds plotly.js in the browser's cache, where it used to be parsed
    # before the first frame was on the screen.
    for _ in range(2):
        page.goto(f"{live_server.url}/waves/{watched_wave.name}/")
        page.wait_for_function("() => document.querySelector('#wave-chart-progress .main-svg') !== null", timeout=20_000)
        painted, requested = page.evaluate(
            """() => [
              performance.getEntriesByName("first-contentful-paint")[0].startTime,
              performance.getEntriesByType("resource").find((r) => r.name.includes("/plotly.min.js")).startTime,
            ]"""
        )
        assert requested >= painted, f"plotly.js was requested at {requested:.0f} ms, before the first paint at {painted:.0f} ms"
