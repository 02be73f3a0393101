"""Dashboard pages for device groups and the reports the gateway's flush set aside (dead letters).
The device list and a device's page show wave membership: they are in waves/device_pages.py."""
from django.contrib import messages
from django.db.models.expressions import RawSQL
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from factory.auth import factory_view
from factory.errors import ApplicationError
from factory.views import add_service_error, keyset_paginate, render_page, service_error_status

from . import selectors, services
from .tag_moves import device_tag_set
from .forms import DeviceTagForm, GroupAssignForm, GroupCreateForm, GroupDeleteForm, GroupRenameForm
from .models import Device, DeviceGroup

GROUPS_CHANGED = "groups-changed"


@require_POST
@factory_view("fleet.manage")
def device_tag_update(request, uuid):
    """The device page's tag form: move the device to another tag (`devices config updates --tag`)."""
    device = get_object_or_404(Device.objects.select_related("factory"), factory=request.factory, uuid=uuid)
    form = DeviceTagForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose the tag to move the device to (at most 64 characters).")
    else:
        try:
            device, previous = device_tag_set(device=device, tag=form.cleaned_data["tag"], actor=request.user)
        except ApplicationError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, f"Device {device.name} moved from tag {previous} to {device.tag}; it follows it at its next poll.")
    url = reverse("device-detail", args=[device.uuid])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


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
