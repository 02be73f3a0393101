"""Wave reads: lists, rollout history, wave status, factory status.

Status is set-based SQL (one pass over the tag's devices, grouped), never a loop over devices.
"""
from collections import defaultdict
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.core.cache import cache
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Case, Count, IntegerField, Q, Value, When
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from devices.models import Device, DeviceGroup
from factory.errors import ApplicationError, NotFound
from factory.models import CiTarget
from factory.selectors import status_cache_key
from factory.tuf import selectors as tuf_selectors
from factory.tuf.services import wave_targets

from .models import Rollout, Wave, WaveDevice, WaveGroup
from . import rereleases
from .outcomes import device_outcomes_sql, failed_sql, fetched_sql, outcome_params, version_updated

NO_GROUP = "(No Group)"


def offline_cutoff(offline_threshold_hours=None):
    hours = settings.BREAKWATER_OFFLINE_THRESHOLD_HOURS if offline_threshold_hours is None else offline_threshold_hours
    try:
        hours = float(hours)
    except (TypeError, ValueError):
        raise ApplicationError(f"offline threshold {str(hours)[:20]!r} is not a number of hours") from None
    if not 0 < hours <= 24 * 365:
        raise ApplicationError("the offline threshold must be between 0 and 8760 hours")
    return timezone.now() - timedelta(hours=hours)


def wave_get(*, factory, name):
    wave = Wave.objects.select_related("factory", "created_by", "finished_by").filter(factory=factory, name=name).first()
    if wave is None:
        raise NotFound(f"wave {name} does not exist")
    return wave


def wave_list(*, factory, status=None, tag=None, page=1, per_page=20):
    """Waves, open ones first, newest first; filterable by status and tag; paged."""
    waves = Wave.objects.filter(factory=factory).select_related("created_by")
    if status:
        if status not in Wave.Status.values:
            raise ApplicationError(f"unknown wave status {status!r}; choose one of {', '.join(Wave.Status.values)}")
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
        raise ApplicationError("page and page size must be numbers") from None
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


# One pass over the tag's devices, grouped by (group, current version): the per-group counts,
# the version distribution and when each group first got the wave all come from these few rows.
# Failed and held are counted as waves/outcomes.py defines them; the rows of devices not
# updated keep them.
_STATUS_SQL = f"""
SELECT d.group_id, d.target_version,
       COUNT(*) AS total,
       MIN(r.created_at) AS first_rollout,
       COUNT(*) FILTER (WHERE d.last_seen >= %(cutoff)s) AS online,
       COUNT(*) FILTER (WHERE (wd.id IS NOT NULL OR wg.id IS NOT NULL)) AS staged,
       COUNT(*) FILTER (WHERE {failed_sql("o")}) AS failed,
       COUNT(*) FILTER (WHERE (wd.id IS NOT NULL OR wg.id IS NOT NULL) AND {fetched_sql("d")}) AS fetched
  FROM devices_device d
  LEFT JOIN waves_wavedevice wd ON wd.device_id = d.id AND wd.wave_id = %(wave)s
  LEFT JOIN waves_rollout r ON r.id = wd.rollout_id
  LEFT JOIN waves_wavegroup wg ON wg.group_id = d.group_id AND wg.wave_id = %(wave)s
  LEFT JOIN ({device_outcomes_sql()}) o ON o.device_id = d.id
 WHERE d.factory_id = %(factory)s AND d.is_production AND d.tag = %(tag)s
 GROUP BY d.group_id, d.target_version
"""


def _timestamp(value):
    """A timestamp from raw SQL: SQLite hands back text, in UTC."""
    if isinstance(value, str):
        value = parse_datetime(value)
        if timezone.is_naive(value):
            value = timezone.make_aware(value, dt_timezone.utc)
    return value


