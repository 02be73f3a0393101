"""Devices API: list with filters and paging, show, events; device groups and bulk assignment."""
import uuid as uuid_lib
from datetime import timedelta

from django.conf import settings
from django.db.models import Count
from django.utils import timezone
from ninja import Query, Router, Status
from pydantic import Field
from typing import Annotated

from factory.api_support import actor_scope, paginate, responses
from factory.errors import ApplicationError, NotFound
from factory.schemas import FactoryName, PageNumber, PerPage, Text, Version

from .models import Device, DeviceEvent, DeviceGroup
from .schemas import (
    DeviceConfigUpdatesIn,
    DeviceConfigUpdatesOut,
    DeviceDetailOut,
    DeviceEventPage,
    DeviceGroupAssignIn,
    DeviceGroupAssignOut,
    DeviceGroupIn,
    DeviceGroupOut,
    DeviceGroupRenameIn,
    DeviceOut,
    DevicePage,
    RegistrationTokenIn,
    RegistrationTokenOut,
)
from .selectors import device_name_filter, device_sort, device_telemetry, registration_token_get, registration_token_list
from .services import (
    device_delete,
    device_group_create,
    device_group_delete,
    device_group_rename,
    devices_assign_group,
    registration_token_create,
    registration_token_revoke,
)
from .tag_moves import device_config, device_tag_set
from .uuids import parse_uuid_list

router = Router(tags=["devices"])

ThresholdHours = Annotated[float, Field(gt=0, le=24 * 365)]


def _cutoff(hours):
    return timezone.now() - timedelta(hours=hours if hours is not None else settings.BREAKWATER_OFFLINE_THRESHOLD_HOURS)


def _device_out(device, cutoff):
    return {
        "uuid": device.uuid,
        "name": device.name,
        "production": device.is_production,
        "tag": device.tag,
        "group": device.group.name if device.group_id else None,
        "hardware_id": device.hardware_id,
        "target_name": device.target_name,
        "target_version": device.target_version,
        "last_seen": device.last_seen,
        "online": device.last_seen is not None and device.last_seen >= cutoff,
        "created_at": device.created_at,
    }


def device_lookup(factory, ident):
    """A device of `factory` by UUID, or by name when the name is unique."""
    try:
        key = uuid_lib.UUID(ident)
    except ValueError:
        key = None
    if key is not None:
        device = Device.objects.filter(factory=factory, uuid=key).select_related("group").first()
        if device is not None:
            return device
    matches = list(Device.objects.filter(factory=factory, name=ident).select_related("group")[:2])
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ApplicationError(f"Several devices are named {ident}; use the device UUID", code="ambiguous")
    raise NotFound(f"Device {ident} does not exist in factory {factory.name}")


def group_lookup(factory, name):
    group = DeviceGroup.objects.filter(factory=factory, name=name).first()
    if group is None:
        raise NotFound(f"Device group {name} does not exist in factory {factory.name}")
    return group


@router.get("/devices/", response=responses(200, DevicePage), summary="Devices, filtered and paged")
def devices_list(
    request,
    factory: FactoryName,
    tag: Text | None = None,
    group: Text | None = Query(None, description="A group name; '-' lists devices without a group."),
    production: bool | None = None,
    uuid: Text | None = Query(None, description="A UUID or the start of one."),
    name: Text | None = Query(None, description="Devices whose name contains this text; with * or ?, whose whole name matches it as a pattern."),
    sort: Text | None = Query(None, description="name (default), last-seen, registered, version, group or tag; a leading - reverses."),
    online: bool | None = None,
    target_version: Version | None = None,
    offline_threshold: ThresholdHours | None = Query(None, description="Hours without a check-in before a device counts as offline."),
    page: PageNumber = 1,
    per_page: PerPage = 50,
):
    factory_obj, _ = actor_scope(request)
    cutoff = _cutoff(offline_threshold)
    devices = device_sort(Device.objects.filter(factory=factory_obj).select_related("group"), sort)
    if tag:
        devices = devices.filter(tag=tag)
    if group == "-":
        devices = devices.filter(group__isnull=True)
    elif group:
        devices = devices.filter(group=group_lookup(factory_obj, group))
    if production is not None:
        devices = devices.filter(is_production=production)
    if uuid:
        devices = _uuid_filter(devices, uuid)
    if name:
        devices = device_name_filter(devices, name)
    if online is True:
        devices = devices.filter(last_seen__gte=cutoff)
    elif online is False:
        devices = devices.exclude(last_seen__gte=cutoff)
    if target_version is not None:
        devices = devices.filter(target_version=target_version)
    result = paginate(devices, page=page, per_page=per_page)
    result["items"] = [_device_out(d, cutoff) for d in result["items"]]
    return result


