"""Dashboard page of CI builds: each build's tags and hardware IDs, and marking a build bad (or
unmarking it) with a reason. Every change goes through factory.builds. Setting a build's tags and
pruning it are posted to waves.ci_target_views, which renders this page again with `panel`."""
from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from .auth import factory_view
from .builds import bad_build_message, bad_builds, build_mark_bad, build_unmark_bad
from .errors import ApplicationError
from .forms import BadBuildForm
from .models import CiTarget
from .views import render_page, service_error_status

PER_PAGE = 20


def _builds(factory, versions):
    rows = {}
    for target in CiTarget.objects.filter(factory=factory, version__in=versions).order_by("hardware_id"):
        rows.setdefault(target.version, []).append(target)
    bad = bad_builds(factory=factory, versions=versions)
    return [
        {
            "version": v,
            "tags": sorted({tag for t in rows[v] for tag in t.tags}),
            "hardware_ids": [t.hardware_id for t in rows[v]],
            "created_at": min(t.created_at for t in rows[v]),
            "bad": bad.get(v),
        }
        for v in versions
        if v in rows
    ]


def build_page(request, *, form_version=None, form=None, error=None, panel=None, status=200):
    """The builds page; `panel` ({"version", "error", "preview", "tags", "append"}) opens one
    build's tags-and-prune panel with what the last request there answered."""
    versions = CiTarget.objects.filter(factory=request.factory).order_by("-version").values_list("version", flat=True).distinct()
    page = Paginator(versions, PER_PAGE).get_page(request.GET.get("page") or 1)
    builds = _builds(request.factory, list(page.object_list))
    for build in builds:
        build["form"] = form if build["version"] == form_version and form is not None else BadBuildForm(auto_id=f"id_%s_{build['version']}")
        build["error"] = error if build["version"] == form_version else None
        build["panel"] = panel if panel is not None and build["version"] == panel["version"] else None
    return render_page(
        request, "factory/builds.html", {"page": page, "builds": builds}, title="CI builds", section="builds", fragments=("build-results",), status=status
    )


@factory_view("view")
@require_GET
def build_list(request):
    return build_page(request)


@factory_view("wave.manage")
@require_POST
def build_bad_set(request, version, action):
    """Mark (`mark`) or unmark (`unmark`) build `version`; the page again, with the error if refused."""
    form = BadBuildForm(request.POST, auto_id=f"id_%s_{version}")
    if not form.is_valid():
        return build_page(request, form_version=version, form=form, status=400)
    service = build_mark_bad if action == "mark" else build_unmark_bad
    try:
        bad = service(factory=request.factory, actor=request.user, version=version, reason=form.cleaned_data["reason"])
    except ApplicationError as error:
        return build_page(request, form_version=version, form=form, error=error.message, status=error.status if error.status in (403, 404, 409) else service_error_status(error))
    if action == "mark":
        messages.success(request, f"Marked: {bad_build_message(bad)}. It goes into no new wave, re-release or rollout on any tag until unmarked.")
    else:
        messages.success(request, f"Build {version} is no longer marked bad: it can go into waves and rollouts again.")
    url = reverse("build-list")
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
