"""Dashboard pages for devices and groups: the filtered, keyset-paged fleet list, a device's
page, and group management (create, rename, delete, bulk assign) with role checks."""
import re
import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from devices.fleet import fleet_seed
from devices.models import Device, DeviceEvent, DeviceGroup
from factory.models import AuditEntry
from tests.factory.test_views import hx, login


@pytest.fixture
def fleet(factory):
    fleet_seed(factory=factory, tag="production", groups={"canary": 3, "beta": 4}, ungrouped=2, test_devices=2, version=41)
    return Device.objects.filter(factory=factory)


def names(response):
    """The device names the page links to, in the order the page shows them (an unordered query
    returns rows in whatever order the database finds them)."""
    html = response.content.decode()
    shown = [(html.find(f">{name}</a>"), name) for name in Device.objects.values_list("name", flat=True)]
    return [name for position, name in sorted(shown) if position >= 0]


@pytest.mark.django_db
def test_device_list_page_and_fragment(client, dave, fleet):
    page = login(client, dave).get(reverse("device-list"))
    assert page.status_code == 200
    assert b"<html" in page.content and b'id="device-results"' in page.content
    assert len(names(page)) == 11
    assert b"11 devices match" in page.content

    fragment = client.get(reverse("device-list"), {"group": DeviceGroup.objects.get(name="canary").id}, **hx("device-results"))
    assert fragment.status_code == 200
    assert b"<html" not in fragment.content and b"<form" not in fragment.content
    assert sorted(names(fragment)) == ["canary-0001", "canary-0002", "canary-0003"]
    assert "HX-Request" in fragment["Vary"]


@pytest.mark.django_db
def test_device_list_filters(client, dave, fleet, factory):
    login(client, dave)
    assert sorted(names(client.get(reverse("device-list"), {"kind": "test"}))) == ["test-0001", "test-0002"]
    assert sorted(names(client.get(reverse("device-list"), {"group": "none", "kind": "production"}))) == ["prod-0001", "prod-0002"]
    assert names(client.get(reverse("device-list"), {"version": 40})) == []
    assert len(names(client.get(reverse("device-list"), {"version": 41}))) == 11
    assert names(client.get(reverse("device-list"), {"tag": "production", "q": "beta-000"})) == ["beta-0001", "beta-0002", "beta-0003", "beta-0004"]

    stale = fleet.get(name="beta-0001")
    Device.objects.filter(pk=stale.pk).update(last_seen=timezone.now() - timedelta(days=3))
    Device.objects.exclude(pk=stale.pk).update(last_seen=timezone.now())
    assert names(client.get(reverse("device-list"), {"online": "offline"})) == ["beta-0001"]
    assert "beta-0001" not in names(client.get(reverse("device-list"), {"online": "online"}))

    target = fleet.get(name="canary-0002")
    assert names(client.get(reverse("device-list"), {"q": str(target.uuid)})) == ["canary-0002"]


@pytest.mark.django_db
def test_device_list_active_wave_filter(client, dave, fleet, factory, bob):
    from factory.tuf.services.repository import ci_build_publish
    from tests.tuf_helpers import offline_targets_key
    from waves.services import wave_cancel, wave_init, wave_rollout, wave_sign

    ci_build_publish(factory=factory, version=42, hardware_ids=["intel-corei7-64"], tags=["production"])
    key_archive = offline_targets_key(factory=factory, actor=bob)
    wave = wave_init(factory=factory, actor=bob, name="w", version=42, tag="production")
    wave = wave_sign(wave=wave, actor=bob, key_archive=key_archive)
    wave_rollout(wave=wave, actor=bob, uuids=[str(fleet.get(name="prod-0001").uuid)])
    wave_rollout(wave=wave, actor=bob, group="canary")
    login(client, dave)
    assert sorted(names(client.get(reverse("device-list"), {"wave": "yes"}))) == ["canary-0001", "canary-0002", "canary-0003", "prod-0001"]
    assert "prod-0001" not in names(client.get(reverse("device-list"), {"wave": "no"}))
    wave_cancel(wave=wave, actor=bob)
    assert names(client.get(reverse("device-list"), {"wave": "yes"})) == []


