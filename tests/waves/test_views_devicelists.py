"""QA's saved device lists: create, import from a file, edit, export, delete and use in a rollout,
through the pages and through waves.devicelists (the services behind them)."""
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from devices.models import Device
from factory.errors import ApplicationError, Conflict, Forbidden
from factory.models import AuditEntry
from tests.factory.test_views import hx, login
from waves import devicelists
from waves.models import SavedDeviceList


def some_uuids(n):
    return [str(uuid.uuid4()) for _ in range(n)]


# --- services ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_keeps_unique_canonical_uuids_and_audits(factory, carol):
    a, b = some_uuids(2)
    saved = devicelists.device_list_create(factory=factory, actor=carol, name=" canary ", uuids=f"{a.upper()};{b}|{a}")
    assert saved.name == "canary"
    assert devicelists.device_list_uuids(saved) == [a, b]
    entry = AuditEntry.objects.get(factory=factory, action="devicelist.create")
    assert entry.actor_name == "carol" and entry.details == {"devices": 2}


@pytest.mark.django_db
def test_create_rejects_bad_input_and_changes_nothing(factory, carol):
    with pytest.raises(ApplicationError, match="Not a device UUID: 'oops'"):
        devicelists.device_list_create(factory=factory, actor=carol, name="x", uuids="oops")
    with pytest.raises(ApplicationError, match="device list name is required"):
        devicelists.device_list_create(factory=factory, actor=carol, name="  ", uuids=some_uuids(1))
    with pytest.raises(ApplicationError, match="at most 10,000"):
        devicelists.device_list_create(factory=factory, actor=carol, name="big", uuids=some_uuids(10_001))
    devicelists.device_list_create(factory=factory, actor=carol, name="x")
    with pytest.raises(Conflict, match="already exists"):
        devicelists.device_list_create(factory=factory, actor=carol, name="x")
    assert SavedDeviceList.objects.filter(factory=factory).count() == 1


@pytest.mark.django_db
def test_support_cannot_edit_lists(factory, dave, carol):
    with pytest.raises(Forbidden):
        devicelists.device_list_create(factory=factory, actor=dave, name="x")
    saved = devicelists.device_list_create(factory=factory, actor=carol, name="x")
    with pytest.raises(Forbidden):
        devicelists.device_list_update(device_list=saved, actor=dave, uuids=some_uuids(1))
    with pytest.raises(Forbidden):
        devicelists.device_list_delete(device_list=saved, actor=dave)
    assert SavedDeviceList.objects.get(pk=saved.pk).uuids == ""


@pytest.mark.django_db
def test_update_renames_and_replaces_and_a_taken_name_changes_nothing(factory, carol):
    first = devicelists.device_list_create(factory=factory, actor=carol, name="one", uuids=some_uuids(1))
    devicelists.device_list_create(factory=factory, actor=carol, name="two")
    new = some_uuids(3)
    devicelists.device_list_update(device_list=first, actor=carol, name="uno", uuids=new)
    first.refresh_from_db()
    assert first.name == "uno" and devicelists.device_list_uuids(first) == new
    with pytest.raises(Conflict):
        devicelists.device_list_update(device_list=first, actor=carol, name="two", uuids=some_uuids(1))
    first.refresh_from_db()
    assert first.name == "uno" and devicelists.device_list_uuids(first) == new


# --- pages ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_index_plain_and_htmx(client, dave, carol, factory):
    devicelists.device_list_create(factory=factory, actor=carol, name="canary", uuids=some_uuids(3))
    page = login(client, dave).get(reverse("devicelist-list"))
    assert page.status_code == 200 and b">canary</a>" in page.content and b"New list" not in page.content
    fragment = client.get(reverse("devicelist-list"), **hx("main"))
    assert b"<html" not in fragment.content and b">canary</a>" in fragment.content
    assert b"New list" in login(client, carol).get(reverse("devicelist-list")).content


@pytest.mark.django_db
def test_create_from_text_and_imported_file(client, carol, factory):
    pasted, filed = some_uuids(2), some_uuids(2)
    login(client, carol)
    response = client.post(
        reverse("devicelist-create"),
        {"name": "phase1", "uuids": ",".join(pasted), "uuids_file": SimpleUploadedFile("phase1.lst", "\n".join(filed).encode())},
    )
    assert response.status_code == 302
    saved = SavedDeviceList.objects.get(factory=factory, name="phase1")
    assert devicelists.device_list_uuids(saved) == pasted + filed


