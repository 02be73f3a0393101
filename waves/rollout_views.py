"""The rollout flow of the dashboard: scope -> preview (a dry run) -> edit the exact device list
-> roll out exactly these devices, in the background for large lists. Every change goes through
waves.services, waves.devicelists and waves.rollout_jobs."""
import hashlib
import heapq
import json
import secrets
from collections import Counter
from operator import itemgetter

from django.contrib import messages
from django.core.cache import cache
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from devices.uuids import MAX_UUIDS
from factory.auth import factory_view
from factory.errors import ApplicationError
from factory.views import add_service_error, render_page, service_error_status

from . import devicelists, rollout_jobs, services
from .forms import PreviewAddForm, RolloutConfirmForm, SaveListForm
from .models import Wave
from .views import detail_page, text_download, wave_or_404, wave_rollout_form

PREVIEW_TTL = 2 * 60 * 60
PREVIEW_ROWS = 200
ROLLOUT_DONE = "rollout-done"

# Which form field a service error belongs to, by its code.
ROLLOUT_ERROR_FIELDS = {"uuids_invalid": "uuids", "uuids_too_many": "uuids", "uuids_empty": "uuids", "not_found": "group"}


# --- rollout phase flow: preview, edit, roll out exactly these devices ---------------------------


def _preview_key(request, wave, token):
    return f"bw:rollout-preview:{request.factory.id}:{wave.id}:{request.user.id}:{token}"


def _preview_load(request, wave, token):
    state = cache.get(_preview_key(request, wave, token)) if token.isalnum() else None
    if state is None:
        raise Http404("This preview has expired. Start a new preview.")
    return state


def _preview_save(request, wave, token, state):
    cache.set(_preview_key(request, wave, token), state, PREVIEW_TTL)


def _digest(state):
    basis = json.dumps([state["group"], state["full_group"], state["uuids"]], separators=(",", ":"))
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def _dry_run(request, wave, state):
    """Run the service's selection for the state's exact scope; nothing changes."""
    if state["full_group"]:
        return services.wave_rollout(wave=wave, actor=request.user, group=state["group"], dry_run=True)
    return services.wave_rollout(
        wave=wave, actor=request.user, group=state["group"] or None, uuids=state["uuids"] or [], dry_run=True
    ) if state["uuids"] else None


def _breakdown(devices):
    by_group = Counter(d["group"] or "(No Group)" for d in devices)
    by_online = Counter("online" if d["online"] else "offline" for d in devices)
    by_version = Counter(d["target_version"] for d in devices)
    return {
        "groups": sorted(by_group.items(), key=lambda kv: (-kv[1], kv[0])),
        "online": by_online.get("online", 0),
        "offline": by_online.get("offline", 0),
        "versions": sorted(by_version.items(), key=lambda kv: (kv[0] is None, -(kv[0] or 0))),
    }


def _scope_label(state):
    group = f"group {state['group']}" if state["group"] else "the whole fleet"
    if state["full_group"]:
        return f"every device in group {state['group']}, now and joining later"
    return group


def _preview_context(request, wave, token, state, result, *, stored=False, add_form=None, save_form=None, confirm=False, error=None):
    """What the preview shows. A fresh dry run (`result`) is summarised into the state, so
    showing the preview again (the confirmation step, a reload) needs no new dry run; the
    roll-out itself selects again and reports any device that changed meanwhile."""
    if stored and "view" in state:
        view = state["view"]
    else:
        devices = result.devices if result is not None else []
        skipped = {s["uuid"]: s for s in state.get("skipped", [])}
        if result is not None:
            skipped.update({s["uuid"]: s for s in result.skipped})
        state["skipped"] = list(skipped.values())
        view = {
            "rows": heapq.nsmallest(PREVIEW_ROWS, devices, key=itemgetter("group", "name")),
            "count": result.count if result is not None else 0,
            "breakdown": _breakdown(devices),
        }
        if error is None:
            state["view"] = view
    state["count"] = view["count"]
    return {
        "wave": wave,
        "token": token,
        "state": state,
        "devices": view["rows"],
        "count": view["count"],
        "shown_rows": len(view["rows"]),
        "skipped": state["skipped"],
        "breakdown": view["breakdown"],
        "scope_label": _scope_label(state),
        "digest": _digest(state),
        "add_form": add_form or PreviewAddForm(),
        "save_form": save_form or SaveListForm(),
        "confirm": confirm,
        "editable": not state["full_group"] or view["count"] <= MAX_UUIDS,
        "error": error,
    }