def _uuid_filter(devices, text):
    text = text.strip().lower()
    try:
        return devices.filter(uuid=uuid_lib.UUID(text))
    except ValueError:
        pass
    hexdigits = text.replace("-", "")
    if not hexdigits or len(hexdigits) > 32 or any(c not in "0123456789abcdef" for c in hexdigits):
        raise ApplicationError(f"{text[:40]!r} is not a UUID or the start of one")
    # A prefix becomes a UUID range, which works on every database (UUIDs are not text in PostgreSQL).
    low = uuid_lib.UUID(hexdigits.ljust(32, "0"))
    high = uuid_lib.UUID(hexdigits.ljust(32, "f"))
    return devices.filter(uuid__gte=low, uuid__lte=high)


@router.patch("/devices/", response=responses(200, DeviceGroupAssignOut), summary="Put devices in a group, or in none (bulk)")
def devices_set_group(request, factory: FactoryName, payload: DeviceGroupAssignIn):
    factory_obj, user = actor_scope(request)
    group = group_lookup(factory_obj, payload.group) if payload.group is not None else None
    uuids = parse_uuid_list(payload.uuids)
    moved, unknown = devices_assign_group(factory=factory_obj, uuids=uuids, group=group, actor=user)
    return {"group": group.name if group else None, "moved": moved, "unknown": unknown}


@router.get("/devices/{device}", response=responses(200, DeviceDetailOut), summary="One device, by UUID or unique name, with what it reported about itself")
def devices_show(request, factory: FactoryName, device: str, offline_threshold: ThresholdHours | None = None):
    factory_obj, _ = actor_scope(request)
    row = device_lookup(factory_obj, device)
    return {**_device_out(row, _cutoff(offline_threshold)), **device_telemetry(device=row)}


@router.post(
    "/devices/{device}/config/updates", response=responses(200, DeviceConfigUpdatesOut), summary="Move a device to another tag from the server"
)
def devices_config_updates(request, factory: FactoryName, device: str, payload: DeviceConfigUpdatesIn):
    """fioctl's `devices config updates --tag`: from now on the device is served the tag's
    metadata, and the gateway hands it a config fragment naming the tag (GET /config), whatever
    tag its own configuration names. Only tags CI builds target or releases were made for (400
    otherwise); a production device is not moved to a tag whose production targets version is
    below what it was served (409: its TUF client would refuse them as a rollback)."""
    factory_obj, user = actor_scope(request)
    moved, previous = device_tag_set(device=device_lookup(factory_obj, device), tag=payload.tag, actor=user)
    return {
        "uuid": moved.uuid, "name": moved.name, "production": moved.is_production, "tag": moved.tag, "previous_tag": previous,
        "config": device_config(device=moved),
    }  # fmt: skip


@router.delete("/devices/{device}", response=responses(204, None), summary="Delete a device; the gateway refuses its certificate from then on")
def devices_delete(request, factory: FactoryName, device: str):
    factory_obj, user = actor_scope(request)
    device_delete(device=device_lookup(factory_obj, device), actor=user)
    return Status(204, None)


@router.get("/devices/{device}/events", response=responses(200, DeviceEventPage), summary="A device's reported events, newest first")
def devices_events(request, factory: FactoryName, device: str, page: PageNumber = 1, per_page: PerPage = 50):
    factory_obj, _ = actor_scope(request)
    device_obj = device_lookup(factory_obj, device)
    events = DeviceEvent.objects.filter(device=device_obj).order_by("-reported_at", "-id")
    result = paginate(events, page=page, per_page=per_page)
    result["items"] = [
        {
            "event_type": e.event_type,
            "target_name": e.target_name,
            "target_version": e.target_version,
            "success": e.success,
            "detail": e.detail,
            "reported_at": e.reported_at,
            "received_at": e.received_at,
        }
        for e in result["items"]
    ]
    return result


