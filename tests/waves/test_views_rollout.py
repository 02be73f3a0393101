"""The rollout phase flow in the dashboard: scope -> preview (a dry run) -> edit the list ->
roll out exactly these devices, with the roles that may and may not take each step."""
import re
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from devices.models import Device, DeviceGroup
from factory.models import AuditEntry
from tests.factory.test_views import hx, login
from waves.models import Rollout, SavedDeviceList, WaveDevice, WaveGroup


def staged(wave):
    return {str(u) for u in WaveDevice.objects.filter(wave=wave).values_list("device__uuid", flat=True)}


def preview(client, wave, data, target="rollout-panel"):
    response = client.post(reverse("rollout-preview", args=[wave.name]), data, **hx(target))
    token = None
    if "HX-Push-Url" in response:
        token = response["HX-Push-Url"].rstrip("/").rsplit("/", 1)[-1]
    return response, token


def listed(response):
    """UUIDs of the device rows in a preview table."""
    return re.findall(r'<tr data-uuid="([0-9a-f-]{36})"', response.content.decode())


def confirmation(client, wave, token):
    """What the confirmation step shows: the count and digest the roll-out form carries."""
    return confirm_fields(client.get(reverse("rollout-preview-show", args=[wave.name, token]), {"confirm": "1"}, **hx("rollout-panel")))


def confirm_fields(response):
    html = response.content.decode()
    return {
        "count": re.search(r'name="count" value="(\d+)"', html).group(1),
        "digest": re.search(r'name="digest" value="([0-9a-f]+)"', html).group(1),
    }


@pytest.mark.django_db
def test_release_manager_previews_edits_and_rolls_out_exactly_the_list(client, bob, fleet100, wave):
    login(client, bob)
    response, token = preview(client, wave, {"group": "beta", "limit": "4"})
    assert response.status_code == 200
    assert b"<html" not in response.content and b'id="rollout-panel"' in response.content
    assert b'<span class="n" id="preview-count">4</span>' in response.content
    shown = listed(response)
    assert len(shown) == 4
    assert all(Device.objects.get(uuid=u).group.name == "beta" for u in shown)
    assert not WaveDevice.objects.filter(wave=wave).exists()  # a preview changes nothing

    # remove one device, add one more UUID (a beta device) and one test device (skipped, with reason)
    removed = shown[0]
    edit = client.post(reverse("rollout-preview-edit", args=[wave.name, token]), {"remove": removed}, **hx("rollout-panel"))
    assert edit.status_code == 200 and removed not in listed(edit) and len(listed(edit)) == 3
    extra = Device.objects.filter(group__name="beta").exclude(uuid__in=shown).first()
    test_device = Device.objects.filter(is_production=False).first()
    added = client.post(
        reverse("rollout-preview-edit", args=[wave.name, token]), {"uuids": f"{extra.uuid}\n{test_device.uuid}"}, **hx("rollout-panel")
    )
    assert added.status_code == 200
    final = set(listed(added))
    assert final == set(shown[1:]) | {str(extra.uuid)}
    assert str(test_device.uuid).encode() in added.content and b"test device" in added.content

    download = client.get(reverse("rollout-preview-download", args=[wave.name, token]))
    assert set(download.content.decode().split()) == final

    confirm = client.get(reverse("rollout-preview-show", args=[wave.name, token]), {"confirm": "1"}, **hx("rollout-panel"))
    assert b"Roll out v2.0-update to exactly 4 devices?" in confirm.content
    assert b"Scope: group beta" in confirm.content
    go = client.post(reverse("rollout-perform", args=[wave.name, token]), confirm_fields(confirm), **hx("rollout-panel"))
    assert go.status_code == 200 and go["HX-Redirect"] == reverse("wave-detail", args=[wave.name])
    assert "rollout-done" in go["HX-Trigger"]
    assert staged(wave) == final
    rollout = Rollout.objects.get(wave=wave)
    assert rollout.group_name == "beta" and rollout.device_count == 4 and not rollout.full_group

    detail = client.get(reverse("wave-detail", args=[wave.name]))
    assert b"rolled out to 4 devices" in detail.content
    # the preview is spent: it cannot be rolled out twice
    assert client.post(reverse("rollout-perform", args=[wave.name, token]), confirm_fields(confirm)).status_code == 404


@pytest.mark.django_db
def test_full_group_preview_says_later_joiners_get_the_wave_and_stages_the_group(client, bob, fleet100, wave):
    login(client, bob)
    response, token = preview(client, wave, {"group": "canary"})
    assert b"devices that join group canary later get this wave too" in response.content
    assert len(listed(response)) == 5
    confirm = client.get(reverse("rollout-preview-show", args=[wave.name, token]), {"confirm": "1"})
    assert confirm.status_code == 200 and b"<html" in confirm.content  # works without JavaScript too
    assert b"every device in group canary, now and joining later" in confirm.content
    go = client.post(reverse("rollout-perform", args=[wave.name, token]), confirm_fields(confirm))
    assert go.status_code == 302
    assert WaveGroup.objects.filter(wave=wave, group__name="canary").exists()
    assert Rollout.objects.get(wave=wave).full_group