def _rows(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def group_order(rows):
    """Status rows of groups in the order every wave status shows them: groups the wave was rolled
    out to first (in rollout order), then the other groups by name, then "(No Group)"."""
    far = datetime.max.replace(tzinfo=dt_timezone.utc)
    return sorted(rows, key=lambda r: (r["group_id"] is None, r["rollout_time"] is None, r["rollout_time"] or far, r["group"]))


def wave_status(*, wave, offline_threshold_hours=None):
    """Per group on the wave's tag (rollout groups first, then other groups, then "(No Group)"):
    total, online, on the wave version, newer, older, scheduled, failed, held, rollout time;
    totals; and the version distribution per group. For a re-release (a revert) also the devices
    on the bad build (among the older) and labels of the versions (waves/rereleases.py)."""
    cutoff = offline_cutoff(offline_threshold_hours)
    params = {**outcome_params(wave), "cutoff": cutoff}
    counts = defaultdict(lambda: dict.fromkeys(("total", "online", "on_wave", "newer", "older", "scheduled", "failed", "held"), 0))
    versions = defaultdict(dict)
    rollout_times = {}
    for group_id, version, total, first_rollout, online, staged, failed, fetched in _rows(_STATUS_SQL, params):
        first_rollout = _timestamp(first_rollout)
        if first_rollout is not None and (group_id not in rollout_times or first_rollout < rollout_times[group_id]):
            rollout_times[group_id] = first_rollout
        row = counts[group_id]
        row["total"] += total
        row["online"] += online
        versions[group_id][version] = total
        if version_updated(version, wave):
            row["on_wave" if version == wave.version else "newer"] += total
        else:
            row["older"] += total
            row["scheduled"] += staged  # staged, not yet updated
            row["failed"] += failed
            row["held"] += fetched  # staged, saw the wave's targets, not updated

    # groups staged whole got the wave when their rollout ran
    for group_id, created_at in WaveGroup.objects.filter(wave=wave).values_list("group_id", "rollout__created_at"):
        if group_id not in rollout_times or created_at < rollout_times[group_id]:
            rollout_times[group_id] = created_at

    names = dict(DeviceGroup.objects.filter(factory_id=wave.factory_id).values_list("id", "name"))
    rows = []
    all_versions = defaultdict(int)
    for group_versions in versions.values():
        for version, total in group_versions.items():
            all_versions[version] += total
    labels = rereleases.version_labels(all_versions, wave)
    for group_id, values in counts.items():
        ordered = dict(sorted(versions[group_id].items(), key=lambda kv: (kv[0] is None, -(kv[0] or 0))))
        rows.append(
            {
                "group": names.get(group_id, NO_GROUP) if group_id else NO_GROUP,
                "group_id": group_id,
                **values,
                "scheduled": values["scheduled"] if wave.status == Wave.Status.ACTIVE else 0,
                "held": values["held"] if wave.status == Wave.Status.CANCELED else 0,
                "rollout_time": rollout_times.get(group_id),
                "versions": ordered,
                "on_bad_build": rereleases.on_bad_build(ordered, wave),
                "version_chips": [
                    {"label": labels["none" if v is None else str(v)], "count": n, "role": rereleases.version_role(v, wave)} for v, n in ordered.items()
                ],
            }
        )
    rows = group_order(rows)
    keys = ("total", "online", "on_wave", "newer", "older", "scheduled", "failed", "held", "on_bad_build")
    totals = {key: sum(r[key] for r in rows) for key in keys}
    return {"wave": wave, "groups": rows, "totals": totals, "offline_cutoff": cutoff, "version_labels": labels}


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


def cached_wave_status(wave, offline_threshold_hours=None):
    """The wave's status table, computed at most once per status interval and factory change.

    Aggregating a million devices takes the database most of a second; every viewer and every
    poll within the interval shares that one computation, which the beat's aggregation task
    makes at the start of each interval (so a viewer rarely waits for it).
    """
    key, interval = status_cache_key(
        "wave-status", wave.factory, wave.id, wave.created_at.timestamp(), wave.status, offline_threshold_hours
    )
    status = cache.get(key)
    if status is None:
        status = {**wave_status(wave=wave, offline_threshold_hours=offline_threshold_hours), "computed_at": timezone.now()}
        status["wave"] = None  # the wave row is not cached with the numbers
        cache.set(key, status, interval * 2)
    return {**status, "wave": wave}
