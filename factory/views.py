"""Dashboard views of the factory app (home, factory switch, status, audit log, TUF keys) and the
small helpers every dashboard view shares: page-or-fragment rendering, keyset paging, form errors."""
from datetime import datetime, time, timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db.models import Min, Q
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_POST, require_safe
from django_htmx.http import HttpResponseClientRedirect

from .auth import factory_view
from .errors import ApplicationError
from .forms import AuditFilterForm, KeyChangeSignForm, StatusForm
from .models import AuditEntry, Membership
from .selectors import status_cache_key
from .tuf import selectors as tuf_selectors
from .tuf.services import root_changes

PER_PAGE = 50


# --- shared helpers -------------------------------------------------------------------------


def render_page(request, template, context=None, *, title, section, fragments=(), status=200):
    """Render the full page, or for htmx the fragment it targets.

    A request aimed at `#main` (navigation) gets the page's `content` partial; one aimed at the
    id of a listed fragment (a filtered table, a panel) gets that partial only. History restores
    and boosted requests need the whole page.
    """
    context = {**(context or {}), "page_title": title, "section": section}
    name = template
    htmx = getattr(request, "htmx", None)
    if htmx and not htmx.boosted and not htmx.history_restore_request:
        name = f"{template}#{htmx.target if htmx.target in fragments else 'content'}"
    response = render(request, name, context, status=status)
    patch_vary_headers(response, ("HX-Request", "HX-Target"))
    return response


def add_service_error(form, error, fields=None):
    """Put a service's error message on the field it concerns (by error code), else on the form."""
    field = (fields or {}).get(getattr(error, "code", None))
    form.add_error(field if field in form.fields else None, error.message)


class KeysetPage:
    """One page of rows ordered by a unique key; links carry the first/last row's id."""

    def __init__(self, rows, *, has_next, has_previous):
        self.rows = rows
        self.has_next = has_next and bool(rows)
        self.has_previous = has_previous and bool(rows)
        self.next_cursor = rows[-1].pk if rows else None
        self.previous_cursor = rows[0].pk if rows else None

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)


def _beyond(anchor, fields, *, forward):
    """Q for rows strictly after (forward) or before `anchor` in the order of `fields`."""
    condition = Q()
    equal = {}
    for field in fields:
        name = field.lstrip("-")
        descending = field.startswith("-") == forward
        condition |= Q(**equal, **{f"{name}__{'lt' if descending else 'gt'}": anchor[name]})
        equal[name] = anchor[name]
    first = fields[0].lstrip("-")
    # The redundant range on the leading column lets the database start its index scan there.
    bound = {f"{first}__{'lte' if fields[0].startswith('-') == forward else 'gte'}": anchor[first]}
    return Q(**bound) & condition


def keyset_paginate(queryset, request, *, fields, per_page=PER_PAGE):
    """Page `queryset` by `fields` (the last one unique, e.g. ("name", "id")) without OFFSET or COUNT.

    `?after=<id>` continues after that row, `?before=<id>` goes back; a row that left the
    result (deleted, filtered out) still works as a cursor as long as it exists.
    """
    after, before = request.GET.get("after", ""), request.GET.get("before", "")
    cursor, forward = (after, True) if after else (before, False)
    anchor = None
    if cursor.isdigit():
        anchor = queryset.model._default_manager.filter(pk=int(cursor)).values(*[f.lstrip("-") for f in fields]).first()
    if anchor is None:
        rows = list(queryset.order_by(*fields)[: per_page + 1])
        return KeysetPage(rows[:per_page], has_next=len(rows) > per_page, has_previous=False)
    if forward:
        rows = list(queryset.filter(_beyond(anchor, fields, forward=True)).order_by(*fields)[: per_page + 1])
        return KeysetPage(rows[:per_page], has_next=len(rows) > per_page, has_previous=True)
    reverse = [f[1:] if f.startswith("-") else f"-{f}" for f in fields]
    rows = list(queryset.filter(_beyond(anchor, fields, forward=False)).order_by(*reverse)[: per_page + 1])
    more = len(rows) > per_page
    rows = rows[:per_page]
    rows.reverse()
    return KeysetPage(rows, has_next=True, has_previous=more)


def capped_count(queryset, cap=10_000):
    """How many rows match, counting no further than `cap` (shown as "10,000+")."""
    return queryset.order_by()[: cap + 1].count()