@pytest.mark.django_db
def test_editing_a_full_group_preview_turns_it_into_an_exact_list(client, bob, fleet100, wave):
    login(client, bob)
    response, token = preview(client, wave, {"group": "canary"})
    drop = listed(response)[0]
    edit = client.post(reverse("rollout-preview-edit", args=[wave.name, token]), {"remove": drop}, **hx("rollout-panel"))
    assert b"join group canary later" not in edit.content and b"edited list" in edit.content
    shown_again = client.get(reverse("rollout-preview-show", args=[wave.name, token]), {"confirm": "1"})
    assert b"to exactly 4 devices?" in shown_again.content and drop.encode() not in shown_again.content
    go = client.post(reverse("rollout-perform", args=[wave.name, token]), confirmation(client, wave, token))
    assert go.status_code == 302
    assert not WaveGroup.objects.filter(wave=wave).exists()
    assert staged(wave) == set(listed(response)) - {drop}


@pytest.mark.django_db
def test_preview_from_pasted_uploaded_and_saved_lists_reports_skipped_devices(client, bob, fleet100, wave, factory):
    prods = [str(u) for u in Device.objects.filter(is_production=True, group__isnull=True).order_by("name").values_list("uuid", flat=True)[:6]]
    unknown = str(uuid.uuid4())
    saved = SavedDeviceList.objects.create(factory=factory, name="qa", uuids="\n".join(prods[4:6]))
    login(client, bob)
    response, token = preview(
        client,
        wave,
        {
            "uuids": f"{prods[0]},{prods[1]};{unknown}",
            "uuids_file": SimpleUploadedFile("phase1.lst", f"{prods[2]}\r\n{prods[3]}\u2028".encode()),
            "saved_list": saved.id,
        },
    )
    assert response.status_code == 200
    assert set(listed(response)) == set(prods)
    assert unknown.encode() in response.content and b"unknown device" in response.content
    assert b"saved list qa" in response.content


@pytest.mark.django_db
def test_whole_fleet_percentage_preview_has_a_breakdown(client, carol, fleet100, wave):
    response, _ = preview(login(client, carol), wave, {"limit": "10%"})
    assert response.status_code == 200
    assert b'id="preview-count">10<' in response.content
    assert b"By group" in response.content and b"By current version" in response.content and b"version 41" in response.content


@pytest.mark.django_db
def test_preview_errors_are_placed_at_their_fields_and_change_nothing(client, bob, fleet100, wave):
    login(client, bob)
    bad_limit, _ = preview(client, wave, {"group": "beta", "limit": "ten"})
    assert bad_limit.status_code == 400 and b'id="id_limit_error"' in bad_limit.content
    bad_uuids, _ = preview(client, wave, {"uuids": "123, nope"})
    assert bad_uuids.status_code == 400 and b'id="id_uuids_error"' in bad_uuids.content and b"nope" in bad_uuids.content
    nothing, _ = preview(client, wave, {})
    assert nothing.status_code == 400 and b"Choose what to roll out to" in nothing.content
    assert b'id="rollout-panel"' in nothing.content and b"<html" not in nothing.content
    unknown_group, _ = preview(client, wave, {"group": "no-such-group"})
    assert unknown_group.status_code == 400 and b'id="id_group_error"' in unknown_group.content
    assert not WaveDevice.objects.filter(wave=wave).exists() and not Rollout.objects.filter(wave=wave).exists()


@pytest.mark.django_db
def test_rollout_of_a_list_edited_in_another_tab_is_refused(client, bob, fleet100, wave):
    login(client, bob)
    response, token = preview(client, wave, {"limit": "5"})
    seen = confirmation(client, wave, token)
    client.post(reverse("rollout-preview-edit", args=[wave.name, token]), {"remove": listed(response)[0]})
    stale = client.post(reverse("rollout-perform", args=[wave.name, token]), seen, **hx("rollout-panel"))
    assert stale.status_code == 409 and b"The list changed since you confirmed it" in stale.content
    assert not WaveDevice.objects.filter(wave=wave).exists()


@pytest.mark.django_db
def test_devices_staged_meanwhile_are_reported(client, bob, fleet100, wave):
    from waves.services import wave_rollout

    login(client, bob)
    response, token = preview(client, wave, {"group": "beta", "limit": "3"})
    shown = listed(response)
    seen = confirmation(client, wave, token)
    wave_rollout(wave=wave, actor=bob, uuids=[shown[0]])  # someone else, between confirmation and click
    go = client.post(reverse("rollout-perform", args=[wave.name, token]), seen, follow=True)
    assert b"1 of the 3 previewed devices were staged meanwhile" in go.content
    assert staged(wave) == set(shown)


