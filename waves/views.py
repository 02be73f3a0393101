"""Dashboard pages for waves: list, create and sign, detail with status, the rollout phase flow
(scope -> preview -> edit -> roll out exactly these devices), complete and cancel, and QA's
saved device lists. Every change goes through waves.services / waves.devicelists."""
import hashlib
import heapq
import json
import secrets
from collections import Counter
from datetime import timedelta
from operator import itemgetter

from django.conf import settings
from django.contrib import messages
from django.core.cache import cache
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from devices.models import Device, DeviceGroup
from devices.selectors import uuids_in
from devices.uuids import MAX_UUIDS
from factory.auth import factory_view
from factory.downloads import attachment
from factory.errors import ApplicationError
from factory.forms import StatusForm
from factory.models import CiTarget
from factory.views import add_service_error, distinct_values, render_page, service_error_status

from . import devicelists, rollout_jobs, selectors, services
from .forms import (
    ConfirmNameForm,
    DeviceListForm,
    PreviewAddForm,
    RolloutConfirmForm,
    RolloutForm,
    SaveListForm,
    WaveCreateForm,
    WaveFilterForm,
    WaveSignForm,
)
from .models import Rollout, SavedDeviceList, Wave

PREVIEW_TTL = 2 * 60 * 60
PREVIEW_ROWS = 200
EXPIRY_WARNING_DAYS = 30
ROLLOUT_DONE = "rollout-done"

# Which form field a service error belongs to, by its code.
ROLLOUT_ERROR_FIELDS = {"uuids_invalid": "uuids", "uuids_too_many": "uuids", "uuids_empty": "uuids", "not_found": "group"}
# wave_init's errors share codes, so their field is told by what the message is about.
INIT_ERROR_WORDS = (
    ("wave name", "name"),
    ("wave named", "name"),
    ("prune", "prune"),
    ("expir", "expires_days"),
    ("CI build", "version"),
    ("on tag", "tag"),
    ("tag", "tag"),
    ("version", "version"),
)


def _init_error_field(error):
    return next((field for word, field in INIT_ERROR_WORDS if word in error.message), None)


# --- helpers ---------------------------------------------------------------------------------


def _wave_or_404(request, name):
    try:
        return selectors.wave_get(factory=request.factory, name=name)
    except ApplicationError:
        raise Http404(f"No wave named {name} in this factory.") from None


def _factory_tags(factory):
    """Tags that CI builds target and tags devices follow (index skip-scan, not a fleet scan)."""
    tags = set(distinct_values(Device.objects.filter(factory=factory), "tag", limit=100))
    for custom in CiTarget.objects.filter(factory=factory).values_list("custom", flat=True):
        tags.update(custom.get("tags", []))
    return sorted(tags)


def _targets_facts(wave):
    """What the wave's signed targets say: each target, the expiry, and who signed."""
    from factory.tuf.models import TufKey, TufRepository  # noqa: PLC0415

    if not wave.targets:
        return {"targets": [], "signatures": [], "expires": wave.expires_at, "threshold": None}
    document = json.loads(bytes(wave.targets))
    signed = document.get("signed", {})
    targets = []
    for name, info in sorted(signed.get("targets", {}).items()):
        custom = info.get("custom", {})
        targets.append(
            {
                "name": name,
                "version": custom.get("version", ""),
                "hardware_ids": ", ".join(custom.get("hardwareIds", [])),
                "sha256": info.get("hashes", {}).get("sha256", ""),
                "length": info.get("length"),
                "new": str(custom.get("version", "")) == str(wave.version),
            }
        )
    targets.sort(key=lambda t: (not t["new"], -int(t["version"]) if str(t["version"]).isdigit() else 0, t["name"]))
    keyids = [s.get("keyid", "") for s in document.get("signatures", []) if s.get("sig")]
    keys = {k.keyid: k for k in TufKey.objects.filter(factory_id=wave.factory_id, keyid__in=keyids).select_related("created_by")}
    signatures = [
        {
            "keyid": keyid,
            "online": keys[keyid].online if keyid in keys else None,
            "owner": keys[keyid].created_by.get_username() if keyid in keys and keys[keyid].created_by else "",
        }
        for keyid in keyids
    ]
    repository = TufRepository.objects.filter(factory_id=wave.factory_id).first()
    return {
        "targets": targets,
        "signatures": signatures,
        "offline_signatures": sum(1 for s in signatures if s["online"] is False),
        "threshold": repository.production_targets_threshold if repository else None,
        "expires": wave.expires_at,
    }