def distinct_values(queryset, field, *, limit=200):
    """Distinct values of an indexed column by skipping through the index (one lookup per value),
    so listing a million devices' tags costs a few index probes instead of a full scan."""
    values = []
    current = queryset.aggregate(v=Min(field))["v"]
    while current is not None and len(values) < limit:
        values.append(current)
        current = queryset.filter(**{f"{field}__gt": current}).aggregate(v=Min(field))["v"]
    return values


# --- pages ----------------------------------------------------------------------------------


@login_required
def home(request):
    if request.factory is None:
        return render(request, "factory/no_factory.html", {"page_title": "No factory"}, status=403)
    return redirect("wave-list")


@login_required
@require_POST
def factory_switch(request):
    factory_id = request.POST.get("factory", "")
    if factory_id.isdigit() and Membership.objects.filter(user=request.user, factory_id=int(factory_id)).exists():
        request.session["factory_id"] = int(factory_id)
    return redirect("home")


@factory_view("view")
def factory_status(request):
    from waves.selectors import factory_status as factory_status_rows  # noqa: PLC0415 (waves imports factory)

    form = StatusForm(request.GET)
    hours = form.cleaned_data["offline_threshold"] if form.is_valid() and form.cleaned_data["offline_threshold"] else None
    # Aggregating a million devices takes the database a few hundred milliseconds: viewers and
    # polls within one status interval share one computation.
    key, interval = status_cache_key("factory-status", request.factory, hours)
    rows = cache.get(key)
    if rows is None:
        rows = factory_status_rows(factory=request.factory, offline_threshold_hours=hours)
        cache.set(key, rows, interval * 2)
    return render_page(
        request,
        "factory/status.html",
        {"status": rows, "form": form, "threshold": hours or settings.BREAKWATER_OFFLINE_THRESHOLD_HOURS},
        title="Factory status",
        section="status",
        fragments=("status-panel",),
    )


@require_safe  # the audit log is read-only at every door
@factory_view("view")
def audit_log(request):
    form = AuditFilterForm(request.GET)
    entries = AuditEntry.objects.filter(factory=request.factory)
    actions = distinct_values(entries, "action")
    form.fields["action"].choices = [("", "Any action")] + [(a, a) for a in actions]
    if form.is_valid():
        data = form.cleaned_data
        if data["action"]:
            entries = entries.filter(action=data["action"])
        if data["actor"]:
            entries = entries.filter(actor_name=data["actor"])
        if data["target"]:
            entries = entries.filter(target=data["target"])
        tz = timezone.get_current_timezone()
        if data["since"]:
            entries = entries.filter(created_at__gte=timezone.make_aware(datetime.combine(data["since"], time.min), tz))
        if data["until"]:
            entries = entries.filter(created_at__lt=timezone.make_aware(datetime.combine(data["until"] + timedelta(days=1), time.min), tz))
    else:
        entries = entries.none()
    page = keyset_paginate(entries, request, fields=("-created_at", "-id"))
    for entry in page:
        entry.detail_items = [(key, _detail_text(value)) for key, value in (entry.details or {}).items()]
    return render_page(
        request,
        "factory/audit_log.html",
        {"page": page, "form": form, "query": _query_without_cursor(request)},
        title="Audit log",
        section="audit",
        fragments=("audit-results",),
    )


def _detail_text(value):
    """An audit detail as a person reads it: lists joined, yes/no, a dash for nothing."""
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


# --- TUF keys -----------------------------------------------------------------------------------


@require_safe
@factory_view("view")
def keys_page(request):
    return _keys(request)


def _keys(request, *, sign_form=None, status=200):
    factory = request.factory
    change = tuf_selectors.root_change_pending(factory=factory)
    keys = tuf_selectors.key_list(factory=factory)
    offline_targets = [k for k in keys if k["role"] == "targets" and not k["online"] and not k["retired_at"]]
    return render_page(
        request,
        "factory/keys.html",
        {
            "summary": tuf_selectors.repository_summary(factory=factory),
            "keys": keys,
            # The last offline targets key cannot be retired: offer the button only where it can work.
            "retirable": {k["keyid"] for k in offline_targets} if len(offline_targets) > 1 else set(),
            "change": change,
            "documents": tuf_selectors.root_change_payloads(change=change) if change else [],
            "sign_form": sign_form or KeyChangeSignForm(),
        },
        title="TUF keys",
        section="keys",
        status=status,
    )


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


def _query_without_cursor(request):
    query = request.GET.copy()
    for key in ("after", "before"):
        query.pop(key, None)
    return query.urlencode()


def service_error_status(error):
    """HTTP status for a service error shown in a form: 403 stays 403, every other rule is 400."""
    return 403 if getattr(error, "status", 400) == 403 else 400

