"""Dashboard views of the factory app (home, factory switch, audit log) and the
small helpers every dashboard view shares: page-or-fragment rendering, keyset paging, form errors."""
from datetime import datetime, time, timedelta

from django.contrib.auth.decorators import login_required
from django.db.models import Min, Q
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_POST, require_safe

from .auth import factory_view
from .forms import AuditFilterForm
from .models import AuditEntry, Membership

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


def _query_without_cursor(request):
    query = request.GET.copy()
    for key in ("after", "before"):
        query.pop(key, None)
    return query.urlencode()


def service_error_status(error):
    """HTTP status for a service error shown in a form: 403 stays 403, every other rule is 400."""
    return 403 if getattr(error, "status", 400) == 403 else 400

