"""Writes for devices and device groups."""
import random

from django.db import IntegrityError, transaction

from factory.auth import authorize
from factory.errors import ApplicationError, Conflict, NotFound
from factory.services import audit_record

from .models import Device, DeviceGroup

GROUP_NAME_MAX = 64


def _validate_group_name(name):
    name = (name or "").strip()
    if not name:
        raise ApplicationError("a group name is required")
    if len(name) > GROUP_NAME_MAX or any(c.isspace() or c in ",;|@" for c in name):
        raise ApplicationError(f"group name {name[:70]!r} must be at most {GROUP_NAME_MAX} characters without spaces or , ; | @")
    return name


def device_group_create(*, factory, name, description="", actor=None):
    authorize(user=actor, factory=factory, action="fleet.manage")
    name = _validate_group_name(name)
    try:
        with transaction.atomic():
            group = DeviceGroup.objects.create(factory=factory, name=name, description=description[:255])
            audit_record(factory=factory, actor=actor, action="group.create", target=name)
    except IntegrityError:
        raise Conflict(f"device group {name} already exists") from None
    return group


def device_group_rename(*, group, new_name, actor=None):
    authorize(user=actor, factory=group.factory, action="fleet.manage")
    new_name = _validate_group_name(new_name)
    old = group.name
    try:
        with transaction.atomic():
            group.name = new_name
            group.save(update_fields=["name"])
            audit_record(factory=group.factory, actor=actor, action="group.rename", target=new_name, details={"from": old})
    except IntegrityError:
        group.name = old
        raise Conflict(f"device group {new_name} already exists") from None
    return group


def device_group_delete(*, group, actor=None):
    authorize(user=actor, factory=group.factory, action="fleet.manage")
    with transaction.atomic():
        count = Device.objects.filter(group=group).count()
        audit_record(factory=group.factory, actor=actor, action="group.delete", target=group.name, details={"devices": count})
        group.delete()


def devices_assign_group(*, factory, uuids, group, actor=None):
    """Put the listed devices in `group` (None: no group). Returns (moved count, unknown UUIDs)."""
    authorize(user=actor, factory=factory, action="fleet.manage")
    if group is not None and group.factory_id != factory.id:
        raise NotFound("device group not found")
    uuids = list(uuids)
    with transaction.atomic():
        known = set(Device.objects.filter(factory=factory, uuid__in=uuids).values_list("uuid", flat=True))
        moved = Device.objects.filter(factory=factory, uuid__in=known).update(group=group)
        audit_record(
            factory=factory, actor=actor, action="group.assign", target=group.name if group else "(no group)", details={"devices": moved}
        )
    unknown = [u for u in uuids if u not in known]
    return moved, unknown


def device_create(*, factory, uuid, name, tag, is_production, group=None, hardware_id="", certificate="", serial=""):
    """Insert a registered device. Only the registration service calls this."""
    try:
        with transaction.atomic():
            return Device.objects.create(
                factory=factory,
                uuid=uuid,
                name=name,
                tag=tag,
                is_production=is_production,
                group=group,
                hardware_id=hardware_id,
                certificate=certificate,
                certificate_serial=serial,
                sample_key=random.random(),
            )
    except IntegrityError:
        raise Conflict(f"device {uuid} is already registered") from None