@pytest.mark.django_db
def test_device_list_pages_by_keyset(client, dave, factory):
    fleet_seed(factory=factory, tag="production", ungrouped=120)
    login(client, dave)
    first = client.get(reverse("device-list"))
    assert names(first) == [f"prod-{i:04d}" for i in range(1, 51)]
    last_on_first = Device.objects.get(name="prod-0050")
    second = client.get(reverse("device-list"), {"after": last_on_first.pk}, **hx("device-results"))
    assert names(second) == [f"prod-{i:04d}" for i in range(51, 101)]
    first_on_second = Device.objects.get(name="prod-0051")
    back = client.get(reverse("device-list"), {"before": first_on_second.pk})
    assert names(back) == names(first)
    third = client.get(reverse("device-list"), {"after": Device.objects.get(name="prod-0100").pk})
    assert names(third) == [f"prod-{i:04d}" for i in range(101, 121)]
    assert b'rel="next"' not in third.content and b'rel="prev"' in third.content


@pytest.mark.django_db
def test_device_list_bad_filter_shows_error_at_field(client, dave, fleet):
    page = login(client, dave).get(reverse("device-list"), {"group": "999999"})
    assert page.status_code == 200
    assert b'id="id_group_error"' in page.content
    assert names(page) == []


@pytest.mark.django_db
def test_device_list_of_another_factory_is_hidden(client, eve, fleet):
    page = login(client, eve).get(reverse("device-list"), **hx("device-results"))
    assert page.status_code == 200 and names(page) == []


@pytest.mark.django_db
def test_device_page_shows_certificate_group_target_and_timeline(client, dave, fleet, factory):
    device = fleet.get(name="canary-0001")
    now = timezone.now()
    for i, kind in enumerate(["download-started", "download-completed", "install-started"]):
        DeviceEvent.objects.create(factory=factory, device=device, event_type=kind, target_name="intel-corei7-64-lmp-42", target_version=42, reported_at=now - timedelta(minutes=10 - i))
    DeviceEvent.objects.create(factory=factory, device=device, event_type="install-completed", target_version=42, success=False, detail="ostree: no space left", reported_at=now)
    page = login(client, dave).get(reverse("device-detail", args=[device.uuid]))
    assert page.status_code == 200
    html = page.content.decode()
    assert str(device.uuid) in html
    assert "canary" in html and "version 41" in html
    assert "businessCategory=production" in html  # the certificate says production
    assert f"OU={factory.name}" in html or f">{factory.name}<" in html
    assert html.index("Install completed") < html.index("Download started")  # newest first
    assert "ostree: no space left" in html and "failed" in html

    fragment = client.get(reverse("device-detail", args=[device.uuid]), **hx("device-events"))
    assert b"<html" not in fragment.content and b'id="device-events"' in fragment.content and b"Download started" in fragment.content


@pytest.mark.django_db
def test_device_page_of_another_factory_is_not_found(client, eve, fleet):
    device = fleet.first()
    assert login(client, eve).get(reverse("device-detail", args=[device.uuid])).status_code == 404
    assert client.get(reverse("device-detail", args=[uuid.uuid4()])).status_code == 404


@pytest.mark.django_db
def test_device_name_with_markup_is_shown_as_text(client, dave, factory):
    from devices.services import device_create

    device = device_create(factory=factory, uuid=uuid.uuid4(), name="<script>alert(1)</script>", tag="production", is_production=True)
    login(client, dave)
    for response in (client.get(reverse("device-list")), client.get(reverse("device-detail", args=[device.uuid]))):
        assert b"<script>alert(1)</script>" not in response.content
        assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in response.content


