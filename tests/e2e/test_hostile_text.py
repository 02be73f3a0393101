"""Device and user text in a real Chromium: a failure reason and a group name written as markup
show on the wave page's charts as the text they are, never as a link or bold type."""
import pytest
from django.utils import timezone
from playwright.sync_api import expect

from devices.checkins import events_write
from devices.fleet import fleet_seed
from devices.models import Device
from factory.tuf.services.repository import ci_build_publish
from tests.tuf_helpers import offline_targets_key
from waves.services import wave_init, wave_rollout, wave_sign

from .test_live_status import HWIDS, TAG, aggregate

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REASON = '<a href="https://evil.example/">x</a><b>bold</b>'
GROUP = "<b>grp</b><a/href='https://evil.example/'>g</a>"  # group names have no spaces

LINKS_TO_EVIL = """(id) => Array.from(document.querySelectorAll(`#${id} a`))
  .filter((a) => (a.getAttribute("href") || a.getAttribute("xlink:href") || "").includes("evil.example")).length"""
BOLD_TEXT = """(id) => Array.from(document.querySelectorAll(`#${id} tspan`))
  .filter((t) => (t.getAttribute("style") || "").includes("bold")).map((t) => t.textContent)"""


@pytest.fixture
def failed_wave(factory, bob, settings):
    settings.BREAKWATER_STATUS_INTERVAL_SECONDS = 1
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    fleet_seed(factory=factory, tag=TAG, groups={GROUP: 3}, version=41, hardware_ids=HWIDS)
    key_archive = offline_targets_key(factory=factory, actor=bob)
    wave = wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag=TAG)
    wave = wave_sign(wave=wave, actor=bob, key_archive=key_archive)
    wave_rollout(wave=wave, actor=bob, group=GROUP)
    now = timezone.now().isoformat()
    events_write(
        [
            {"factory_id": d.factory_id, "device_id": d.id, "event_type": "install-completed", "target_version": 42, "success": False, "detail": REASON, "reported_at": now}
            for d in Device.objects.filter(factory=factory, group__name=GROUP)
        ]
    )
    aggregate(wave)
    return wave


def test_a_failure_reason_and_a_group_name_written_as_markup_show_as_text(page, live_server, dave, failed_wave, shot):
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill("dave")
    page.get_by_label("Password").fill("dave-pass-1")
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{live_server.url}/waves/{failed_wave.name}/")
    expect(page.locator("#wave-live")).to_contain_text("Sampled at")
    for chart in ("wave-chart-failures", "wave-chart-groups", "wave-chart-versions", "wave-chart-progress"):
        # Charts below the first draw as they scroll into view.
        page.locator(f"#{chart}").scroll_into_view_if_needed()
        page.wait_for_function(f"() => document.querySelector('#{chart} .main-svg') !== null", timeout=20_000)

    failures = page.locator("#wave-chart-failures")
    expect(failures).to_contain_text(REASON)
    assert page.evaluate(LINKS_TO_EVIL, "wave-chart-failures") == 0
    assert page.evaluate(BOLD_TEXT, "wave-chart-failures") == ["by reason", "by hardware ID", "by starting version"]  # the panels' own titles

    for chart in ("wave-chart-groups", "wave-chart-versions", "wave-chart-progress"):
        # The progress chart's phase label is cut to fit (the whole text shows on hover).
        expect(page.locator(f"#{chart}")).to_contain_text(GROUP if chart != "wave-chart-progress" else f"#1 {GROUP}"[:23])
        assert page.evaluate(LINKS_TO_EVIL, chart) == 0 and page.evaluate(BOLD_TEXT, chart) == [], chart

    # The hover label names the version from the trace's name, and the group as text.
    page.evaluate("() => window.Plotly.Fx.hover('wave-chart-versions', [{curveNumber: 0, pointNumber: 0}])")
    hover = page.locator("#wave-chart-versions .hoverlayer")
    expect(hover).to_contain_text(f"{GROUP}: 3 on v41")
    assert page.evaluate(LINKS_TO_EVIL, "wave-chart-versions") == 0
    shot(page, "hostile-text-wave")