def _group_out(group, count=None):
    return {
        "name": group.name,
        "description": group.description,
        "devices": count if count is not None else group.devices.count(),
        "created_at": group.created_at,
    }


@router.get("/groups/", response=responses(200, list[DeviceGroupOut]), summary="Device groups with their device counts")
def groups_list(request, factory: FactoryName):
    factory_obj, _ = actor_scope(request)
    groups = DeviceGroup.objects.filter(factory=factory_obj).annotate(count=Count("devices")).order_by("name")
    return [_group_out(g, g.count) for g in groups]


@router.post("/groups/", response=responses(201, DeviceGroupOut), summary="Create a device group")
def groups_create(request, factory: FactoryName, payload: DeviceGroupIn):
    factory_obj, user = actor_scope(request)
    group = device_group_create(factory=factory_obj, name=payload.name, description=payload.description, actor=user)
    return Status(201, _group_out(group, 0))


@router.get("/groups/{path:group}", response=responses(200, DeviceGroupOut), summary="One device group")
def groups_show(request, factory: FactoryName, group: str):
    factory_obj, _ = actor_scope(request)
    return _group_out(group_lookup(factory_obj, group))


@router.patch("/groups/{path:group}", response=responses(200, DeviceGroupOut), summary="Rename a device group")
def groups_rename(request, factory: FactoryName, group: str, payload: DeviceGroupRenameIn):
    factory_obj, user = actor_scope(request)
    group_obj = device_group_rename(group=group_lookup(factory_obj, group), new_name=payload.name, actor=user)
    return _group_out(group_obj)


@router.delete("/groups/{path:group}", response=responses(204, None), summary="Delete a device group (its devices stay, without a group)")
def groups_delete(request, factory: FactoryName, group: str):
    factory_obj, user = actor_scope(request)
    device_group_delete(group=group_lookup(factory_obj, group), actor=user)
    return Status(204, None)


# --- registration tokens ----------------------------------------------------------------------


def _token_out(token, plain=None):
    return {
        "prefix": token.prefix,
        "name": token.name,
        "tag": token.tag,
        "group": token.group.name if token.group_id else None,
        "production": token.allow_production,
        "max_uses": token.max_uses,
        "uses": token.uses,
        "expires_at": token.expires_at,
        "created_at": token.created_at,
        "revoked_at": token.revoked_at,
        "token": plain,
    }


@router.get("/registration-tokens/", response=responses(200, list[RegistrationTokenOut]), summary="Registration tokens, newest first")
def registration_tokens_list(request, factory: FactoryName, revoked: bool = False):
    factory_obj, _ = actor_scope(request, "factory.admin")
    return [_token_out(t) for t in registration_token_list(factory=factory_obj, include_revoked=revoked)]


@router.post("/registration-tokens/", response=responses(201, RegistrationTokenOut), summary="Create a token devices register with (shown once)")
def registration_tokens_create(request, factory: FactoryName, payload: RegistrationTokenIn):
    factory_obj, user = actor_scope(request)
    group = group_lookup(factory_obj, payload.group) if payload.group else None
    token, plain = registration_token_create(
        factory=factory_obj,
        actor=user,
        tag=payload.tag,
        name=payload.name,
        group=group,
        production=payload.production,
        max_uses=payload.max_uses,
        expires_days=payload.expires_days,
        expires_at=payload.expires_at,
    )
    return Status(201, _token_out(token, plain))


@router.delete("/registration-tokens/{prefix}", response=responses(200, RegistrationTokenOut), summary="Revoke a registration token")
def registration_tokens_revoke(request, factory: FactoryName, prefix: str):
    factory_obj, user = actor_scope(request)
    token = registration_token_revoke(token=registration_token_get(factory=factory_obj, prefix=prefix), actor=user)
    return _token_out(token)