def _expiry_warning(wave):
    if wave.status in (Wave.Status.COMPLETE, Wave.Status.CANCELED):
        return None
    left = wave.expires_at - timezone.now()
    if left <= timedelta(0):
        return "This wave's targets have expired: devices refuse them. Cancel it and create a new wave."
    if left <= timedelta(days=EXPIRY_WARNING_DAYS):
        return (
            f"This wave's targets expire in {left.days} day{'s' if left.days != 1 else ''} ({wave.expires_at:%Y-%m-%d}). "
            "Production targets cannot be re-signed online: complete the wave or create a new one before then."
        )
    return None


def _threshold(request):
    """The `offline_threshold` (hours) asked for, like fioctl's --offline-threshold; None: the default."""
    form = StatusForm(request.GET)
    hours = form.cleaned_data.get("offline_threshold") if form.is_valid() else None
    return form, hours


def _sign_command(wave):
    return f"breakwater waves sign {wave.name} -k /absolute/path/to/targets.only.key.tgz"


# --- list, create, sign ------------------------------------------------------------------------


@factory_view("view")
def wave_list(request):
    form = WaveFilterForm(request.GET, tags=_factory_tags(request.factory))
    data = form.cleaned_data if form.is_valid() else {}
    page = selectors.wave_list(
        factory=request.factory, status=data.get("status") or None, tag=data.get("tag") or None, page=request.GET.get("page") or 1
    )
    query = request.GET.copy()
    query.pop("page", None)
    return render_page(
        request,
        "waves/list.html",
        {"form": form, "page": page, "query": query.urlencode()},
        title="Waves",
        section="waves",
        fragments=("wave-results",),
    )


def _create_form(request, data=None, files=None, initial=None):
    factory = request.factory
    versions = sorted(set(CiTarget.objects.filter(factory=factory).values_list("version", flat=True)), reverse=True)
    tags = _factory_tags(factory)
    tag = (data or {}).get("tag") or (initial or {}).get("tag") or (tags[0] if tags else None)
    prune_choices = []
    if tag:
        from factory.tuf import selectors as tuf_selectors  # noqa: PLC0415

        try:
            prune_choices = sorted(tuf_selectors.production_targets_versions(factory=factory, tag=tag), reverse=True)
        except ApplicationError:
            prune_choices = []
    return WaveCreateForm(data, files, versions=versions, tags=tags, prune_choices=prune_choices, initial=initial)


def _wave_preview(wave):
    return {"wave": wave, "facts": _targets_facts(wave)}