def _render_preview(request, wave, context, status=200):
    return render_page(
        request, "waves/rollout_preview.html", context, title=f"Rollout preview · {wave.name}", section="waves",
        fragments=("rollout-panel",), status=status,
    )


@factory_view("rollout.preview")
@require_POST
def rollout_preview(request, name):
    """Step 2: a dry run of the chosen scope; its exact device list becomes an editable preview."""
    wave = wave_or_404(request, name)
    form = wave_rollout_form(request, wave, request.POST, request.FILES)
    if not form.is_valid():
        return detail_page(request, wave, rollout_form=form, status=400)
    data = form.cleaned_data
    try:
        result = services.wave_rollout(
            wave=wave, actor=request.user, group=data["group"] or None, limit=data["limit"] or None, uuids=data["uuid_list"], dry_run=True
        )
    except ApplicationError as error:
        field = ROLLOUT_ERROR_FIELDS.get(error.code)
        if "limit" in error.message.lower():
            field = "limit"
        add_service_error(form, error, {error.code: field} if field else None)
        return detail_page(request, wave, rollout_form=form, status=service_error_status(error))
    token = secrets.token_hex(12)
    state = {
        "group": data["group"],
        "limit": data["limit"],
        "source": data["uuid_source"],
        "listed": len(data["uuid_list"] or ()),
        "full_group": result.full_group,
        "uuids": [] if result.full_group else [d["uuid"] for d in result.devices],
        "skipped": result.skipped,
        "edited": False,
        "created_at": timezone.now().isoformat(),
    }
    context = _preview_context(request, wave, token, state, result)
    _preview_save(request, wave, token, state)
    response = _render_preview(request, wave, context)
    if request.htmx:
        response["HX-Push-Url"] = reverse("rollout-preview-show", args=[wave.name, token])
    return response


@factory_view("rollout.preview")
@require_GET
def rollout_preview_show(request, name, token):
    wave = wave_or_404(request, name)
    state = _preview_load(request, wave, token)
    if wave.status != Wave.Status.ACTIVE:
        error = f"wave {wave.name} is {wave.status}; only an active wave can be rolled out"
        return _render_preview(request, wave, _preview_context(request, wave, token, state, None, stored=True, error=error), status=409)
    context = _preview_context(request, wave, token, state, None, stored=True, confirm=request.GET.get("confirm") == "1")
    return _render_preview(request, wave, context)


@factory_view("rollout.preview")
@require_POST
def rollout_preview_edit(request, name, token):
    """Step 3: remove a device from, or add UUIDs to, the previewed list."""
    wave = wave_or_404(request, name)
    state = _preview_load(request, wave, token)
    add_form = None
    if state["full_group"]:
        # Editing a full-group preview turns it into an exact list of today's devices.
        result = _dry_run(request, wave, state)
        if result.count > MAX_UUIDS:
            context = _preview_context(request, wave, token, state, result, error=f"A list of more than {MAX_UUIDS:,} devices cannot be edited; use a limit.")
            return _render_preview(request, wave, context, status=400)
        state.update(full_group=False, uuids=[d["uuid"] for d in result.devices])
    status = 200
    if "remove" in request.POST:
        remove = request.POST.getlist("remove")
        state["uuids"] = [u for u in state["uuids"] if u not in remove]
        state["edited"] = True
    else:
        add_form = PreviewAddForm(request.POST)
        if add_form.is_valid() and request.POST.get("op") == "remove":
            # Lists longer than the table shows are trimmed by pasting the UUIDs to drop.
            drop = {str(u) for u in add_form.cleaned_data["uuids"]}
            state["uuids"] = [u for u in state["uuids"] if u not in drop]
            state["edited"] = True
            add_form = None
        elif add_form.is_valid():
            have = set(state["uuids"])
            added = [str(u) for u in add_form.cleaned_data["uuids"] if str(u) not in have]
            if len(have) + len(added) > MAX_UUIDS:
                add_form.add_error("uuids", f"The list would hold more than {MAX_UUIDS:,} devices, the most one rollout may stage.")
                status = 400
            else:
                state["uuids"] += added
                state["edited"] = True
                add_form = None
        else:
            status = 400
    try:
        result = _dry_run(request, wave, state)
    except ApplicationError as error:
        return _render_preview(request, wave, _preview_context(request, wave, token, state, None, stored=True, error=error.message), status=409)
    if result is not None and status == 200:
        # Listed UUIDs that are not candidates leave the list: it holds exactly what would be staged.
        state["uuids"] = [d["uuid"] for d in result.devices]
    context = _preview_context(request, wave, token, state, result, add_form=add_form)
    _preview_save(request, wave, token, state)  # after the context: it keeps the summary in the state
    return _render_preview(request, wave, context, status=status)


