"""Factory-wide reads shared by the dashboard and the tasks."""
from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from .models import AuditEntry, CiTarget, PrunedTarget, RereleaseVersion


def status_cache_key(kind, factory, *parts):
    """Cache key of a status read: it changes with every recorded change in the factory (any
    audit row: rollouts, completes, group moves) and with each status interval (check-ins)."""
    latest = AuditEntry.objects.filter(factory=factory).order_by("-created_at", "-id").values_list("id", "created_at").first()
    interval = max(1, int(settings.BREAKWATER_STATUS_INTERVAL_SECONDS))
    bucket = int(timezone.now().timestamp()) // interval
    # Times as well as ids: ids can repeat after a rolled-back transaction (SQLite), times do not.
    change = f"{latest[0]}@{latest[1].timestamp()}" if latest else "none"
    return ":".join(str(p) for p in ("bw", kind, factory.id, factory.created_at.timestamp(), *parts, change, bucket)), interval


def release_version_next(*, factory):
    """The next number of the factory's one sequence of builds and re-releases (pruned builds
    keep their numbers)."""
    highest = max(
        CiTarget.objects.filter(factory=factory).aggregate(v=Max("version"))["v"] or 0,
        PrunedTarget.objects.filter(factory=factory).aggregate(v=Max("version"))["v"] or 0,
        RereleaseVersion.objects.filter(factory=factory).aggregate(v=Max("version"))["v"] or 0,
    )
    return highest + 1


def rerelease_builds(*, factory, versions):
    """{version: build} for those of `versions` that are re-releases: the build whose content a
    device on that version runs. One query, for the versions on a page."""
    wanted = {v for v in versions if v is not None}
    if not wanted:
        return {}
    return dict(RereleaseVersion.objects.filter(factory=factory, version__in=wanted).values_list("version", "build_version"))