# --- groups ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_groups_page_counts_devices_and_hides_actions_from_support(client, dave, bob, fleet):
    page = login(client, dave).get(reverse("group-list"))
    assert page.status_code == 200
    html = page.content.decode()
    assert ">canary</a>" in html and ">beta</a>" in html
    assert "Create a group" not in html and "Rename" not in html and "Move devices" not in html

    page = login(client, bob).get(reverse("group-list"))
    html = page.content.decode()
    assert "Create a group" in html and "Rename" in html and "Move devices" in html

    fragment = client.get(reverse("group-list"), **hx("group-panels"))
    assert b"<html" not in fragment.content and b'id="group-panels"' in fragment.content


@pytest.mark.django_db
def test_group_create_plain_and_htmx(client, bob, factory):
    login(client, bob)
    response = client.post(reverse("group-create"), {"name": "eu-emea", "description": "Europe"})
    assert response.status_code == 302
    assert DeviceGroup.objects.filter(factory=factory, name="eu-emea").exists()

    response = client.post(reverse("group-create"), {"name": "apac"}, **hx("group-panels"))
    assert response.status_code == 200
    assert b"<html" not in response.content and b">apac</a>" in response.content
    assert "groups-changed" in response["HX-Trigger"]
    assert AuditEntry.objects.filter(factory=factory, action="group.create", target="apac").exists()


@pytest.mark.django_db
def test_group_create_errors_show_at_the_name_field(client, bob, factory):
    login(client, bob)
    client.post(reverse("group-create"), {"name": "canary"})
    duplicate = client.post(reverse("group-create"), {"name": "canary"}, **hx("group-panels"))
    assert duplicate.status_code == 400
    assert b'id="id_name_error"' in duplicate.content and b"already exists" in duplicate.content
    bad = client.post(reverse("group-create"), {"name": "has space"}, **hx("group-panels"))
    assert bad.status_code == 400 and b'id="id_name_error"' in bad.content
    assert DeviceGroup.objects.filter(factory=factory).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("user", ["carol", "dave"])
def test_group_changes_are_refused_for_qa_and_support(client, request, user, fleet, factory):
    login(client, request.getfixturevalue(user))
    group = DeviceGroup.objects.get(name="canary")
    assert client.post(reverse("group-create"), {"name": "x"}).status_code == 403
    assert client.post(reverse("group-create"), {"name": "x"}, **hx("group-panels")).status_code == 403
    assert client.post(reverse("group-rename", args=[group.id]), {"name": "y"}).status_code == 403
    assert client.post(reverse("group-delete", args=[group.id]), {"confirm": "canary"}).status_code == 403
    device = fleet.get(name="prod-0001")
    assert client.post(reverse("group-assign"), {"group": group.id, "uuids": str(device.uuid)}).status_code == 403
    assert sorted(DeviceGroup.objects.values_list("name", flat=True)) == ["beta", "canary"]
    assert Device.objects.get(pk=device.pk).group_id is None


@pytest.mark.django_db
def test_group_of_another_factory_cannot_be_touched(client, eve, fleet):
    group = DeviceGroup.objects.get(name="canary")
    login(client, eve)
    assert client.get(reverse("group-rename", args=[group.id])).status_code == 404
    assert client.post(reverse("group-delete", args=[group.id]), {"confirm": "canary"}).status_code == 404
    assert DeviceGroup.objects.filter(pk=group.pk).exists()


@pytest.mark.django_db
def test_group_rename(client, bob, fleet):
    group = DeviceGroup.objects.get(name="canary")
    login(client, bob)
    form = client.get(reverse("group-rename", args=[group.id]), **hx("main"))
    assert form.status_code == 200 and b"<html" not in form.content and b'value="canary"' in form.content
    taken = client.post(reverse("group-rename", args=[group.id]), {"name": "beta"})
    assert taken.status_code == 400 and b'id="id_name_error"' in taken.content
    done = client.post(reverse("group-rename", args=[group.id]), {"name": "canary-eu"}, follow=True)
    assert done.status_code == 200 and b"is now canary-eu" in done.content
    group.refresh_from_db()
    assert group.name == "canary-eu" and group.devices.count() == 3