@factory_view("rollout.preview")
@require_GET
def rollout_preview_download(request, name, token):
    wave = wave_or_404(request, name)
    state = _preview_load(request, wave, token)
    uuids = state["uuids"]
    if state["full_group"]:
        uuids = [d["uuid"] for d in _dry_run(request, wave, state).devices]
    return text_download("\n".join(uuids) + ("\n" if uuids else ""), f"{wave.name}-preview-{len(uuids)}.txt")


@factory_view("devicelist.edit")
@require_POST
def rollout_preview_save(request, name, token):
    """QA keeps the reviewed list as a saved device list."""
    wave = wave_or_404(request, name)
    state = _preview_load(request, wave, token)
    form = SaveListForm(request.POST)
    status = 400
    if form.is_valid():
        try:
            # The reviewed list as it stands; a full-group preview lists the group's devices today.
            uuids = [d["uuid"] for d in _dry_run(request, wave, state).devices] if state["full_group"] else state["uuids"]
            saved = devicelists.device_list_create(factory=request.factory, actor=request.user, name=form.cleaned_data["name"], uuids=uuids)
        except ApplicationError as error:
            add_service_error(form, error, {"name": "name", "conflict": "name"})
            status = service_error_status(error)
        else:
            messages.success(request, f"Saved {len(uuids)} device UUIDs as list {saved.name}.")
            form = None
            status = 200
    return _render_preview(request, wave, _preview_context(request, wave, token, state, None, stored=True, save_form=form), status=status)


@factory_view("wave.manage")
@require_POST
def rollout_perform(request, name, token):
    """Step 4: stage exactly the previewed devices (or the group itself for an unedited
    full-group preview). The form carries the count and digest the user confirmed."""
    wave = wave_or_404(request, name)
    state = _preview_load(request, wave, token)
    form = RolloutConfirmForm(request.POST)
    if not form.is_valid() or form.cleaned_data["digest"] != _digest(state):
        context = _preview_context(
            request, wave, token, state, None, stored=True,
            error="The list changed since you confirmed it (edited in another tab?). Review it and confirm again.",
        )
        return _render_preview(request, wave, context, status=409)
    if not state["full_group"] and len(state["uuids"]) > rollout_jobs.background_threshold():
        # Too many rows to write while the user waits on one request: a task stages them and the
        # job page shows its progress.
        job = rollout_jobs.rollout_job_start(
            wave=wave, actor=request.user, group=state["group"] or None, uuids=state["uuids"], expected=len(state["uuids"])
        )
        cache.delete(_preview_key(request, wave, token))
        url = reverse("rollout-job", args=[wave.name, job])
        return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    try:
        if state["full_group"]:
            result = services.wave_rollout(wave=wave, actor=request.user, group=state["group"])
        else:
            result = services.wave_rollout(wave=wave, actor=request.user, group=state["group"] or None, uuids=state["uuids"])
    except ApplicationError as error:
        context = _preview_context(request, wave, token, state, None, stored=True, error=error.message)
        return _render_preview(request, wave, context, status=service_error_status(error))
    cache.delete(_preview_key(request, wave, token))
    expected = form.cleaned_data["count"]
    text = f"{result.message}."
    if result.count is not None and result.count != expected:
        text += f" {expected - result.count} of the {expected} previewed devices were staged meanwhile or changed and were skipped."
    messages.success(request, text)
    url = reverse("wave-detail", args=[wave.name])
    if request.htmx:
        return trigger_client_event(HttpResponseClientRedirect(url), ROLLOUT_DONE)
    return redirect(url)


@factory_view("view")
@require_GET
def rollout_job(request, name, token):
    """A background rollout's progress; the fragment polls itself until the job ends."""
    wave = wave_or_404(request, name)
    try:
        job = rollout_jobs.rollout_job_get(token=token, factory=request.factory)
    except ApplicationError as error:
        raise Http404(error.message) from None
    percent = int(100 * job["done"] / job["total"]) if job["total"] else 0
    context = {"wave": wave, "job": job, "token": token, "percent": percent}
    return render_page(request, "waves/rollout_job.html", context, title=f"Rolling out {wave.name}", section="waves", fragments=("rollout-job",))