@factory_view("wave.manage")
@require_http_methods(["GET", "POST"])
def wave_create(request):
    if request.method == "GET":
        form = _create_form(request, initial={"expires_days": None})
        return render_page(request, "waves/create.html", {"form": form}, title="Create a wave", section="waves", fragments=("wave-create",))
    form = _create_form(request, request.POST, request.FILES)
    preview = None
    status = 400
    if form.is_valid():
        data = form.cleaned_data
        args = {
            "factory": request.factory,
            "actor": request.user,
            "name": data["name"],
            "version": data["version"],
            "tag": data["tag"],
            "prune": data["prune"],
            "expires_days": data["expires_days"],
        }
        if request.POST.get("action") != "create":
            try:
                preview = _wave_preview(services.wave_init(**args, dry_run=True))
                status = 200
            except ApplicationError as error:
                add_service_error(form, error, {error.code: _init_error_field(error)})
                status = service_error_status(error)
        else:
            try:
                # Init and the first signature land together: a key archive that does not sign
                # leaves no half-made wave behind.
                with transaction.atomic():
                    wave = services.wave_init(**args)
                    if data["key_archive"]:
                        try:
                            wave = services.wave_sign(wave=wave, actor=request.user, key_archive=data["key_archive"])
                        except ApplicationError as error:
                            add_service_error(form, error, {error.code: "key_archive"})
                            raise
            except ApplicationError as error:
                if not form.errors:
                    add_service_error(form, error, {error.code: _init_error_field(error)})
                status = service_error_status(error)
            else:
                if wave.status == Wave.Status.ACTIVE:
                    messages.success(request, f"Wave {wave.name} is signed and active. Roll it out in phases below.")
                else:
                    messages.info(request, f"Wave {wave.name} was created and waits for offline signatures.")
                url = reverse("wave-detail", args=[wave.name])
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    return render_page(
        request,
        "waves/create.html",
        {"form": form, "preview": preview},
        title="Create a wave",
        section="waves",
        fragments=("wave-create",),
        status=status,
    )


@factory_view("wave.manage")
@require_POST
def wave_sign(request, name):
    wave = _wave_or_404(request, name)
    form = WaveSignForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            wave = services.wave_sign(wave=wave, actor=request.user, key_archive=form.cleaned_data["key_archive"])
        except ApplicationError as error:
            add_service_error(form, error, {error.code: "key_archive"})
            return _detail(request, wave, sign_form=form, status=service_error_status(error))
        if wave.status == Wave.Status.ACTIVE:
            messages.success(request, f"Wave {wave.name} is signed and active.")
        else:
            messages.info(request, f"Signature added; wave {wave.name} still needs more offline signatures.")
        url = reverse("wave-detail", args=[wave.name])
        return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    return _detail(request, wave, sign_form=form, status=400)


# --- detail and status -------------------------------------------------------------------------


def _rollout_form(request, wave, data=None, files=None):
    groups = DeviceGroup.objects.filter(factory=request.factory)
    saved = SavedDeviceList.objects.filter(factory=request.factory).only("id", "name", "uuids")
    return RolloutForm(data, files, groups=groups, saved_lists=saved)


def _detail(request, wave, *, sign_form=None, rollout_form=None, status=200):
    shown = selectors.wave_show(wave=wave)
    threshold_form, hours = _threshold(request)
    wave_status = selectors.cached_wave_status(wave, hours)
    context = {
        "wave": wave,
        "rollouts": shown["rollouts"],
        "facts": _targets_facts(wave),
        "expiry_warning": _expiry_warning(wave),
        "status": wave_status,
        "sign_form": sign_form or WaveSignForm(),
        "sign_command": _sign_command(wave),
        "rollout_form": rollout_form or _rollout_form(request, wave),
        "status_interval": int(settings.BREAKWATER_STATUS_INTERVAL_SECONDS),
        "threshold_form": threshold_form,
    }
    return render_page(
        request,
        "waves/detail.html",
        context,
        title=f"Wave {wave.name}",
        section="waves",
        fragments=("wave-status", "rollout-panel", "rollout-history"),
        status=status,
    )


@factory_view("view")
@require_GET
def wave_detail(request, name):
    wave = _wave_or_404(request, name)
    if request.htmx and request.htmx.target == "wave-status":
        # The status panel polls: answer it without the rest of the page's reads.
        threshold_form, hours = _threshold(request)
        context = {
            "wave": wave,
            "status": selectors.cached_wave_status(wave, hours),
            "status_interval": int(settings.BREAKWATER_STATUS_INTERVAL_SECONDS),
            "threshold_form": threshold_form,
        }
        return render_page(request, "waves/detail.html", context, title=f"Wave {wave.name}", section="waves", fragments=("wave-status",))
    return _detail(request, wave)


