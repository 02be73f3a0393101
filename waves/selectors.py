"""Wave reads: lists, rollout history, wave status, factory status.

Status is set-based SQL (one pass over the tag's devices, grouped), never a loop over devices.
"""
from collections import defaultdict
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.core.paginator import Paginator
from django.db.models import Case, Count, IntegerField, Q, Value, When
from django.utils import timezone

from devices.models import Device
from factory.errors import ApplicationError, NotFound
from factory.models import CiTarget
from factory.tuf import selectors as tuf_selectors
from factory.tuf.services import wave_targets

from .models import Rollout, Wave, WaveDevice, WaveGroup
from .status_counts import minute_floor

NO_GROUP = "(No Group)"


def offline_cutoff(offline_threshold_hours=None):
    hours = settings.BREAKWATER_OFFLINE_THRESHOLD_HOURS if offline_threshold_hours is None else offline_threshold_hours
    try:
        hours = float(hours)
    except (TypeError, ValueError):
        raise ApplicationError(f"Offline threshold {str(hours)[:20]!r} is not a number of hours") from None
    if not 0 < hours <= 24 * 365:
        raise ApplicationError("The offline threshold must be between 0 and 8760 hours")
    # Whole minutes: the wave status counts devices by the minute they were last seen.
    return minute_floor(timezone.now() - timedelta(hours=hours))


def wave_get(*, factory, name):
    wave = Wave.objects.select_related("factory", "created_by", "finished_by").filter(factory=factory, name=name).first()
    if wave is None:
        raise NotFound(f"Wave {name} does not exist")
    return wave


def wave_list(*, factory, status=None, tag=None, page=1, per_page=20):
    """Waves, open ones first, newest first; filterable by status and tag; paged."""
    waves = Wave.objects.filter(factory=factory).select_related("created_by")
    if status:
        if status not in Wave.Status.values:
            raise ApplicationError(f"Unknown wave status {status!r}; choose one of {', '.join(Wave.Status.values)}")
        waves = waves.filter(status=status)
    if tag:
        waves = waves.filter(tag=tag)
    waves = waves.annotate(
        open_first=Case(When(status__in=Wave.OPEN_STATUSES, then=Value(0)), default=Value(1), output_field=IntegerField())
    ).order_by("open_first", "-created_at", "-id")
    try:
        per_page = max(1, min(int(per_page), 200))
        page = int(page)
    except (TypeError, ValueError):
        raise ApplicationError("Page and page size must be numbers") from None
    return Paginator(waves, per_page).get_page(page)


def tag_served_version(*, factory, tag):
    """The wave of the highest version devices on `tag` were ever served (a wave that was active,
    whatever became of it since), or None. A new wave must go above it: TUF clients refuse a
    targets version lower than one they have seen."""
    return (
        Wave.objects.filter(factory=factory, tag=tag, activated_at__isnull=False).only("name", "version").order_by("-version").first()
    )


def revert_builds(*, factory, tag):
    """[(build, "in production" | "CI build")] a revert of `tag` may go back to, newest first:
    the builds in the tag's production targets (their content as served), then CI builds on the tag."""
    production = {}
    for target in tuf_selectors.production_targets(factory=factory, tag=tag):
        if target["version"] is not None:
            production[target["version"]] = "in production"
    builds = dict(production)
    for version, custom in CiTarget.objects.filter(factory=factory).values_list("version", "custom"):
        if tag in (custom.get("tags") or []):
            builds.setdefault(version, "CI build")
    return sorted(builds.items(), reverse=True)


def revert_suggestion(*, wave):
    """For a completed wave: {"tag", "to_version", "prune"} taking its tag back to the build in
    production before it (the latest earlier completed wave's build, else the highest earlier
    version in the production targets), pruning the wave's own version; None if there is none."""
    if wave.status != Wave.Status.COMPLETE:
        return None
    earlier = (
        Wave.objects.filter(factory_id=wave.factory_id, tag=wave.tag, status=Wave.Status.COMPLETE, version__lt=wave.version)
        .exclude(pk=wave.pk)
        .order_by("-version")
        .first()
    )
    production = tuf_selectors.production_targets_versions(factory=wave.factory_id, tag=wave.tag)
    if earlier is not None:
        to_version = earlier.build_version
    else:
        below = [v for v in production if v < wave.build_version]
        if not below:
            return None
        to_version = below[-1]
    if to_version == wave.build_version:
        return None
    return {"tag": wave.tag, "to_version": to_version, "prune": [wave.version] if wave.version in production else []}