@pytest.mark.django_db
def test_create_errors_at_fields(client, carol, factory):
    login(client, carol)
    bad = client.post(reverse("devicelist-create"), {"name": "x", "uuids": "nope"}, **hx("main"))
    assert bad.status_code == 400 and b'id="id_uuids_error"' in bad.content and b"nope" in bad.content
    binary = client.post(reverse("devicelist-create"), {"name": "x", "uuids_file": SimpleUploadedFile("x.lst", b"\xff\xfe\x00")})
    assert binary.status_code == 400 and b'id="id_uuids_file_error"' in binary.content
    devicelists.device_list_create(factory=factory, actor=carol, name="taken")
    taken = client.post(reverse("devicelist-create"), {"name": "taken"})
    assert taken.status_code == 400 and b'id="id_name_error"' in taken.content
    assert SavedDeviceList.objects.filter(factory=factory).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("name", ['x"; filename=evil.sh\r\nX-Evil: 1', "a\nb", "clear\x1b[2J", "a/b"])
def test_a_name_that_could_break_a_header_or_a_line_is_refused_at_the_form(client, carol, factory, name):
    saved = devicelists.device_list_create(factory=factory, actor=carol, name="kept", uuids=some_uuids(1))
    login(client, carol)
    created = client.post(reverse("devicelist-create"), {"name": name, "uuids": some_uuids(1)[0]}, **hx("main"))
    assert created.status_code == 400 and b'id="id_name_error"' in created.content
    assert b"A device list name may" in created.content
    renamed = client.post(reverse("devicelist-detail", args=[saved.id]), {"name": name, "uuids": ""})
    assert renamed.status_code == 400 and b"A device list name may" in renamed.content
    assert list(SavedDeviceList.objects.values_list("name", flat=True)) == ["kept"]
    assert devicelists.device_list_uuids(SavedDeviceList.objects.get()) == devicelists.device_list_uuids(saved)


@pytest.mark.django_db
def test_a_list_stored_under_a_hostile_name_exports_with_a_safe_header(client, carol, factory):
    # Saved before names were checked: the export still answers, with the name as one value.
    saved = SavedDeviceList.objects.create(factory=factory, name='x"; filename=evil.sh\r\nX-Evil: 1', uuids=some_uuids(1)[0], created_by=carol)
    login(client, carol)
    export = client.get(reverse("devicelist-export", args=[saved.id]))
    assert export.status_code == 200 and "X-Evil" not in export.headers
    assert export["Content-Disposition"] == 'attachment; filename="x\\"; filename=evil.sh__X-Evil: 1.lst"'


@pytest.mark.django_db
def test_edit_export_and_delete(client, carol, factory, fleet100):
    known = [str(u) for u in Device.objects.filter(is_production=True).values_list("uuid", flat=True)[:2]]
    saved = devicelists.device_list_create(factory=factory, actor=carol, name="l", uuids=known)
    login(client, carol)
    page = client.get(reverse("devicelist-detail", args=[saved.id]))
    assert page.status_code == 200 and known[0].encode() in page.content
    assert b'<span class="n">2</span><span class="l">devices of this factory</span>' in page.content
    extra = some_uuids(1)[0]
    edited = client.post(reverse("devicelist-detail", args=[saved.id]), {"name": "l2", "uuids": "\n".join(known + [extra])}, **hx("main"))
    assert edited.status_code == 200 and edited["HX-Redirect"] == reverse("devicelist-detail", args=[saved.id])
    saved.refresh_from_db()
    assert saved.name == "l2" and devicelists.device_list_uuids(saved) == known + [extra]
    export = client.get(reverse("devicelist-export", args=[saved.id]))
    assert export["Content-Disposition"] == 'attachment; filename="l2.lst"'
    assert export.content.decode().split() == known + [extra]
    deleted = client.post(reverse("devicelist-delete", args=[saved.id]))
    assert deleted.status_code == 302 and not SavedDeviceList.objects.filter(pk=saved.pk).exists()


@pytest.mark.django_db
def test_support_reads_but_cannot_change_lists(client, dave, carol, factory):
    saved = devicelists.device_list_create(factory=factory, actor=carol, name="l", uuids=some_uuids(1))
    login(client, dave)
    page = client.get(reverse("devicelist-detail", args=[saved.id]))
    assert page.status_code == 200 and b"Save list" not in page.content and b"Delete this list" not in page.content
    assert client.get(reverse("devicelist-export", args=[saved.id])).status_code == 200
    assert client.get(reverse("devicelist-create")).status_code == 403
    assert client.post(reverse("devicelist-create"), {"name": "x"}).status_code == 403
    assert client.post(reverse("devicelist-detail", args=[saved.id]), {"name": "hacked"}).status_code == 403
    assert client.post(reverse("devicelist-delete", args=[saved.id])).status_code == 403
    saved.refresh_from_db()
    assert saved.name == "l"


@pytest.mark.django_db
def test_lists_of_another_factory_are_not_found(client, eve, carol, factory):
    saved = devicelists.device_list_create(factory=factory, actor=carol, name="l", uuids=some_uuids(1))
    login(client, eve)
    assert b">l</a>" not in client.get(reverse("devicelist-list")).content
    for name in ("devicelist-detail", "devicelist-export"):
        assert client.get(reverse(name, args=[saved.id])).status_code == 404
    assert client.post(reverse("devicelist-delete", args=[saved.id])).status_code == 404
