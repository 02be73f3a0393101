"""Dashboard views of the factory app: home, factory switch, factory status, audit log."""
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from .auth import factory_view
from .models import AuditEntry, Membership


@login_required
def home(request):
    if request.factory is None:
        return render(request, "factory/no_factory.html", status=403)
    return redirect("wave-list") if _has_url("wave-list") else redirect("factory-status")


def _has_url(name):
    from django.urls import NoReverseMatch, reverse

    try:
        reverse(name)
        return True
    except NoReverseMatch:
        return False


@login_required
@require_POST
def factory_switch(request):
    factory_id = request.POST.get("factory")
    if Membership.objects.filter(user=request.user, factory_id=factory_id).exists():
        request.session["factory_id"] = int(factory_id)
    return redirect("home")


@factory_view("view")
def factory_status(request):
    from waves.selectors import factory_status as factory_status_rows  # noqa: PLC0415

    return render(request, "factory/status.html", {"tags": factory_status_rows(factory=request.factory)})


@factory_view("view")
def audit_log(request):
    entries = AuditEntry.objects.filter(factory=request.factory).order_by("-created_at", "-id")
    action = request.GET.get("action", "").strip()
    actor = request.GET.get("actor", "").strip()
    if action:
        entries = entries.filter(action__startswith=action)
    if actor:
        entries = entries.filter(actor_name=actor)
    page = Paginator(entries, 50).get_page(request.GET.get("page"))
    return render(request, "factory/audit_log.html", {"page": page, "action": action, "actor": actor})
