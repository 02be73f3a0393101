"""The fleet's device pages: the device list, which filters by active-wave membership, and a
device's page, which shows the wave it is in and the rollouts that staged it.

Both read waves, so they live here rather than in the devices app below."""
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.http import Http404
from django.utils import timezone

from devices import selectors as device_selectors
from devices.forms import NO_GROUP, DeviceFilterForm
from devices.models import Device, DeviceEvent, DeviceGroup
from devices.tag_moves import known_tags
from factory.auth import can, factory_view
from factory.replica import replica_reads
from factory.selectors import rerelease_builds
from factory.views import capped_count, distinct_values, keyset_paginate, render_page

from .models import Wave, WaveDevice, WaveGroup
from .selectors import device_wave

COUNT_CAP = 1_000
EVENT_LABELS = {
    "download-started": "Download started",
    "download-completed": "Download completed",
    "install-started": "Install started",
    "install-applied": "Install applied (reboot pending)",
    "install-completed": "Install completed",
}


def _online_cutoff():
    return timezone.now() - timedelta(hours=settings.BREAKWATER_OFFLINE_THRESHOLD_HOURS)


def _in_active_wave(factory):
    """Devices staged in their tag's active wave, one by one or through a full-group rollout.

    Built per active wave (one per tag at most) as plain IN conditions, which the database
    answers with a hashed lookup while it walks the name index, instead of a correlated
    subquery per device.
    """
    condition = Q(pk__in=[])
    for wave in Wave.objects.filter(factory=factory, status=Wave.Status.ACTIVE).only("id", "tag"):
        staged = Q(pk__in=WaveDevice.objects.filter(wave=wave).values("device_id"))
        groups = list(WaveGroup.objects.filter(wave=wave).values_list("group_id", flat=True))
        if groups:
            staged |= Q(group_id__in=groups)
        condition |= Q(tag=wave.tag) & staged
    return Q(is_production=True) & condition


def _name_prefix(prefix):
    """Names starting with `prefix`, as an index range (LIKE cannot use the index under most collations)."""
    if ord(prefix[-1]) >= 0x10FFFF:
        return Q(name__startswith=prefix)
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return Q(name__gte=prefix, name__lt=upper, name__startswith=prefix)


def _filtered_devices(factory, form):
    devices = Device.objects.filter(factory=factory)
    if not form.is_valid():
        return devices.none()
    data = form.cleaned_data
    if data["q"]:
        found = form.search_uuid()
        devices = devices.filter(uuid=found) if found else devices.filter(_name_prefix(data["q"]))
    if data["group"] == NO_GROUP:
        devices = devices.filter(group__isnull=True)
    elif data["group"]:
        devices = devices.filter(group_id=int(data["group"]))
    if data["tag"]:
        devices = devices.filter(tag=data["tag"])
    if data["kind"]:
        devices = devices.filter(is_production=data["kind"] == "production")
    if data["online"] == "online":
        devices = devices.filter(last_seen__gte=_online_cutoff())
    elif data["online"] == "offline":
        devices = devices.filter(Q(last_seen__lt=_online_cutoff()) | Q(last_seen__isnull=True))
    if data["version"] is not None:
        devices = devices.filter(target_version=data["version"])
    if data["wave"] == "yes":
        devices = devices.filter(_in_active_wave(factory))
    elif data["wave"] == "no":
        devices = devices.exclude(_in_active_wave(factory))
    return devices


def _device_tags(factory):
    return distinct_values(Device.objects.filter(factory=factory), "tag", limit=100)


@factory_view("view")
@replica_reads()
def device_list(request):
    groups = list(DeviceGroup.objects.filter(factory=request.factory))
    form = DeviceFilterForm(request.GET, groups=groups, tags=_device_tags(request.factory))
    devices = _filtered_devices(request.factory, form)
    page = keyset_paginate(
        devices.select_related("group").only(
            "id", "uuid", "name", "is_production", "tag", "group__name", "target_version", "target_name", "last_seen"
        ),
        request,
        fields=("name", "id"),
    )
    query = request.GET.copy()
    for key in ("after", "before"):
        query.pop(key, None)
    rereleased = rerelease_builds(factory=request.factory, versions=[d.target_version for d in page])
    for d in page:
        d.rerelease_of = rereleased.get(d.target_version)
    context = {
        "form": form,
        "page": page,
        "matches": capped_count(devices, COUNT_CAP) if form.is_valid() else 0,
        "count_cap": COUNT_CAP,
        "query": query.urlencode(),
        "online_cutoff": _online_cutoff(),
    }
    return render_page(request, "devices/list.html", context, title="Devices", section="devices", fragments=("device-results",))


def _certificate(device):
    try:
        facts = device_selectors.device_certificate_facts(device=device)
    except ValueError:
        return {"error": "The stored certificate could not be read."}
    if facts is not None:
        facts["expired"] = facts["not_after"] < timezone.now()
    return facts


def _device_or_404(factory, uuid):
    device = Device.objects.select_related("group").filter(factory=factory, uuid=uuid).first()
    if device is None:
        raise Http404("No such device in this factory.")
    return device


@factory_view("view")
def device_detail(request, uuid):
    device = _device_or_404(request.factory, uuid)
    events = keyset_paginate(DeviceEvent.objects.filter(device=device), request, fields=("-reported_at", "-id"))
    for event in events:
        event.label = EVENT_LABELS.get(event.event_type, event.event_type)
    stagings = (
        WaveDevice.objects.filter(device=device)
        .select_related("wave", "rollout", "rollout__created_by")
        .order_by("-rollout__created_at")[:20]
    )
    context = {
        "device": device,
        "rerelease_of": rerelease_builds(factory=request.factory, versions=[device.target_version]).get(device.target_version),
        "certificate": _certificate(device),
        "online": device.last_seen is not None and device.last_seen >= _online_cutoff(),
        "events": events,
        "active_wave": device_wave(device=device),
        "stagings": stagings,
        "telemetry": device_selectors.device_telemetry(device=device),
        # The tags the device may be moved to (the service checks again), for roles that may.
        "tag_choices": sorted(known_tags(factory=request.factory) | {device.tag}) if can(request.user, request.factory, "fleet.manage") else [],
    }
    return render_page(
        request, "devices/detail.html", context, title=f"Device {device.name}", section="devices", fragments=("device-events",)
    )
