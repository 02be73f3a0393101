"""Devices API: list filters and paging, show, events, device groups and bulk group assignment."""
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.fleet import fleet_seed
from devices.models import Device, DeviceEvent, DeviceGroup
from factory.models import AuditEntry
from tests.factory.test_api import as_user, assert_error, tokens  # noqa: F401  (fixtures)


@pytest.fixture
def fleet(factory, other_factory):
    fleet_seed(factory=factory, tag="production", groups={"canary": 5, "beta": 20}, ungrouped=10, test_devices=4, version=41, hardware_ids=["hw"])
    fleet_seed(factory=factory, tag="devel", ungrouped=3, version=40, hardware_ids=["hw"])
    fleet_seed(factory=other_factory, tag="production", groups={"canary": 2}, version=41, hardware_ids=["hw"])
    return Device.objects.filter(factory=factory)


def names(response):
    assert response.status_code == 200, response.content
    return [d["name"] for d in response.json()["items"]]


def test_list_filters_by_tag_group_production_and_name(as_user, fleet):
    dave = as_user("dave")
    everything = dave.get("devices/", {"per_page": 1000}).json()
    assert everything["total"] == 42
    assert len(names(dave.get("devices/", {"tag": "devel"}))) == 3
    assert set(names(dave.get("devices/", {"group": "canary"}))) == {f"canary-{i:04d}" for i in range(1, 6)}
    assert len(names(dave.get("devices/", {"group": "-", "tag": "production", "per_page": 100}))) == 14
    assert names(dave.get("devices/", {"production": "false", "per_page": 100})) == [f"test-{i:04d}" for i in range(1, 5)]
    assert len(names(dave.get("devices/", {"production": "true", "tag": "production", "per_page": 100}))) == 35
    assert names(dave.get("devices/", {"name": "beta-0007"})) == ["beta-0007"]
    assert_error(dave.get("devices/", {"group": "no-such-group"}), 404, "not_found")


def test_list_by_uuid_and_uuid_prefix(as_user, fleet):
    device = fleet.get(name="beta-0003")
    dave = as_user("dave")
    assert names(dave.get("devices/", {"uuid": str(device.uuid)})) == ["beta-0003"]
    prefix = str(device.uuid)[:8]
    assert "beta-0003" in names(dave.get("devices/", {"uuid": prefix}))
    assert_error(dave.get("devices/", {"uuid": "not-hex!"}), 400, "invalid")


def test_list_online_filter_follows_the_offline_threshold(as_user, fleet):
    Device.objects.filter(factory=fleet.first().factory).update(last_seen=timezone.now() - timedelta(hours=6))
    Device.objects.filter(name="canary-0001").update(last_seen=timezone.now())
    dave = as_user("dave")
    assert names(dave.get("devices/", {"online": "true"})) == ["canary-0001"]
    assert len(names(dave.get("devices/", {"online": "true", "offline_threshold": 8, "per_page": 100}))) == 42
    assert_error(dave.get("devices/", {"offline_threshold": -1}), 400, "invalid")


def test_list_pages_are_stable_and_complete(as_user, fleet):
    dave = as_user("dave")
    seen, page = [], 1
    while page:
        body = dave.get("devices/", {"per_page": 10, "page": page}).json()
        seen += [d["uuid"] for d in body["items"]]
        page = body["next"]
    assert len(seen) == len(set(seen)) == 42
    empty = dave.get("devices/", {"per_page": 10, "page": 99}).json()
    assert empty["items"] == [] and empty["next"] is None


def test_show_by_uuid_or_unique_name_and_never_across_factories(as_user, fleet, other_factory):
    device = fleet.get(name="canary-0002")
    dave = as_user("dave")
    shown = dave.get(f"devices/{device.uuid}").json()
    assert shown["name"] == "canary-0002" and shown["group"] == "canary" and shown["production"] is True
    assert dave.get("devices/canary-0002").json()["uuid"] == str(device.uuid)
    foreign = Device.objects.get(factory=other_factory, name="canary-0001")
    assert_error(dave.get(f"devices/{foreign.uuid}"), 404, "not_found")
    assert_error(dave.get(f"devices/{uuid.uuid4()}"), 404, "not_found")


def test_show_with_an_ambiguous_name_asks_for_the_uuid(as_user, fleet, factory):
    twins = list(Device.objects.filter(factory=factory, tag="devel").values_list("id", flat=True)[:2])
    Device.objects.filter(id__in=twins).update(name="twin")
    body = assert_error(as_user("dave").get("devices/twin"), 400, "ambiguous")
    assert "UUID" in body["detail"]


