"""User journeys in a real Chromium: a release manager's wave from creation to completion, QA's
review of a rollout list, support's read-only watch, and markup in device names shown as text."""
import re
import uuid

import pytest
from playwright.sync_api import expect

from devices.fleet import fleet_seed
from devices.models import Device, DeviceEvent
from devices.services import device_create
from factory.tuf.services.repository import ci_build_publish
from tests.tuf_helpers import offline_targets_key
from waves.models import SavedDeviceList, Wave, WaveDevice
from waves.selectors import offline_cutoff
from waves.services import wave_init, wave_rollout, wave_sign

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORDS = {"alice": "alice-pass-1", "bob": "bob-pass-1", "carol": "carol-pass-1", "dave": "dave-pass-1"}
TAG = "production"


@pytest.fixture
def fleet(factory):
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=["intel-corei7-64", "raspberrypi4-64"], tags=[TAG])
    fleet_seed(factory=factory, tag=TAG, groups={"canary": 5, "beta": 20}, ungrouped=25, test_devices=5, version=41, online_ratio=0.8)
    return Device.objects.filter(factory=factory)


@pytest.fixture
def active_wave(factory, bob, fleet):
    key_archive = offline_targets_key(factory=factory, actor=bob)
    wave = wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag=TAG)
    return wave_sign(wave=wave, actor=bob, key_archive=key_archive)


def sign_in(page, live_server, username):
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORDS[username])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".role-badge")).to_be_visible()


def no_dialogs(page):
    """Fail on any alert(): markup from the database must never run."""
    opened = []
    page.on("dialog", lambda dialog: (opened.append(dialog.message), dialog.dismiss()))
    return opened


def test_release_manager_creates_previews_edits_rolls_out_and_completes(page, live_server, factory, bob, fleet, tmp_path, shot):
    key_archive = tmp_path / "targets.only.key.tgz"
    key_archive.write_bytes(offline_targets_key(factory=factory, actor=bob))
    opened = no_dialogs(page)
    sign_in(page, live_server, "bob")
    expect(page.locator(".role-badge")).to_have_text("Release manager")
    shot(page, "01-waves-empty")

    page.get_by_role("link", name="Create wave").click()
    page.get_by_label("Wave name").fill("v2.0-update")
    page.get_by_label("CI build").select_option("42")
    page.get_by_label("Tag", exact=True).select_option(TAG)
    page.get_by_role("button", name="Preview targets").click()
    expect(page.locator("#wave-create")).to_contain_text("raspberrypi4-64-lmp-42")
    shot(page, "02-wave-create-preview")
    page.get_by_label("Offline targets key archive (.tgz)").set_input_files(str(key_archive))
    page.get_by_role("button", name="Create wave").click()
    expect(page).to_have_url(re.compile(r"/waves/v2\.0-update/$"))
    page.wait_for_load_state("load")  # htmx is ready: the rollout steps below swap panels in place
    expect(page.locator(".messages")).to_contain_text("signed and active")
    assert Wave.objects.get(factory=factory, name="v2.0-update").status == "active"

    # preview a canary rollout (the whole group), then remove one device from the list
    page.get_by_label("Scope").select_option("canary")
    page.get_by_role("button", name="Preview rollout").click()
    panel = page.locator("#rollout-panel")
    expect(panel.locator("#preview-count")).to_have_text("5")
    expect(panel).to_contain_text("devices that join group canary later get this wave too")
    expect(page.locator("#wave-status")).to_be_visible()  # still the wave page: the panel was swapped in place
    expect(page).to_have_url(re.compile(r"/waves/v2\.0-update/rollout/[0-9a-f]+/$"))
    assert not WaveDevice.objects.exists()
    shot(page, "03-rollout-preview")
    rows = panel.locator("tr[data-uuid]")
    removed = rows.first.get_attribute("data-uuid")
    rows.first.get_by_role("button", name=re.compile("^Remove")).click()
    expect(panel.locator("#preview-count")).to_have_text("4")
    expect(panel.locator(f'tr[data-uuid="{removed}"]')).to_have_count(0)
    remaining = set(panel.locator("tr[data-uuid]").evaluate_all("rows => rows.map(r => r.dataset.uuid)"))
    assert len(remaining) == 4 and removed not in remaining

    panel.get_by_role("link", name="Roll out exactly these 4 devices…").click()
    dialog = page.get_by_role("alertdialog")
    expect(dialog).to_contain_text("Roll out v2.0-update to exactly 4 devices?")
    expect(dialog).to_contain_text("group canary")
    shot(page, "04-rollout-confirm")
    dialog.get_by_role("button", name="Yes, roll out to 4 devices").click()
    expect(page.locator(".messages")).to_contain_text("rolled out to 4 devices")
    staged = {str(u) for u in WaveDevice.objects.values_list("device__uuid", flat=True)}
    assert staged == remaining

    canary_row = page.locator("#wave-status tbody tr", has_text="canary")
    # Each device in one state: a staged one is scheduled if online; any offline one is offline,
    # staged or not (the seed has offline devices).
    cutoff = offline_cutoff()
    staged_offline = Device.objects.filter(uuid__in=staged).exclude(last_seen__gte=cutoff).count()
    group_offline = Device.objects.filter(factory=factory, group__name="canary", is_production=True).exclude(last_seen__gte=cutoff).count()
    expect(canary_row.locator("td").nth(5)).to_have_text(str(4 - staged_offline))  # scheduled
    expect(canary_row.locator("td").nth(9)).to_have_text(str(group_offline))  # offline
    expect(page.locator("#rollout-history")).to_contain_text("group canary")
    shot(page, "05-wave-detail-after-rollout")

    page.get_by_role("link", name="Complete wave…").click()
    button = page.get_by_role("button", name="Complete wave v2.0-update")
    expect(button).to_be_disabled()
    page.get_by_label("Type the wave's name to confirm").fill("v2.0-update")
    expect(button).to_be_enabled()
    shot(page, "06-complete-confirm")
    button.click()
    expect(page.locator(".page-head .status")).to_have_text("complete")
    assert Wave.objects.get(factory=factory, name="v2.0-update").status == "complete"
    shot(page, "07-wave-complete")
    assert opened == []