@factory_view("view")
@require_GET
def rollout_devices_download(request, name, rollout_id):
    wave = _wave_or_404(request, name)
    rollout = Rollout.objects.filter(wave=wave, id=rollout_id).select_related("wave").first()
    if rollout is None:
        raise Http404("No such rollout for this wave.")
    uuids = selectors.rollout_device_uuids(rollout=rollout)
    return _text_download("\n".join(uuids) + ("\n" if uuids else ""), f"{wave.name}-rollout-{rollout.id}.txt")


def _text_download(text, filename):
    return attachment(text, filename=filename, content_type="text/plain; charset=utf-8")


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
    wave = _wave_or_404(request, name)
    form = _rollout_form(request, wave, request.POST, request.FILES)
    if not form.is_valid():
        return _detail(request, wave, rollout_form=form, status=400)
    data = form.cleaned_data
    try:
        result = services.wave_rollout(
            wave=wave, actor=request.user, group=data["group"] or None, limit=data["limit"] or None, uuids=data["uuid_list"], dry_run=True
        )
    except ApplicationError as error:
        field = ROLLOUT_ERROR_FIELDS.get(error.code)
        if "limit" in error.message:
            field = "limit"
        add_service_error(form, error, {error.code: field} if field else None)
        return _detail(request, wave, rollout_form=form, status=service_error_status(error))
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
    wave = _wave_or_404(request, name)
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
    wave = _wave_or_404(request, name)
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
    wave = _wave_or_404(request, name)
    state = _preview_load(request, wave, token)
    uuids = state["uuids"]
    if state["full_group"]:
        uuids = [d["uuid"] for d in _dry_run(request, wave, state).devices]
    return _text_download("\n".join(uuids) + ("\n" if uuids else ""), f"{wave.name}-preview-{len(uuids)}.txt")


@factory_view("devicelist.edit")
@require_POST
def rollout_preview_save(request, name, token):
    """QA keeps the reviewed list as a saved device list."""
    wave = _wave_or_404(request, name)
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
    wave = _wave_or_404(request, name)
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
    if result.count != expected:
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
    wave = _wave_or_404(request, name)
    try:
        job = rollout_jobs.rollout_job_get(token=token, factory=request.factory)
    except ApplicationError as error:
        raise Http404(error.message) from None
    percent = int(100 * job["done"] / job["total"]) if job["total"] else 0
    context = {"wave": wave, "job": job, "token": token, "percent": percent}
    return render_page(request, "waves/rollout_job.html", context, title=f"Rolling out {wave.name}", section="waves", fragments=("rollout-job",))


# --- complete and cancel -------------------------------------------------------------------------


def _finish(request, name, *, action):
    wave = _wave_or_404(request, name)
    form = ConfirmNameForm(request.POST or None, expected=wave.name)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            service = services.wave_complete if action == "complete" else services.wave_cancel
            try:
                service(wave=wave, actor=request.user)
            except ApplicationError as error:
                add_service_error(form, error)
                status = service_error_status(error)
            else:
                done = "completed: every production device on tag {tag} now sees version {version}" if action == "complete" else "canceled: no further device will be updated to it"
                messages.success(request, f"Wave {wave.name} {done.format(tag=wave.tag, version=wave.version)}.")
                url = reverse("wave-detail", args=[wave.name])
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    context = {"wave": wave, "form": form, "action": action, "status": selectors.cached_wave_status(wave)}
    return render_page(
        request, "waves/finish.html", context, title=f"{action.capitalize()} {wave.name}", section="waves", status=status
    )


@factory_view("wave.manage")
@require_http_methods(["GET", "POST"])
def wave_complete(request, name):
    return _finish(request, name, action="complete")


@factory_view("wave.manage")
@require_http_methods(["GET", "POST"])
def wave_cancel(request, name):
    return _finish(request, name, action="cancel")


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
                messages.success(request, f"Device list {saved.name} saved with {len(form.cleaned_data['uuid_list'])} UUIDs.")
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
    return _text_download("\n".join(uuids) + ("\n" if uuids else ""), f"{saved.name}.lst")


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

