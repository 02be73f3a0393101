"""Dashboard pages for devices and device groups: the fleet list, a device's page, groups, and the
reports the gateway's flush set aside (dead letters)."""
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.db.models import Q
from django.db.models.expressions import RawSQL
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import trigger_client_event

from factory.auth import factory_view
from factory.errors import ApplicationError
from factory.views import add_service_error, capped_count, distinct_values, keyset_paginate, render_page, service_error_status

from . import selectors, services
from .forms import NO_GROUP, DeviceFilterForm, GroupAssignForm, GroupCreateForm, GroupDeleteForm, GroupRenameForm
from .models import Device, DeviceEvent, DeviceGroup

COUNT_CAP = 1_000
EVENT_LABELS = {
    "download-started": "Download started",
    "download-completed": "Download completed",
    "install-started": "Install started",
    "install-applied": "Install applied (reboot pending)",
    "install-completed": "Install completed",
}
GROUPS_CHANGED = "groups-changed"


def _online_cutoff():
    return timezone.now() - timedelta(hours=settings.BREAKWATER_OFFLINE_THRESHOLD_HOURS)


def _in_active_wave(factory):
    """Devices staged in their tag's active wave, one by one or through a full-group rollout.

    Built per active wave (one per tag at most) as plain IN conditions, which the database
    answers with a hashed lookup while it walks the name index, instead of a correlated
    subquery per device.
    """
    from waves.models import Wave, WaveDevice, WaveGroup  # noqa: PLC0415 (waves depends on devices)

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
        facts = selectors.device_certificate_facts(device=device)
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


@factory_view("deadletters.view")
def dead_letter_list(request):
    """The factory's dead letters, newest first. Rows that name no device (entries that did not
    decode) belong to no factory: operators see them with `manage.py deadletters`."""
    page = keyset_paginate(selectors.dead_letters(factory=request.factory), request, fields=("-created_at", "-id"))
    devices = selectors.dead_letter_devices(page.rows)
    for letter in page:
        letter.device = devices.get(letter.device_id)
    context = {"page": page, "counts": selectors.dead_letter_counts(factory=request.factory)}
    return render_page(request, "devices/dead_letters.html", context, title="Dead letters", section="devices", fragments=("dead-letter-results",))


@factory_view("view")
def device_detail(request, uuid):
    from waves.models import WaveDevice  # noqa: PLC0415
    from waves.selectors import device_wave  # noqa: PLC0415

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
        "certificate": _certificate(device),
        "online": device.last_seen is not None and device.last_seen >= _online_cutoff(),
        "events": events,
        "active_wave": device_wave(device=device),
        "stagings": stagings,
    }
    return render_page(
        request, "devices/detail.html", context, title=f"Device {device.name}", section="devices", fragments=("device-events",)
    )


# --- groups ---------------------------------------------------------------------------------


GROUP_COUNT_CAP = 1_000


def _groups_with_counts(factory):
    """Groups with their device counts, each counted no further than GROUP_COUNT_CAP (shown as
    "1,000+"): a short index-only scan per group instead of counting the whole fleet."""
    capped = RawSQL(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {Device._meta.db_table} d "
        f"WHERE d.group_id = {DeviceGroup._meta.db_table}.id LIMIT %s) capped",
        (GROUP_COUNT_CAP + 1,),
    )
    return list(DeviceGroup.objects.filter(factory=factory).annotate(device_count=capped))


def _groups_page(request, *, create_form=None, assign_form=None, assign_result=None, status=200):
    groups = _groups_with_counts(request.factory)
    context = {
        "groups": groups,
        "create_form": create_form or GroupCreateForm(),
        "assign_form": assign_form or GroupAssignForm(groups=groups),
        "assign_result": assign_result,
        "count_cap": GROUP_COUNT_CAP,
        "own_messages": True,
    }
    return render_page(
        request,
        "devices/groups.html",
        context,
        title="Device groups",
        section="groups",
        fragments=("group-panels",),
        status=status,
    )


@factory_view("view")
def group_list(request):
    return _groups_page(request)


@factory_view("fleet.manage")
@require_POST
def group_create(request):
    form = GroupCreateForm(request.POST)
    if form.is_valid():
        try:
            group = services.device_group_create(
                factory=request.factory, name=form.cleaned_data["name"], description=form.cleaned_data["description"], actor=request.user
            )
        except ApplicationError as error:
            add_service_error(form, error, {"invalid": "name", "conflict": "name"})
            return _groups_page(request, create_form=form, status=service_error_status(error))
        messages.success(request, f"Group {group.name} created.")
        if not request.htmx:
            return redirect("group-list")
        return trigger_client_event(_groups_page(request), GROUPS_CHANGED)
    return _groups_page(request, create_form=form, status=400)


def _group_or_404(factory, group_id):
    return get_object_or_404(DeviceGroup, factory=factory, id=group_id)


@factory_view("fleet.manage")
@require_http_methods(["GET", "POST"])
def group_rename(request, group_id):
    group = _group_or_404(request.factory, group_id)
    form = GroupRenameForm(request.POST or None, initial={"name": group.name})
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            old = group.name
            try:
                services.device_group_rename(group=group, new_name=form.cleaned_data["name"], actor=request.user)
            except ApplicationError as error:
                add_service_error(form, error, {"invalid": "name", "conflict": "name"})
                status = service_error_status(error)
            else:
                messages.success(request, f"Group {old} is now {group.name}.")
                return redirect("group-list")
    return render_page(
        request, "devices/group_rename.html", {"group": group, "form": form}, title=f"Rename {group.name}", section="groups", status=status
    )


@factory_view("fleet.manage")
@require_http_methods(["GET", "POST"])
def group_delete(request, group_id):
    group = _group_or_404(request.factory, group_id)
    form = GroupDeleteForm(request.POST or None, group=group)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            name = group.name
            try:
                services.device_group_delete(group=group, actor=request.user)
            except ApplicationError as error:
                add_service_error(form, error)
                status = service_error_status(error)
            else:
                messages.success(request, f"Group {name} deleted; its devices now have no group.")
                return redirect("group-list")
    context = {"group": group, "form": form, "device_count": Device.objects.filter(group=group).count()}
    return render_page(request, "devices/group_delete.html", context, title=f"Delete {group.name}", section="groups", status=status)


@factory_view("fleet.manage")
@require_POST
def group_assign(request):
    groups = list(DeviceGroup.objects.filter(factory=request.factory))
    form = GroupAssignForm(request.POST, request.FILES, groups=groups)
    if not form.is_valid():
        return _groups_page(request, assign_form=form, status=400)
    group = form.cleaned_data["group_obj"]
    try:
        moved, unknown = services.devices_assign_group(
            factory=request.factory, uuids=form.cleaned_data["uuid_list"], group=group, actor=request.user
        )
    except ApplicationError as error:
        add_service_error(form, error, {"not_found": "group"})
        return _groups_page(request, assign_form=form, status=service_error_status(error))
    result = {"moved": moved, "group": group.name if group else None, "unknown": [str(u) for u in unknown]}
    response = _groups_page(request, assign_result=result, assign_form=GroupAssignForm(groups=groups, initial={"group": form.cleaned_data["group"]}))
    return trigger_client_event(response, GROUPS_CHANGED) if request.htmx else response
