"""Reads for devices: lookups, filtered lists, event timelines, certificate facts, tokens, dead letters."""
import json
import re
import uuid as uuid_lib
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.db.models.expressions import RawSQL
from django.utils import timezone

from factory.errors import ApplicationError, NotFound

from . import pki
from .models import DeadLetter, Device, DeviceCA, DeviceEvent, DeviceReport, RegistrationToken

NO_GROUP = "-"
# Below this many UUIDs a plain IN list is as quick as anything else.
LONG_UUID_LIST = 100


def uuids_in(uuids):
    """The right-hand side of a `uuid__in` filter, fit for lists of up to 10,000 UUIDs.

    On PostgreSQL a long list goes as one array parameter, unnested in a subquery: the planner
    probes the uuid index once per value (about 35 ms for 10,000), where an IN list of 10,000
    placeholders is slow to build, send and parse, and is planned as a scan of the whole table.
    """
    uuids = list(uuids)
    if connection.vendor == "postgresql" and len(uuids) > LONG_UUID_LIST:
        return RawSQL("SELECT unnest(%s::uuid[])", [uuids])
    return uuids


def device_get(*, factory, uuid):
    try:
        key = uuid if isinstance(uuid, uuid_lib.UUID) else uuid_lib.UUID(str(uuid))
    except ValueError:
        raise ApplicationError(f"{str(uuid)[:40]!r} is not a device UUID") from None
    device = Device.objects.select_related("group", "factory").filter(factory=factory, uuid=key).first()
    if device is None:
        raise NotFound(f"Device {key} does not exist in factory {factory.name}")
    return device


# The orders a device list may take, as the doors spell them; "-" sorts newest or highest first.
DEVICE_SORTS = {
    "name": ("name", "id"),
    "last-seen": ("last_seen", "name", "id"),
    "registered": ("created_at", "id"),
    "version": ("target_version", "name", "id"),
    "group": ("group__name", "name", "id"),
    "tag": ("tag", "name", "id"),
}


def device_sort(devices, sort):
    """Order `devices` by one of DEVICE_SORTS ("last-seen", "-last-seen", ...)."""
    sort = (sort or "name").strip()
    descending = sort.startswith("-")
    fields = DEVICE_SORTS.get(sort.lstrip("-"))
    if fields is None:
        raise ApplicationError(f"Cannot sort by {sort[:40]!r}: sort by " + ", ".join(DEVICE_SORTS) + " (a leading - reverses)")
    return devices.order_by(*(("-" + f) if descending else f for f in fields))


def device_name_filter(devices, text):
    """Devices whose name contains `text`, or, when it holds * or ?, whose whole name matches it
    as a pattern (fioctl's `devices list 'gw-*'`). Every other character is literal."""
    if "*" not in text and "?" not in text:
        return devices.filter(name__icontains=text)
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)
    return devices.filter(name__iregex=f"^{regex}$")


def device_list(*, factory, tag=None, group=None, production=None, online=None, target_version=None, search=None, offline_threshold_hours=None):
    """Devices of a factory, filtered, ordered by name then id (a queryset: page it).

    `group`: a group name, or "-" for devices without a group. `search`: a UUID, or text in the name.
    """
    devices = Device.objects.filter(factory=factory).select_related("group").order_by("name", "id")
    if tag:
        devices = devices.filter(tag=tag)
    if group == NO_GROUP:
        devices = devices.filter(group__isnull=True)
    elif group:
        devices = devices.filter(group__name=group)
    if production is not None:
        devices = devices.filter(is_production=production)
    if online is not None:
        hours = settings.BREAKWATER_OFFLINE_THRESHOLD_HOURS if offline_threshold_hours is None else float(offline_threshold_hours)
        cutoff = timezone.now() - timedelta(hours=hours)
        devices = devices.filter(last_seen__gte=cutoff) if online else devices.exclude(last_seen__gte=cutoff)
    if target_version is not None:
        devices = devices.filter(target_version=target_version)
    if search:
        search = search.strip()
        try:
            devices = devices.filter(uuid=uuid_lib.UUID(search))
        except ValueError:
            devices = devices.filter(name__icontains=search)
    return devices


def device_events(*, device, limit=100):
    """The device's reported events, newest first."""
    return list(DeviceEvent.objects.filter(device=device).order_by("-reported_at", "-id")[:limit])


def device_certificate_facts(*, device):
    """What the device's certificate says (subject, issuer, serial, validity, production), or None."""
    if not device.certificate:
        return None
    return pki.certificate_facts(pki.cert_load(device.certificate))


def device_ca_certificate(*, factory):
    """The PEM of the factory's device CA, or None before the first registration."""
    ca = DeviceCA.objects.filter(factory=factory).first()
    return ca.certificate if ca else None


def registration_token_list(*, factory, include_revoked=False):
    tokens = RegistrationToken.objects.filter(factory=factory).select_related("group").order_by("-created_at", "-id")
    if not include_revoked:
        tokens = tokens.filter(revoked_at__isnull=True)
    return tokens


def registration_token_get(*, factory, prefix):
    token = RegistrationToken.objects.select_related("group", "factory").filter(factory=factory, prefix=prefix).first()
    if token is None:
        raise NotFound(f"Registration token {prefix} does not exist in factory {factory.name}")
    return token


def dead_letters(*, factory=None):
    """Dead letters, newest first: a factory's, or every one (the operator's command)."""
    letters = DeadLetter.objects.order_by("-created_at", "-id")
    return letters.filter(factory_id=factory.pk) if factory is not None else letters


def dead_letter_counts(*, factory=None):
    """{kind: count} of the dead letters, of one factory or of all."""
    letters = dead_letters(factory=factory).order_by()
    return dict(letters.values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))


def dead_letter_devices(letters):
    """{device id: Device} for the devices the dead letters name that still exist."""
    ids = {letter.device_id for letter in letters if letter.device_id is not None}
    return {d.pk: d for d in Device.objects.filter(pk__in=ids).only("id", "uuid", "name")}


REPORT_TITLES = {
    DeviceReport.Kind.SYSTEM_INFO: "Hardware (lshw)",
    DeviceReport.Kind.NETWORK: "Network",
    DeviceReport.Kind.CONFIG: "Client configuration (sota.toml)",
    DeviceReport.Kind.APPS_STATES: "Apps",
}


def device_telemetry(*, device):
    """What the device reported about itself: {"client": {user_agent, ostree_hash, docker_apps}
    or None, "reports": [{kind, title, received_at, content}]}, JSON pretty-printed. The text is
    the device's: every medium it goes to escapes it."""
    client, reports = None, []
    for row in DeviceReport.objects.filter(device=device).order_by("kind"):
        if row.kind == DeviceReport.Kind.CLIENT:
            try:
                facts = json.loads(row.content)
            except ValueError:
                facts = {}
            client = {key: facts.get(key) if isinstance(facts.get(key), str) else None for key in ("user_agent", "ostree_hash", "docker_apps")}
            client["received_at"] = row.received_at
            continue
        content = row.content
        if row.kind != DeviceReport.Kind.CONFIG:
            try:
                content = json.dumps(json.loads(content), indent=2, ensure_ascii=False)
            except ValueError:
                pass
        reports.append({"kind": row.kind, "title": REPORT_TITLES.get(row.kind, row.kind), "received_at": row.received_at, "content": content})
    return {"client": client, "reports": reports}
