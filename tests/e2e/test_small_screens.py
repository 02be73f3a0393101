"""The dashboard on a phone, in a real Chromium at 360 and 390 px wide (and on a laptop): every
section of the main navigation can be seen and tapped, a command box shows its whole command and
copies it, and no page scrolls sideways (wide tables scroll inside their own box)."""
import re

import pytest
from playwright.sync_api import expect

from devices.fleet import fleet_seed
from devices.models import Device
from factory.tuf.services.repository import ci_build_publish
from tests.tuf_helpers import offline_targets_key
from waves import status, tasks
from waves.services import wave_init, wave_rollout, wave_sign

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TAG = "production"
LAB_TAG = "lab-rack-2"
HWIDS = ["intel-corei7-64", "raspberrypi4-64"]
# The longest name a wave can have, so the sign command is as long as it gets.
UNSIGNED = "v2.1-security-update-for-the-raspberrypi4-lab-rack-number-two-x"
SECTIONS = ["Waves", "CI builds", "Device lists", "Devices", "Groups", "Status", "Audit log", "Keys"]

# Two common phone widths, and a laptop's, where nothing may have moved.
WIDTHS = [360, 390, 1366]
PAGE_OVERFLOW = "document.documentElement.scrollWidth - window.innerWidth"


@pytest.fixture
def waves_fleet(factory, bob):
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG, LAB_TAG])
    fleet_seed(factory=factory, tag=TAG, groups={"canary": 5, "beta-testers-europe": 20}, ungrouped=25, version=41, hardware_ids=HWIDS)
    key_archive = offline_targets_key(factory=factory, actor=bob)
    active = wave_sign(wave=wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag=TAG), actor=bob, key_archive=key_archive)
    wave_rollout(wave=active, actor=bob, group="canary")
    wave_rollout(wave=active, actor=bob, group="beta-testers-europe", limit="5")
    # A sample, so the wave page draws its live charts as it does in production.
    tasks.wave_status_aggregate.apply(args=(active.id, status.status_bucket()))
    unsigned = wave_init(factory=factory, actor=bob, name=UNSIGNED, version=42, tag=LAB_TAG)
    return active, unsigned


def sign_in(page, live_server):
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill("bob")
    page.get_by_label("Password").fill("bob-pass-1")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".role-badge")).to_be_visible()


def in_viewport(page, locator):
    box = locator.bounding_box()
    width = page.viewport_size["width"]
    return box is not None and box["width"] > 0 and box["x"] >= 0 and box["x"] + box["width"] <= width


@pytest.mark.parametrize("width", WIDTHS)
def test_every_section_of_the_navigation_is_on_screen_and_opens(page, live_server, bob, waves_fleet, width, shot):
    page.set_viewport_size({"width": width, "height": 780})
    sign_in(page, live_server)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link")).to_have_text(SECTIONS)
    shot(page, f"width-{width}-nav", full_page=False)
    assert nav.evaluate("el => el.scrollWidth <= el.clientWidth"), "the navigation scrolls sideways"
    # Signing in opens Waves: it is visited last, so every click leaves the section it is on.
    for name in SECTIONS[1:] + SECTIONS[:1]:
        link = nav.get_by_role("link", name=name, exact=True)
        expect(link).to_be_visible()
        assert in_viewport(page, link), f"{name} is not within the {width} px window: {link.bounding_box()}"
        href = link.get_attribute("href")
        link.click()
        # The section opens (htmx swaps the page in) and the navigation marks it as the current one.
        expect(page).to_have_url(live_server.url + href)
        expect(nav.get_by_role("link", name=name, exact=True)).to_have_attribute("aria-current", "page")
        expect(page.locator("main h1")).to_be_visible()
    assert in_viewport(page, page.get_by_role("button", name="Sign out"))
    assert in_viewport(page, page.locator(".role-badge"))


@pytest.mark.parametrize("width", WIDTHS)
def test_the_sign_locally_command_shows_whole(page, live_server, bob, waves_fleet, width, shot):
    page.set_viewport_size({"width": width, "height": 780})
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/waves/{UNSIGNED}/")
    command = page.locator("pre.cli", has_text="breakwater waves sign")
    expect(command).to_have_text(f"breakwater waves sign {UNSIGNED} -k /absolute/path/to/targets.only.key.tgz")
    command.scroll_into_view_if_needed()
    shot(page, f"width-{width}-sign-command", full_page=False)
    assert command.evaluate("el => el.scrollWidth <= el.clientWidth"), "the command is cut: it scrolls inside its box"
    assert in_viewport(page, command)
    assert page.evaluate(PAGE_OVERFLOW) <= 0


def test_the_copy_button_puts_the_whole_sign_command_on_the_clipboard(page, live_server, bob, waves_fleet):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page.set_viewport_size({"width": 360, "height": 780})
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/waves/{UNSIGNED}/")
    page.get_by_role("button", name="Copy command").click()
    wanted = f"breakwater waves sign {UNSIGNED} -k /absolute/path/to/targets.only.key.tgz"
    page.wait_for_function("wanted => navigator.clipboard.readText().then((text) => text === wanted)", arg=wanted)


@pytest.mark.parametrize("width", WIDTHS)
def test_no_page_scrolls_sideways(page, live_server, factory, bob, waves_fleet, width, shot):
    active, _ = waves_fleet
    device = Device.objects.filter(factory=factory, group__name="canary").first()
    page.set_viewport_size({"width": width, "height": 780})
    sign_in(page, live_server)
    pages = {
        "wave-list": "/waves/",
        "wave-detail": f"/waves/{active.name}/",
        "wave-unsigned": f"/waves/{UNSIGNED}/",
        "devices": "/devices/",
        "device-detail": f"/devices/{device.uuid}/",
        "status": "/status/",
        "groups": "/devices/groups/",
        "builds": "/builds/",
        "lists": "/waves/lists/",
        "audit": "/audit/",
        "keys": "/keys/",
        "wave-create": "/waves/new/",
    }
    overflowing = {}
    for name, path in pages.items():
        page.goto(f"{live_server.url}{path}")
        page.wait_for_load_state("load")
        if name == "wave-detail":
            # The live charts are drawn once plotly.js has arrived after the load event.
            page.wait_for_function("() => document.querySelector('#wave-live .main-svg') !== null")
        overflow = page.evaluate(PAGE_OVERFLOW)
        if overflow > 0:
            overflowing[name] = overflow
        shot(page, f"width-{width}-{name}")
    assert overflowing == {}, f"pages wider than the {width} px window (extra px): {overflowing}"