def test_qa_previews_and_saves_an_edited_list_but_cannot_roll_out(page, live_server, factory, carol, active_wave, shot):
    sign_in(page, live_server, "carol")
    expect(page.locator(".role-badge")).to_have_text("QA")
    page.get_by_role("link", name="v2.0-update").click()
    expect(page.get_by_role("link", name="Complete wave…")).to_have_count(0)
    expect(page.get_by_role("link", name="Cancel wave…")).to_have_count(0)

    page.get_by_label("Scope").select_option("beta")
    page.get_by_label("Limit").fill("6")
    page.get_by_role("button", name="Preview rollout").click()
    panel = page.locator("#rollout-panel")
    expect(panel.locator("#preview-count")).to_have_text("6")
    expect(panel.get_by_role("link", name=re.compile("Roll out exactly"))).to_have_count(0)
    removed = panel.locator("tr[data-uuid]").first.get_attribute("data-uuid")
    panel.locator("tr[data-uuid]").first.get_by_role("button", name=re.compile("^Remove")).click()
    expect(panel.locator("#preview-count")).to_have_text("5")
    panel.get_by_label("List name").fill("beta-phase-1")
    panel.get_by_role("button", name="Save list").click()
    expect(panel).to_contain_text("as list beta-phase-1")
    shot(page, "08-qa-preview-saved")
    saved = SavedDeviceList.objects.get(factory=factory, name="beta-phase-1")
    assert len(saved.uuids.split()) == 5 and removed not in saved.uuids

    # a forged roll-out POST with the browser's own session and CSRF token is refused
    preview_url = page.url if "/rollout/" in page.url else None
    token = re.search(r"/rollout/([0-9a-f]+)/", page.evaluate("document.body.innerHTML")).group(1)
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.request.post(
        f"{live_server.url}/waves/v2.0-update/rollout/{token}/go/",
        form={"count": "5", "digest": "0" * 32},
        headers={"X-CSRFToken": csrf, "Referer": preview_url or live_server.url},
    )
    assert response.status == 403
    assert not WaveDevice.objects.filter(wave=active_wave).exists()

    page.get_by_role("link", name="Device lists").click()
    expect(page.get_by_role("link", name="beta-phase-1", exact=True)).to_be_visible()
    shot(page, "09-device-lists")