def test_events_newest_first(as_user, fleet, factory):
    device = fleet.get(name="canary-0001")
    now = timezone.now()
    for minutes, event_type, success in ((3, "download-started", None), (2, "download-completed", True), (1, "install-completed", False)):
        DeviceEvent.objects.create(
            factory=factory, device=device, event_type=event_type, target_name="hw-lmp-42", target_version=42, success=success, reported_at=now - timedelta(minutes=minutes)
        )
    body = as_user("dave").get(f"devices/{device.uuid}/events").json()
    assert [e["event_type"] for e in body["items"]] == ["install-completed", "download-completed", "download-started"]
    assert body["items"][0]["success"] is False


# --- device groups ------------------------------------------------------------------------------


def test_group_create_list_rename_delete(as_user, fleet, factory):
    bob = as_user("bob")
    response = bob.post("groups/", {"name": "us-east", "description": "East coast"})
    assert response.status_code == 201 and response.json()["devices"] == 0
    listing = {g["name"]: g["devices"] for g in bob.get("groups/").json()}
    assert listing == {"beta": 20, "canary": 5, "us-east": 0}
    assert bob.patch("groups/us-east", {"name": "us-east-1"}).json()["name"] == "us-east-1"
    assert_error(bob.get("groups/us-east"), 404, "not_found")
    assert bob.delete("groups/canary").status_code == 204
    assert not DeviceGroup.objects.filter(factory=factory, name="canary").exists()
    assert Device.objects.filter(factory=factory, name__startswith="canary-", group__isnull=True).count() == 5
    assert [e.action for e in AuditEntry.objects.filter(factory=factory, actor_name="bob", action__startswith="group.").order_by("id")] == ["group.create", "group.rename", "group.delete"]


def test_group_conflicts_and_bad_names(as_user, fleet, factory):
    bob = as_user("bob")
    assert_error(bob.post("groups/", {"name": "canary"}), 409, "conflict")
    assert_error(bob.patch("groups/beta", {"name": "canary"}), 409, "conflict")
    assert_error(bob.post("groups/", {"name": "has space"}), 400, "invalid")
    assert_error(bob.post("groups/", {"name": ""}), 400, "invalid")
    assert_error(bob.delete("groups/nope"), 404, "not_found")
    assert sorted(DeviceGroup.objects.filter(factory=factory).values_list("name", flat=True)) == ["beta", "canary"]


@pytest.mark.parametrize("user", ["carol", "dave"])
def test_qa_and_support_cannot_change_groups(as_user, fleet, factory, user):
    client = as_user(user)
    assert_error(client.post("groups/", {"name": "new"}), 403, "forbidden")
    assert_error(client.patch("groups/canary", {"name": "renamed"}), 403, "forbidden")
    assert_error(client.delete("groups/canary"), 403, "forbidden")
    device = fleet.get(name="beta-0001")
    assert_error(client.patch("devices/", {"group": "canary", "uuids": [str(device.uuid)]}), 403, "forbidden")
    device.refresh_from_db()
    assert device.group.name == "beta" and DeviceGroup.objects.filter(factory=factory).count() == 2


def test_bulk_assignment_takes_text_or_lists_and_reports_unknown_uuids(as_user, fleet, factory, other_factory):
    bob = as_user("bob")
    ungrouped = list(fleet.filter(group__isnull=True, tag="production", is_production=True).values_list("uuid", flat=True)[:4])
    foreign = Device.objects.filter(factory=other_factory).first().uuid
    text = f"{ungrouped[0]},{ungrouped[1]};{ungrouped[2]}\r\n{ungrouped[3]} {foreign} {ungrouped[0]}"
    body = bob.patch("devices/", {"group": "canary", "uuids": text}).json()
    assert body == {"group": "canary", "moved": 4, "unknown": [str(foreign)]}
    assert set(fleet.filter(group__name="canary").values_list("uuid", flat=True)) >= set(ungrouped)
    body = bob.patch("devices/", {"group": None, "uuids": [str(u) for u in ungrouped[:2]]}).json()
    assert body["moved"] == 2 and body["group"] is None
    assert fleet.filter(uuid__in=ungrouped[:2], group__isnull=True).count() == 2
    assert Device.objects.get(uuid=foreign).group.name == "canary" and Device.objects.get(uuid=foreign).factory == other_factory


def test_bulk_assignment_with_a_malformed_uuid_changes_nothing(as_user, fleet):
    device = fleet.get(name="beta-0001")
    body = assert_error(as_user("bob").patch("devices/", {"group": "canary", "uuids": f"{device.uuid},not-a-uuid"}), 400, "uuids_invalid")
    assert "not-a-uuid" in body["detail"]
    device.refresh_from_db()
    assert device.group.name == "beta"
    assert_error(as_user("bob").patch("devices/", {"group": "nope", "uuids": [str(device.uuid)]}), 404, "not_found")