@pytest.mark.django_db
def test_qa_previews_and_saves_an_edited_list_but_cannot_roll_out(client, carol, fleet100, wave, factory):
    login(client, carol)
    response, token = preview(client, wave, {"group": "beta", "limit": "5"})
    assert response.status_code == 200
    assert b"Roll out exactly these" not in response.content
    shown = listed(response)
    edit = client.post(reverse("rollout-preview-edit", args=[wave.name, token]), {"remove": shown[:2]}, **hx("rollout-panel"))
    assert len(listed(edit)) == 3
    saved = client.post(reverse("rollout-preview-save", args=[wave.name, token]), {"name": "beta-phase-1"}, **hx("rollout-panel"))
    assert saved.status_code == 200 and b"as list beta-phase-1" in saved.content
    assert set(SavedDeviceList.objects.get(factory=factory, name="beta-phase-1").uuids.split()) == set(shown[2:])
    assert AuditEntry.objects.filter(factory=factory, action="devicelist.create", actor_name="carol").exists()

    # the confirmation is not offered, and a forged POST is refused by the view and the service
    confirm = client.get(reverse("rollout-preview-show", args=[wave.name, token]), {"confirm": "1"})
    assert b"Yes, roll out" not in confirm.content
    import hashlib
    import json

    # the fields a release manager's confirmation would carry
    digest = hashlib.sha256(json.dumps(["beta", False, shown[2:]], separators=(",", ":")).encode()).hexdigest()[:32]
    forged = client.post(reverse("rollout-perform", args=[wave.name, token]), {"count": 3, "digest": digest})
    assert forged.status_code == 403
    assert not WaveDevice.objects.filter(wave=wave).exists()


@pytest.mark.django_db
def test_support_can_neither_preview_nor_roll_out(client, dave, bob, fleet100, wave):
    login(client, dave)
    response, _ = preview(client, wave, {"group": "beta"})
    assert response.status_code == 403
    # even with a preview token made by someone else, the preview is theirs only and the door is shut
    login(client, bob)
    _, token = preview(client, wave, {"group": "beta"})
    login(client, dave)
    assert client.get(reverse("rollout-preview-show", args=[wave.name, token])).status_code == 403
    assert client.post(reverse("rollout-perform", args=[wave.name, token]), {"count": 20, "digest": "0" * 32}).status_code == 403
    assert not WaveGroup.objects.filter(wave=wave).exists()


@pytest.mark.django_db
def test_a_preview_belongs_to_the_user_who_made_it(client, bob, alice, fleet100, wave):
    login(client, bob)
    _, token = preview(client, wave, {"group": "beta"})
    seen = confirmation(client, wave, token)
    login(client, alice)
    assert client.get(reverse("rollout-preview-show", args=[wave.name, token])).status_code == 404
    assert client.post(reverse("rollout-perform", args=[wave.name, token]), seen).status_code == 404


@pytest.mark.django_db
def test_preview_page_of_another_factory_is_not_found(client, eve, bob, fleet100, wave):
    login(client, eve)
    assert client.post(reverse("rollout-preview", args=[wave.name]), {"group": "beta"}).status_code == 404


@pytest.mark.django_db
def test_preview_of_a_completed_wave_is_refused_with_a_message(client, bob, fleet100, wave):
    from waves.services import wave_complete

    login(client, bob)
    _, token = preview(client, wave, {"group": "beta", "limit": "2"})
    wave_complete(wave=wave, actor=bob)
    page = client.get(reverse("rollout-preview-show", args=[wave.name, token]))
    assert page.status_code == 409 and b"only an active wave can be rolled out" in page.content


@pytest.mark.django_db
def test_group_with_markup_in_device_name_is_escaped_in_preview(client, bob, factory, fleet100, wave):
    from devices.services import device_create

    group = DeviceGroup.objects.get(name="canary")
    device_create(factory=factory, uuid=uuid.uuid4(), name="<script>alert(1)</script>", tag="production", is_production=True, group=group)
    response, _ = preview(login(client, bob), wave, {"group": "canary"})
    assert b"<script>alert(1)</script>" not in response.content
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in response.content


@pytest.mark.django_db
def test_pasted_uuids_can_be_removed_from_a_long_preview(client, bob, fleet100, wave):
    login(client, bob)
    response, token = preview(client, wave, {"limit": "30"})
    shown = listed(response)
    drop = shown[:12]
    edit = client.post(
        reverse("rollout-preview-edit", args=[wave.name, token]), {"uuids": "\n".join(drop), "op": "remove"}, **hx("rollout-panel")
    )
    assert edit.status_code == 200 and b'id="preview-count">18<' in edit.content
    assert not set(drop) & set(listed(edit))
    bad = client.post(reverse("rollout-preview-edit", args=[wave.name, token]), {"uuids": "zzz", "op": "remove"}, **hx("rollout-panel"))
    assert bad.status_code == 400 and b'id="id_uuids_error"' in bad.content and b'id="preview-count">18<' in bad.content