def test_support_watches_status_and_timelines_without_action_buttons(page, live_server, factory, bob, dave, active_wave, fleet, shot):
    wave_rollout(wave=active_wave, actor=bob, group="canary")
    device = fleet.get(name="canary-0001")
    from django.utils import timezone

    DeviceEvent.objects.create(factory=factory, device=device, event_type="download-started", target_version=42, target_name="intel-corei7-64-lmp-42", reported_at=timezone.now())
    sign_in(page, live_server, "dave")
    expect(page.locator(".role-badge")).to_have_text("Support")
    expect(page.get_by_role("link", name="Create wave")).to_have_count(0)
    page.get_by_role("link", name="v2.0-update").click()
    expect(page.locator("#wave-status")).to_contain_text("canary")
    for name in ("Complete wave…", "Cancel wave…"):
        expect(page.get_by_role("link", name=name)).to_have_count(0)
    expect(page.locator("#rollout-panel")).to_have_count(0)
    shot(page, "10-support-wave")

    page.get_by_role("link", name="Devices", exact=True).click()
    page.get_by_label("Search").fill("canary-0001")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#device-results tbody tr")).to_have_count(1)
    shot(page, "11-devices-list")
    page.get_by_role("link", name="canary-0001").click()
    expect(page.locator("h1")).to_have_text("canary-0001")
    expect(page.locator("#device-events")).to_contain_text("Download started")
    expect(page.locator("main")).to_contain_text("businessCategory=production")
    shot(page, "12-device-page")

    page.get_by_role("link", name="Groups").click()
    expect(page.get_by_role("heading", name="Create a group")).to_have_count(0)
    expect(page.get_by_role("link", name=re.compile("^Rename"))).to_have_count(0)
    shot(page, "13-groups-support")
    page.get_by_role("link", name="Status", exact=True).click()
    expect(page.locator("#status-panel")).to_contain_text("production")
    shot(page, "14-factory-status")
    page.get_by_role("link", name="Audit log").click()
    expect(page.locator("#audit-results")).to_contain_text("wave.rollout")
    shot(page, "15-audit-log")


def test_device_named_script_shows_as_text(page, live_server, factory, dave, fleet, shot):
    name = "<script>alert(1)</script>"
    device = device_create(factory=factory, uuid=uuid.uuid4(), name=name, tag=TAG, is_production=True)
    opened = no_dialogs(page)
    sign_in(page, live_server, "dave")
    page.goto(f"{live_server.url}/devices/?q=%3Cscript")
    expect(page.locator("#device-results")).to_contain_text(name)
    page.get_by_role("link", name=name).click()
    expect(page.locator("h1")).to_have_text(name)
    assert page.locator("main script").count() == 0
    page.goto(f"{live_server.url}/devices/{device.uuid}/")
    expect(page.locator("h1")).to_have_text(name)
    assert opened == []


def test_pages_read_well_on_a_phone(page, live_server, factory, bob, active_wave, shot):
    wave_rollout(wave=active_wave, actor=bob, group="beta", limit="5")
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, live_server, "bob")
    page.goto(f"{live_server.url}/waves/v2.0-update/")
    expect(page.locator("h1")).to_have_text("v2.0-update")
    # nothing but the wide tables (which scroll inside their own box) is wider than the screen
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1
    shot(page, "16-phone-wave-top", full_page=False)
    page.locator("#wave-status").scroll_into_view_if_needed()
    shot(page, "17-phone-wave-status", full_page=False)
    page.goto(f"{live_server.url}/devices/")
    assert page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 1
    shot(page, "18-phone-devices", full_page=False)
    page.locator("#device-results").scroll_into_view_if_needed()
    shot(page, "19-phone-devices-table", full_page=False)
