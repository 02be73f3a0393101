"""The builds page's tags-and-prune panel: set a CI build's tags, preview pruning it (a dry run)
and prune it. Here, not in factory.build_views, because what pruning keeps is decided in waves;
every change goes through the services the API and CLI call."""
import re

from django.contrib import messages
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect

from factory.auth import factory_view
from factory.build_views import build_page
from factory.errors import ApplicationError
from factory.plurals import counted
from factory.tuf.services.ci_targets import ci_targets_tag

from .build_pruning import ci_targets_prune


def _back(request):
    url = reverse("build-list")
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _status(error):
    return error.status if error.status in (403, 404, 409) else 400


@factory_view("targets.publish")
@require_POST
def build_tags_set(request, version):
    text = request.POST.get("tags", "")
    append = request.POST.get("append") == "on"
    tags = [t for t in re.split(r"[,\s]+", text) if t]
    try:
        changes = ci_targets_tag(factory=request.factory, actor=request.user, refs=[str(version)], tags=tags, append=append)
    except ApplicationError as error:
        panel = {"version": version, "error": error.message, "tags": text[:1000], "append": append}
        return build_page(request, panel=panel, status=_status(error))
    if any(c["before"] != c["after"] for c in changes):
        after = sorted({t for c in changes for t in c["after"]})
        messages.success(request, f"Build {version} is now tagged {', '.join(after)}: the CI targets were re-signed, test devices see the change at their next poll.")
    else:
        messages.info(request, f"Build {version} already had these tags: nothing changed.")
    return _back(request)


@factory_view("view")
@require_POST
def build_prune(request, version):
    """Without `confirm=yes` a dry run, shown in the build's panel; with it, the pruning."""
    confirmed = request.POST.get("confirm") == "yes"
    try:
        result = ci_targets_prune(factory=request.factory, actor=request.user, targets=[str(version)], dry_run=not confirmed)
    except ApplicationError as error:
        return build_page(request, panel={"version": version, "error": error.message}, status=_status(error))
    if not confirmed:
        return build_page(request, panel={"version": version, "preview": result})
    if result.pruned:
        messages.success(request, f"Pruned {counted(len(result.pruned), 'target')} of build {version}: test devices no longer see them.")
    for kept in result.kept:
        messages.warning(request, f"Kept {kept['name']}: {kept['reason']}.")
    return _back(request)
