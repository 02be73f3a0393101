"""Dashboard pages of QA's saved device lists: index, create, edit, export, delete. Every change
goes through waves.devicelists."""
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from devices.models import Device
from devices.selectors import uuids_in
from factory.auth import factory_view
from factory.errors import ApplicationError
from factory.plurals import counted
from factory.views import add_service_error, render_page, service_error_status

from . import devicelists
from .forms import DeviceListForm
from .models import SavedDeviceList
from .views import text_download


# --- saved device lists ------------------------------------------------------------------------


def _device_list_or_404(request, list_id):
    try:
        return devicelists.device_list_get(factory=request.factory, list_id=list_id)
    except ApplicationError:
        raise Http404("No such device list in this factory.") from None


def _list_summary(saved):
    uuids = devicelists.device_list_uuids(saved)
    return {"total": len(uuids), "known": _known_devices(saved.factory, uuids)}


def _known_devices(factory, uuids):
    """How many of `uuids` are devices of `factory`: an index-only scan of (factory, uuid)."""
    if not uuids:
        return 0
    return Device.objects.filter(factory=factory, uuid__in=uuids_in(uuids)).count()


@factory_view("view")
@require_GET
def device_list_index(request):
    lists = SavedDeviceList.objects.filter(factory=request.factory).select_related("created_by")
    for saved in lists:
        saved.count = len(devicelists.device_list_uuids(saved))
    return render_page(
        request, "waves/lists.html", {"lists": lists, "form": DeviceListForm()}, title="Device lists", section="lists"
    )


@factory_view("devicelist.edit")
@require_http_methods(["GET", "POST"])
def device_list_create(request):
    form = DeviceListForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                saved = devicelists.device_list_create(
                    factory=request.factory, actor=request.user, name=form.cleaned_data["name"], uuids=form.cleaned_data["uuid_list"]
                )
            except ApplicationError as error:
                add_service_error(form, error, {"name": "name", "uuids_invalid": "uuids", "uuids_too_many": "uuids"})
                status = service_error_status(error)
            else:
                messages.success(request, f"Device list {saved.name} saved with {counted(len(form.cleaned_data['uuid_list']), 'UUID')}.")
                url = reverse("devicelist-detail", args=[saved.id])
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    return render_page(request, "waves/list_edit.html", {"form": form, "saved": None}, title="New device list", section="lists", status=status)


@factory_view("view")
@require_http_methods(["GET", "POST"])
def device_list_detail(request, list_id):
    saved = _device_list_or_404(request, list_id)
    if request.method == "POST":
        return _device_list_update(request, saved)
    form = DeviceListForm(initial={"name": saved.name, "uuids": saved.uuids})
    return render_page(
        request,
        "waves/list_edit.html",
        {"form": form, "saved": saved, "summary": _list_summary(saved)},
        title=f"Device list {saved.name}",
        section="lists",
    )


@factory_view("devicelist.edit")
def _device_list_update(request, saved):
    form = DeviceListForm(request.POST, request.FILES)
    status = 400
    if form.is_valid():
        try:
            devicelists.device_list_update(device_list=saved, actor=request.user, name=form.cleaned_data["name"], uuids=form.cleaned_data["uuid_list"])
        except ApplicationError as error:
            add_service_error(form, error, {"name": "name", "uuids_invalid": "uuids", "uuids_too_many": "uuids"})
            status = service_error_status(error)
        else:
            messages.success(request, f"Device list {saved.name} saved.")
            url = reverse("devicelist-detail", args=[saved.id])
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    return render_page(
        request,
        "waves/list_edit.html",
        {"form": form, "saved": saved, "summary": _list_summary(saved)},
        title=f"Device list {saved.name}",
        section="lists",
        status=status,
    )


@factory_view("view")
@require_GET
def device_list_export(request, list_id):
    saved = _device_list_or_404(request, list_id)
    uuids = devicelists.device_list_uuids(saved)
    return text_download("\n".join(uuids) + ("\n" if uuids else ""), f"{saved.name}.lst")


@factory_view("devicelist.edit")
@require_POST
def device_list_delete(request, list_id):
    saved = _device_list_or_404(request, list_id)
    name = saved.name
    try:
        devicelists.device_list_delete(device_list=saved, actor=request.user)
    except ApplicationError as error:
        messages.error(request, error.message)
        url = reverse("devicelist-detail", args=[list_id])
    else:
        messages.success(request, f"Device list {name} deleted.")
        url = reverse("devicelist-list")
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
