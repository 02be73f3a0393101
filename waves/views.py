"""Dashboard pages of a wave: list, create and sign, detail with status, complete and cancel.
The rollout flow has its own module (rollout_views), and so do saved device lists
(devicelist_views). Every change goes through waves.services."""
import json

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404, QueryDict
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from devices.models import Device, DeviceGroup
from factory.auth import factory_view
from factory.builds import bad_builds, build_bad
from factory.downloads import attachment
from factory.errors import ApplicationError
from factory.forms import StatusForm
from factory.models import CiTarget
from factory.replica import replica_reads
from factory.tuf import metadata as md
from factory.tuf import selectors as tuf_selectors
from factory.tuf.models import TufKey, TufRepository
from factory.views import add_service_error, distinct_values, render_page, service_error_status

from . import expiry, retries, selectors, services, status_table
from .forms import ConfirmNameForm, RolloutForm, WaveCreateForm, WaveFilterForm, WaveRevertForm, WaveSignForm
from .models import Rollout, SavedDeviceList, Wave

# wave_init's errors share codes, so their field is told by what the message is about (in any
# case: "Wave name ..." at the start of a sentence, "the wave name" inside one).
INIT_ERROR_WORDS = (
    ("marked bad", "version"),
    ("build version", "to_version"),
    ("neither in the production targets", "to_version"),
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
    message = error.message.lower()
    return next((field for word, field in INIT_ERROR_WORDS if word.lower() in message), None)


# --- helpers ---------------------------------------------------------------------------------


def wave_or_404(request, name):
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
                "rerelease_of": md.content_source(name, custom)[1] if custom.get("rerelease_of") else None,
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


def _threshold(request):
    """The `offline_threshold` (hours) asked for, like fioctl's --offline-threshold; None: the default."""
    form = StatusForm(request.GET)
    hours = form.cleaned_data.get("offline_threshold") if form.is_valid() else None
    return form, hours


def _sign_command(wave):
    return f"breakwater waves sign {wave.name} -k /absolute/path/to/targets.only.key.tgz"


# --- list, create, sign ------------------------------------------------------------------------


@factory_view("view")
@replica_reads()
def wave_list(request):
    form = WaveFilterForm(request.GET, tags=_factory_tags(request.factory))
    data = form.cleaned_data if form.is_valid() else {}
    page = selectors.wave_list(
        factory=request.factory, status=data.get("status") or None, tag=data.get("tag") or None, page=request.GET.get("page") or 1
    )
    page.object_list = list(page.object_list)
    bad = bad_builds(factory=request.factory, versions={w.build_version for w in page.object_list})
    for w in page.object_list:
        w.bad = bad.get(w.build_version)
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
        try:
            prune_choices = sorted(tuf_selectors.production_targets_versions(factory=factory, tag=tag), reverse=True)
        except ApplicationError:
            prune_choices = []
    bad = bad_builds(factory=factory)
    # Builds that cannot go out on the chosen tag are shown disabled, with why (the service's words).
    refused = {v: e.message for v, e in services.wave_version_refusals(factory=factory, tag=tag, versions=versions).items()} if tag else {}
    return WaveCreateForm(data, files, versions=versions, tags=tags, prune_choices=prune_choices, initial=initial, bad=bad, refused=refused)


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


def _revert_form(request, data=None, files=None, initial=None):
    factory = request.factory
    released = [t["tag"] for t in tuf_selectors.production_tags(factory=factory) if t["version"] is not None]
    tags = sorted(set(released) | set(_factory_tags(factory)))
    # A tag something was released on comes first: only there is there something to go back from.
    tag = (data or {}).get("tag") or (initial or {}).get("tag") or (released or tags or [None])[0]
    builds, prune_choices = [], []
    if tag:
        try:
            builds = [(v, f"Build {v} ({where})") for v, where in selectors.revert_builds(factory=factory, tag=tag)]
            prune_choices = sorted(tuf_selectors.production_targets_versions(factory=factory, tag=tag), reverse=True)
        except ApplicationError:
            pass
    return WaveRevertForm(data, files, tags=tags, builds=builds, prune_choices=prune_choices, initial=initial)


def _revert_initial(request):
    """What the "Revert this release" link of a completed wave fills in (tag, build, prune)."""
    initial = {"expires_days": None}
    for key in ("tag", "to_version", "name"):
        if request.GET.get(key):
            initial[key] = request.GET[key][:64]
    prune = [v for v in request.GET.getlist("prune") if v.isdigit()]
    if prune:
        initial["prune"] = prune
    return initial


@factory_view("wave.manage")
@require_http_methods(["GET", "POST"])
def wave_revert(request):
    """Create a revert: a wave re-releasing an earlier build's content at a new, higher version."""
    page = {"title": "Revert a tag to an earlier build", "section": "waves", "fragments": ("wave-revert",)}
    if request.method == "GET":
        form = _revert_form(request, initial=_revert_initial(request))
        return render_page(request, "waves/revert.html", {"form": form}, **page)
    form = _revert_form(request, request.POST, request.FILES)
    preview, status = None, 400
    if form.is_valid():
        data = form.cleaned_data
        args = {
            "factory": request.factory,
            "actor": request.user,
            "name": data["name"],
            "tag": data["tag"],
            "to_version": data["to_version"],
            "prune": data["prune"],
            "expires_days": data["expires_days"],
        }
        if request.POST.get("action") != "create":
            try:
                preview, status = _wave_preview(services.wave_revert(**args, dry_run=True)), 200
            except ApplicationError as error:
                add_service_error(form, error, {error.code: _init_error_field(error)})
                status = service_error_status(error)
        else:
            try:
                # The re-release and its first signature land together: a key archive that does
                # not sign leaves no wave behind and claims no number.
                with transaction.atomic():
                    wave = services.wave_revert(**args)
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
                where = f"version {wave.version}, build {wave.rerelease_of} re-released"
                if wave.status == Wave.Status.ACTIVE:
                    messages.success(request, f"Revert {wave.name} ({where}) is signed and active. Roll it out in phases below.")
                else:
                    messages.info(request, f"Revert {wave.name} ({where}) was created and waits for offline signatures.")
                url = reverse("wave-detail", args=[wave.name])
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    return render_page(request, "waves/revert.html", {"form": form, "preview": preview}, status=status, **page)


@factory_view("wave.manage")
@require_POST
def wave_sign(request, name):
    wave = wave_or_404(request, name)
    form = WaveSignForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            wave = services.wave_sign(wave=wave, actor=request.user, key_archive=form.cleaned_data["key_archive"])
        except ApplicationError as error:
            add_service_error(form, error, {error.code: "key_archive"})
            return detail_page(request, wave, sign_form=form, status=service_error_status(error))
        if wave.status == Wave.Status.ACTIVE:
            messages.success(request, f"Wave {wave.name} is signed and active.")
        else:
            messages.info(request, f"Signature added; wave {wave.name} still needs more offline signatures.")
        url = reverse("wave-detail", args=[wave.name])
        return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    return detail_page(request, wave, sign_form=form, status=400)


# --- detail and status -------------------------------------------------------------------------


def wave_rollout_form(request, wave, data=None, files=None):
    groups = DeviceGroup.objects.filter(factory=request.factory)
    saved = SavedDeviceList.objects.filter(factory=request.factory).only("id", "name", "uuids")
    return RolloutForm(data, files, groups=groups, saved_lists=saved)


def _revert_link(wave):
    """The "Revert this release" link of a completed wave, prefilled; None if nothing to go back to."""
    suggestion = selectors.revert_suggestion(wave=wave)
    if suggestion is None:
        return None
    query = QueryDict(mutable=True)
    query.update({"tag": suggestion["tag"], "to_version": suggestion["to_version"]})
    query.setlist("prune", [str(v) for v in suggestion["prune"]])
    return {**suggestion, "url": f"{reverse('wave-revert')}?{query.urlencode()}"}


def detail_page(request, wave, *, sign_form=None, rollout_form=None, status=200):
    shown = selectors.wave_show(wave=wave)
    threshold_form, hours = _threshold(request)
    wave_status = status_table.cached_wave_status(wave, hours)
    context = {
        "wave": wave,
        "rollouts": shown["rollouts"],
        "facts": _targets_facts(wave),
        "expiry_warnings": expiry.wave_expiring_targets(wave=wave),
        "status": wave_status,
        "sign_form": sign_form or WaveSignForm(),
        "sign_command": _sign_command(wave),
        "rollout_form": rollout_form or wave_rollout_form(request, wave),
        "status_interval": int(settings.BREAKWATER_STATUS_INTERVAL_SECONDS),
        "threshold_form": threshold_form,
        "bad": build_bad(factory=wave.factory, version=wave.build_version),
        "revert": _revert_link(wave),
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
    wave = wave_or_404(request, name)
    if request.htmx and request.htmx.target == "wave-status":
        # The status panel polls: answer it without the rest of the page's reads.
        threshold_form, hours = _threshold(request)
        context = {
            "wave": wave,
            "status": status_table.cached_wave_status(wave, hours),
            "status_interval": int(settings.BREAKWATER_STATUS_INTERVAL_SECONDS),
            "threshold_form": threshold_form,
        }
        return render_page(request, "waves/detail.html", context, title=f"Wave {wave.name}", section="waves", fragments=("wave-status",))
    return detail_page(request, wave)


@factory_view("view")
@require_GET
def rollout_devices_download(request, name, rollout_id):
    wave = wave_or_404(request, name)
    rollout = Rollout.objects.filter(wave=wave, id=rollout_id).select_related("wave").first()
    if rollout is None:
        raise Http404("No such rollout for this wave.")
    uuids = selectors.rollout_device_uuids(rollout=rollout)
    return text_download("\n".join(uuids) + ("\n" if uuids else ""), f"{wave.name}-rollout-{rollout.id}.txt")


ROLLOUT_DEVICES_PER_PAGE = 500


@factory_view("view")
@require_GET
def rollout_devices_page(request, name, rollout_id):
    """The exact devices one rollout staged (UUID, name, group), 500 a page as the API pages them."""
    wave = wave_or_404(request, name)
    rollout = Rollout.objects.filter(wave=wave, id=rollout_id).select_related("wave").first()
    if rollout is None:
        raise Http404("No such rollout for this wave.")
    rows = selectors.rollout_devices(rollout=rollout).select_related("group")
    page = Paginator(rows, ROLLOUT_DEVICES_PER_PAGE).get_page(request.GET.get("page") or 1)
    return render_page(
        request,
        "waves/rollout_devices.html",
        {"wave": wave, "rollout": rollout, "page": page},
        title=f"Wave {wave.name}: rollout {rollout.id} devices",
        section="waves",
        fragments=("rollout-devices",),
    )


def text_download(text, filename):
    return attachment(text, filename=filename, content_type="text/plain; charset=utf-8")


# --- complete and cancel -------------------------------------------------------------------------


def _finish(request, name, *, action):
    wave = wave_or_404(request, name)
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
    context = {
        "wave": wave,
        "form": form,
        "action": action,
        "status": status_table.cached_wave_status(wave),
        "bad": build_bad(factory=wave.factory, version=wave.build_version),
    }
    return render_page(
        request, "waves/finish.html", context, title=f"{action.capitalize()} {wave.name}", section="waves", status=status
    )


@factory_view("wave.manage")
@require_POST
def wave_retry(request, name):
    """Offer the wave again to every device that failed it (waves.retries)."""
    wave = wave_or_404(request, name)
    try:
        result = retries.wave_retry_failed(wave=wave, actor=request.user)
    except ApplicationError as error:
        messages.error(request, f"Nothing was retried: {error.message}")
    else:
        messages.success(request, f"{result.message}: they count as installing again and see new metadata at their next poll.")
    url = reverse("wave-detail", args=[wave.name])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@factory_view("wave.manage")
@require_http_methods(["GET", "POST"])
def wave_complete(request, name):
    return _finish(request, name, action="complete")


@factory_view("wave.manage")
@require_http_methods(["GET", "POST"])
def wave_cancel(request, name):
    return _finish(request, name, action="cancel")
