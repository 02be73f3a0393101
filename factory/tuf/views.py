"""Dashboard pages of the TUF repository: the factory's keys and roots, and the key changes that
wait for offline signatures (sign with an uploaded key archive, abandon, renew the root)."""
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe
from django_htmx.http import HttpResponseClientRedirect

from factory.auth import factory_view
from factory.downloads import attachment
from factory.errors import ApplicationError, NotFound
from factory.forms import KeyChangeSignForm
from factory.views import add_service_error, render_page, service_error_status

from . import selectors as tuf_selectors
from .keys import ONLINE_ROLES
from .services import root_changes

@require_safe
@factory_view("view")
def keys_page(request):
    return _keys(request)


def _keys(request, *, sign_form=None, status=200):
    factory = request.factory
    change = tuf_selectors.root_change_pending(factory=factory)
    keys = tuf_selectors.key_list(factory=factory)
    offline_targets = [k for k in keys if k["role"] == "targets" and not k["online"] and not k["retired_at"]]
    rotatable = {k["keyid"] for k in keys if k["online"] and not k["retired_at"] and k["role"] in ONLINE_ROLES}
    return render_page(
        request,
        "factory/keys.html",
        {
            "summary": tuf_selectors.repository_summary(factory=factory),
            "keys": keys,
            # The last offline targets key cannot be retired: offer the button only where it can work.
            "retirable": {k["keyid"] for k in offline_targets} if len(offline_targets) > 1 else set(),
            "rotatable": rotatable,
            "root_versions": [(channel, tuf_selectors.root_versions(factory=factory, channel=channel)) for channel in ("ci", "production")],
            "change": change,
            "documents": tuf_selectors.root_change_payloads(change=change) if change else [],
            "sign_form": sign_form or KeyChangeSignForm(),
        },
        title="TUF keys",
        section="keys",
        status=status,
    )


@require_safe
@factory_view("view")
def root_download(request, channel, version):
    """One root version as N.root.json, the bytes devices are served (`keys download-roots`)."""
    if channel not in ("ci", "production"):
        raise Http404("No such root.")
    try:
        data = tuf_selectors.root_get(factory=request.factory, channel=channel, version=version)
    except NotFound:
        raise Http404(f"No {channel} root version {version}.") from None
    return attachment(data, filename=f"{version}.root.json", content_type="application/json")


def _back_to_keys(request):
    url = reverse("keys")
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _change_message(request, change, done):
    if change.status == change.Status.APPLIED:
        messages.success(request, f"{done} A new root version is published.")
    else:
        messages.info(request, f"{done} The key change waits for offline signatures: see what each document still needs below.")


@require_POST
@factory_view("keys.manage")
def key_retire(request, keyid):
    try:
        change = root_changes.offline_key_retire(factory=request.factory, actor=request.user, keyid=keyid)
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        _change_message(request, change, f"Offline key {change.details['keyid'][:16]}… is leaving the roots.")
    return _back_to_keys(request)


@require_POST
@factory_view("keys.manage")
def key_rotate_online(request, role):
    try:
        change = root_changes.online_key_rotate(factory=request.factory, actor=request.user, role=role)
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        _change_message(request, change, f"The online {change.details['role']} key is being replaced by {change.details['keyid'][:16]}….")
    return _back_to_keys(request)


@require_POST
@factory_view("keys.manage")
def key_change_sign(request):
    form = KeyChangeSignForm(request.POST, request.FILES)
    if not form.is_valid():
        return _keys(request, sign_form=form, status=400)
    try:
        change = root_changes.root_change_sign_with_archive(factory=request.factory, actor=request.user, key_archive=form.cleaned_data["key_archive"])
    except ApplicationError as error:
        add_service_error(form, error, {"key_archive": "key_archive", "invalid": "key_archive"})
        return _keys(request, sign_form=form, status=service_error_status(error))
    _change_message(request, change, "Signatures added.")
    return _back_to_keys(request)


@require_POST
@factory_view("keys.manage")
def key_change_abandon(request):
    try:
        root_changes.root_change_abandon(factory=request.factory, actor=request.user)
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, "The pending key change is abandoned; the roots are as they were.")
    return _back_to_keys(request)


@require_POST
@factory_view("keys.manage")
def root_renew(request):
    try:
        change = root_changes.root_renew(factory=request.factory, actor=request.user)
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        _change_message(request, change, "The root is renewed for another year.")
    return _back_to_keys(request)