@pytest.mark.django_db
def test_group_delete_needs_the_typed_name(client, bob, fleet):
    group = DeviceGroup.objects.get(name="beta")
    login(client, bob)
    page = client.get(reverse("group-delete", args=[group.id]))
    assert b"4 devices will have no group" in page.content
    wrong = client.post(reverse("group-delete", args=[group.id]), {"confirm": "bet"}, **hx("main"))
    assert wrong.status_code == 400 and b'id="id_confirm_error"' in wrong.content
    assert DeviceGroup.objects.filter(pk=group.pk).exists()
    done = client.post(reverse("group-delete", args=[group.id]), {"confirm": "beta"})
    assert done.status_code == 302
    assert not DeviceGroup.objects.filter(pk=group.pk).exists()
    assert Device.objects.filter(name__startswith="beta-", group__isnull=True).count() == 4


@pytest.mark.django_db
def test_bulk_assign_from_pasted_and_uploaded_lists(client, bob, fleet):
    from django.core.files.uploadedfile import SimpleUploadedFile

    canary = DeviceGroup.objects.get(name="canary")
    prods = list(fleet.filter(name__startswith="prod-"))
    unknown = uuid.uuid4()
    login(client, bob)
    response = client.post(
        reverse("group-assign"),
        {"group": canary.id, "uuids": f"{prods[0].uuid};{unknown}", "uuids_file": SimpleUploadedFile("l.lst", f"{prods[1].uuid}\r\n".encode())},
        **hx("group-panels"),
    )
    assert response.status_code == 200
    assert b"Moved 2 devices to canary" in response.content
    assert str(unknown).encode() in response.content
    assert set(canary.devices.values_list("name", flat=True)) >= {"prod-0001", "prod-0002"}

    out = client.post(reverse("group-assign"), {"group": "none", "uuids": str(prods[0].uuid)}, **hx("group-panels"))
    assert b"out of their groups" in out.content
    assert Device.objects.get(pk=prods[0].pk).group_id is None


@pytest.mark.django_db
def test_bulk_assign_errors_name_the_bad_tokens_and_change_nothing(client, bob, fleet):
    canary = DeviceGroup.objects.get(name="canary")
    device = fleet.get(name="prod-0001")
    login(client, bob)
    response = client.post(reverse("group-assign"), {"group": canary.id, "uuids": f"{device.uuid}, not-a-uuid"}, **hx("group-panels"))
    assert response.status_code == 400
    assert b'id="id_uuids_error"' in response.content and b"not-a-uuid" in response.content
    assert Device.objects.get(pk=device.pk).group_id is None
    empty = client.post(reverse("group-assign"), {"group": canary.id, "uuids": "  "})
    assert empty.status_code == 400 and b"Paste at least one device UUID" in empty.content


@pytest.mark.django_db
def test_counts_stop_at_their_cap(client, dave, fleet, monkeypatch):
    from devices import views
    from waves import device_pages

    monkeypatch.setattr(device_pages, "COUNT_CAP", 5)
    monkeypatch.setattr(views, "GROUP_COUNT_CAP", 3)
    login(client, dave)
    assert b"5+ devices match" in client.get(reverse("device-list")).content
    assert b"2 devices match" in client.get(reverse("device-list"), {"kind": "test"}).content
    groups = client.get(reverse("group-list")).content.decode()
    assert re.search(r">beta</a></td>\s*<td>[^<]*</td>\s*<td class=\"num\">3\+</td>", groups)
    assert re.search(r">canary</a></td>\s*<td>[^<]*</td>\s*<td class=\"num\">3</td>", groups)
