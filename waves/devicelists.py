"""QA's saved device lists: named UUID lists that are reviewed, edited, exported and used in
rollouts. Writes follow the services rules (role check, one transaction, an audit row)."""
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError

from devices.uuids import parse_uuid_list
from factory.auth import authorize
from factory.errors import Conflict, NotFound
from factory.names import name_clean
from factory.services import audit_record

from .models import SavedDeviceList

NAME_MAX = 100
# A list is addressed by its name in the API's URLs.
NAME_FORBIDDEN = "/\\"


def _clean_name(name):
    return name_clean(name, what="A device list name", max_length=NAME_MAX, forbidden=NAME_FORBIDDEN, code="name")


def _clean_uuids(uuids):
    """Canonical text, one UUID a line; an empty list is allowed (a list being built)."""
    if uuids is None or (isinstance(uuids, str) and not uuids.strip()) or (isinstance(uuids, (list, tuple)) and not uuids):
        return ""
    return "\n".join(str(u) for u in parse_uuid_list(uuids))


def device_list_create(*, factory, actor, name, uuids=None):
    authorize(user=actor, factory=factory, action="devicelist.edit")
    name = _clean_name(name)
    text = _clean_uuids(uuids)
    try:
        with transaction.atomic():
            saved = SavedDeviceList.objects.create(factory=factory, name=name, uuids=text, created_by=actor)
            audit_record(factory=factory, actor=actor, action="devicelist.create", target=name, details={"devices": _count(text)})
    except IntegrityError:
        raise Conflict(f"A device list named {name} already exists", code="name") from None
    return saved


def device_list_update(*, device_list, actor, name=None, uuids=None):
    """Rename and/or replace the UUIDs of a list; None leaves that part as it is."""
    authorize(user=actor, factory=device_list.factory, action="devicelist.edit")
    new_name = _clean_name(name) if name is not None else device_list.name
    text = _clean_uuids(uuids) if uuids is not None else device_list.uuids
    old_name, old_text = device_list.name, device_list.uuids
    try:
        with transaction.atomic():
            device_list.name, device_list.uuids = new_name, text
            device_list.save(update_fields=["name", "uuids", "updated_at"])
            audit_record(
                factory=device_list.factory,
                actor=actor,
                action="devicelist.update",
                target=new_name,
                details={"from": old_name, "devices": _count(text)} if old_name != new_name else {"devices": _count(text)},
            )
    except IntegrityError:
        device_list.name, device_list.uuids = old_name, old_text
        raise Conflict(f"A device list named {new_name} already exists", code="name") from None
    return device_list


def device_list_delete(*, device_list, actor):
    authorize(user=actor, factory=device_list.factory, action="devicelist.edit")
    try:
        with transaction.atomic():
            audit_record(factory=device_list.factory, actor=actor, action="devicelist.delete", target=device_list.name)
            device_list.delete()
    except ProtectedError:
        raise Conflict(f"Device list {device_list.name} is used by a rollout plan; remove it from the plan first") from None


def device_list_get(*, factory, list_id):
    saved = SavedDeviceList.objects.filter(factory=factory, id=list_id).first()
    if saved is None:
        raise NotFound("Device list not found")
    return saved


def device_list_uuids(device_list):
    return [line for line in device_list.uuids.splitlines() if line.strip()]


def _count(text):
    return text.count("\n") + 1 if text else 0