def wave_signing_payload(wave):
    return wave_targets.wave_signing_payload(bytes(wave.targets))


def wave_aktualizr_signing_payload(wave):
    return wave_targets.wave_aktualizr_signing_payload(bytes(wave.targets))


def wave_show(*, wave):
    """The wave's facts and its rollout history: who, when, scope, device count."""
    rollouts = [
        {
            "id": r.id,
            "created_at": r.created_at,
            "created_by": r.created_by.get_username() if r.created_by else "",
            "group": r.group_name,
            "limit": r.limit,
            "uuids": r.uuids_count,
            "full_group": r.full_group,
            "device_count": r.device_count,
        }
        for r in Rollout.objects.filter(wave=wave).select_related("created_by")
    ]
    return {"wave": wave, "rollouts": rollouts}


def rollout_devices(*, rollout):
    """The exact devices a rollout staged, by name, as a Device queryset (page it). A full-group
    rollout stages the group itself: its devices are the group's production devices on the tag,
    which are staged through it now."""
    if rollout.full_group:
        rows = Device.objects.filter(group_id=rollout.group_id, is_production=True, tag=rollout.wave.tag, factory_id=rollout.wave.factory_id)
    else:
        rows = Device.objects.filter(wave_stagings__rollout=rollout)
    return rows.order_by("name", "id")


def rollout_device_uuids(*, rollout):
    """The UUIDs of `rollout_devices`, all of them."""
    return [str(u) for u in rollout_devices(rollout=rollout).values_list("uuid", flat=True)]


def device_wave(*, device):
    """The active wave on the device's tag in which the device is staged, or None."""
    if not device.is_production:
        return None
    wave = Wave.objects.filter(factory_id=device.factory_id, tag=device.tag, status=Wave.Status.ACTIVE).first()
    if wave is None:
        return None
    if WaveDevice.objects.filter(wave=wave, device_id=device.id).exists():
        return wave
    if device.group_id and WaveGroup.objects.filter(wave=wave, group_id=device.group_id).exists():
        return wave
    return None


def group_order(rows):
    """Status rows of groups in the order every wave status shows them: groups the wave was rolled
    out to first (in rollout order), then the other groups by name, then "(No Group)"."""
    far = datetime.max.replace(tzinfo=dt_timezone.utc)
    return sorted(rows, key=lambda r: (r["group_id"] is None, r["rollout_time"] is None, r["rollout_time"] or far, r["group"]))


def factory_status(*, factory, offline_threshold_hours=None):
    """Per tag, production and test devices apart: latest target version, devices, on latest,
    online, and on orphan targets (a version that the tag's targets no longer list)."""
    cutoff = offline_cutoff(offline_threshold_hours)
    rows = (
        Device.objects.filter(factory=factory)
        .values("tag", "is_production", "target_version")
        .annotate(
            total=Count("id"),
            online=Count("id", filter=Q(last_seen__gte=cutoff)),
        )
    )
    by_key = defaultdict(list)
    for row in rows:
        by_key[(row["tag"], row["is_production"])].append(row)

    ci_versions = defaultdict(set)
    for version, custom in CiTarget.objects.filter(factory=factory).values_list("version", "custom"):
        for tag in custom.get("tags", []):
            ci_versions[tag].add(version)

    out = []
    for (tag, production), group_rows in sorted(by_key.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        if production:
            known = set(tuf_selectors.production_targets_versions(factory=factory, tag=tag))
            latest = tuf_selectors.production_targets_version(factory=factory, tag=tag)
        else:
            known = ci_versions.get(tag, set())
            latest = max(known) if known else None
        total = sum(r["total"] for r in group_rows)
        out.append(
            {
                "tag": tag,
                "production": production,
                "latest_version": latest,
                "total": total,
                "on_latest": sum(r["total"] for r in group_rows if latest is not None and r["target_version"] == latest),
                "online": sum(r["online"] for r in group_rows),
                "orphan": sum(r["total"] for r in group_rows if r["target_version"] is not None and r["target_version"] not in known),
                "versions": {r["target_version"]: r["total"] for r in sorted(group_rows, key=lambda r: -(r["target_version"] or 0))},
            }
        )
    return out
