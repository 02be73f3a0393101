"""The wave's status table: per group, the devices in each state, counted by the one count of
waves/status.py (`group_states`) that the live status, its samples, charts and CSV exports read,
so every door shows the same numbers. The dashboard's table, the API's status and `breakwater
waves status` / `breakwater status` read it."""
from collections import defaultdict

from django.core.cache import cache
from django.utils import timezone

from devices.models import DeviceGroup
from factory.selectors import status_cache_key

from . import rereleases
from .outcomes import version_updated
from .selectors import NO_GROUP, group_order, offline_cutoff
from .states import STATES
from .status import group_states


def wave_status(*, wave, offline_threshold_hours=None):
    """Per group on the wave's tag (rollout groups first, then other groups, then "(No Group)"):
    total, online, on the wave version, newer, older, the devices in each state of
    waves/states.py (scheduled, downloading, installing, failed, held, offline, not scheduled),
    stuck, rollout time; totals; and the version distribution per group. For a re-release (a
    revert) also the devices on the bad build (among the older) and labels of the versions
    (waves/rereleases.py).

    The states are counted by waves/status.py's `group_states`, the one count the live status,
    its samples, charts and CSV exports read too, so every door shows the same numbers."""
    cutoff = offline_cutoff(offline_threshold_hours)
    groups = group_states(wave=wave, cutoff=cutoff)
    names = dict(DeviceGroup.objects.filter(factory_id=wave.factory_id).values_list("id", "name"))
    all_versions = defaultdict(int)
    for row in groups.values():
        for version, total in row["versions"].items():
            all_versions[None if version == "none" else int(version)] += total
    labels = rereleases.version_labels(all_versions, wave)
    rows = []
    for group_id, row in groups.items():
        versions = {(None if v == "none" else int(v)): n for v, n in row["versions"].items()}
        ordered = dict(sorted(versions.items(), key=lambda kv: (kv[0] is None, -(kv[0] or 0))))
        on_wave = versions.get(wave.version, 0)
        updated = sum(n for v, n in versions.items() if version_updated(v, wave))
        rows.append(
            {
                "group": names.get(group_id, NO_GROUP) if group_id else NO_GROUP,
                "group_id": group_id,
                "total": row["total"],
                "online": row["online"],
                "on_wave": on_wave,
                "newer": updated - on_wave,
                "older": row["total"] - updated,
                **{state: row["states"][state] for state in STATES if state != "updated"},
                "stuck": row["stuck"],
                "rollout_time": row["rollout_time"],
                "versions": ordered,
                "on_bad_build": rereleases.on_bad_build(ordered, wave),
                "version_chips": [
                    {"label": labels["none" if v is None else str(v)], "count": n, "role": rereleases.version_role(v, wave)} for v, n in ordered.items()
                ],
            }
        )
    rows = group_order(rows)
    keys = ("total", "online", "on_wave", "newer", "older", *(s for s in STATES if s != "updated"), "stuck", "on_bad_build")
    totals = {key: sum(r[key] for r in rows) for key in keys}
    return {"wave": wave, "groups": rows, "totals": totals, "offline_cutoff": cutoff, "version_labels": labels}


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
