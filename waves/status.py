"""Live wave status: per-group device states, stuck devices, failures and time to update,
computed set-based (a few grouped SQL statements, never a loop over devices) and stored as a
time series of samples, one per wave and aggregation interval.

Every device on the wave's tag is in exactly one of the states of waves/states.py. A device is *stuck* (counted apart, across states) when it is scheduled, downloading,
installing or offline, and nothing has happened since: it was staged, or last reported
progress, longer ago than the stuck threshold.
"""
import logging
import math
from collections import defaultdict
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import F, Max, Min, Q
from django.db.models.functions import Mod
from django.utils import timezone

from devices.models import DeviceGroup
from factory.auth import authorize
from factory.plurals import counted

from . import rereleases
from .models import Rollout, Wave, WaveStatusSample
from .outcomes import (
    failure_sql,
    outcome_params,
    sql_time,
    updated_sql,
    version_updated,
    wave_report_sql,
)
from .status_counts import (
    as_datetime,
    connection_for_reads,
    counts_compact,
    counts_kept,
    fleet_counts_rebuild,
    minute_floor,
    parts_counted,
    parts_recounted,
    wave_counts_drop,
    wave_counts_rebuild,
)
from .selectors import NO_GROUP, factory_status, group_order, offline_cutoff
from .states import STATES

# A finished wave is still sampled for a while: devices keep updating to a completed wave, and
# the held devices of a canceled one only show after the cancel.
FOLLOW_FINISHED = timedelta(hours=24)
# Failure reasons are free text from devices; the most frequent ones are kept per group.
TOP_REASONS = 10
REASON_CHARS = 80
OTHER_REASONS = "(other reasons)"
SERIES_POINTS = 400

logger = logging.getLogger(__name__)


# --- SQL helpers ---------------------------------------------------------------------------------


def _rows(sql, params):
    with connection_for_reads().cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


_STAGED_GROUPS = """
SELECT wg.group_id, wg.rollout_id, r.created_at FROM waves_wavegroup wg JOIN waves_rollout r ON r.id = wg.rollout_id WHERE wg.wave_id = %(wave)s
"""

# The latest outcome of each failed device: its failure. A success at the same moment wins, as
# in waves/outcomes.py.
_FAILURES_SQL = """
SELECT d.group_id, d.hardware_id, d.target_version, f.event_type, f.reason, COUNT(*)
  FROM (
    SELECT e.device_id, e.event_type, SUBSTR(e.detail, 1, {chars}) AS reason, CASE WHEN {failure} THEN 1 ELSE 0 END AS failed,
           ROW_NUMBER() OVER (PARTITION BY e.device_id ORDER BY e.reported_at DESC, CASE WHEN {failure} THEN 1 ELSE 0 END, e.id DESC) AS rn
      FROM devices_deviceevent e
     WHERE {report} AND e.success IS NOT NULL
  ) f
  JOIN devices_device d ON d.id = f.device_id
 WHERE f.rn = 1 AND f.failed = 1 AND d.factory_id = %(factory)s AND d.is_production AND d.tag = %(tag)s
   AND NOT {updated}
 GROUP BY d.group_id, d.hardware_id, d.target_version, f.event_type, f.reason
"""

# Time to update per phase (rollout): from the rollout to the device's first successful
# install-completed report. Within a phase every device shares the start time, so ordering by
# the report time orders by duration, and the nearest-rank percentiles are picked by row
# number: only a handful of rows per phase leave the database. A device's phase is looked up
# by index for the devices that updated only (never a pass over the fleet); devices in no
# phase form a partition of their own, which the caller drops.
_UPDATE_TIMES_SQL = """
SELECT phase, rn, n, at
  FROM (
    SELECT x.phase, x.at,
           ROW_NUMBER() OVER (PARTITION BY x.phase ORDER BY x.at) AS rn,
           COUNT(*) OVER (PARTITION BY x.phase) AS n
      FROM (
        SELECT COALESCE(
                 (SELECT wd.rollout_id FROM waves_wavedevice wd WHERE wd.device_id = done.device_id AND wd.wave_id = %(wave)s),
                 {group_phase},
                 {after_complete}
               ) AS phase,
               done.at
          FROM (
            SELECT e.device_id, MIN(e.reported_at) AS at
              FROM devices_deviceevent e
             WHERE {report} AND e.event_type = 'install-completed' AND e.success = %(true)s
             GROUP BY e.device_id
          ) done
      ) x
  ) ranked
 WHERE rn = 1 OR rn = n OR rn = (50 * n + 99) / 100 OR rn = (95 * n + 99) / 100
"""

_DEVICE_ON_TAG = "FROM devices_device d WHERE d.id = done.device_id AND d.factory_id = %(factory)s AND d.is_production AND d.tag = %(tag)s"

PERCENTILES = (("p50", 50), ("p95", 95))


def _nearest_rank(p, n):
    return (p * n + 99) // 100


# --- snapshots -------------------------------------------------------------------------------


def _params(wave, *, now, cutoff, stuck_cutoff):
    # Whole minutes, the granularity of the counts (waves/status_counts.py), so counted and
    # recounted states agree to the device.
    cutoff, stuck_cutoff = minute_floor(cutoff), minute_floor(stuck_cutoff)
    return {
        **outcome_params(wave),
        "cutoff": sql_time(cutoff),
        "stuck_cutoff": sql_time(stuck_cutoff),
        "cutoff_at": cutoff,
        "stuck_cutoff_at": stuck_cutoff,
        "finished": sql_time(wave.finished_at or now),
    }


def _empty_states():
    return {state: 0 for state in STATES}


def _scheduled(wave, staged):
    """Whether a device staged (or not) in the wave is scheduled to update, by the wave's status."""
    return wave.status == Wave.Status.COMPLETE or (wave.status == Wave.Status.ACTIVE and staged)


def _default_state(wave, group_staged, version, cell):
    """(state, waiting to update) of a device with no activity in the wave, from its cell: version,
    online (1), fetched the wave's targets (2), and whether its group was fully rolled out."""
    online, fetched = bool(cell & 1), bool(cell & 2)
    if version_updated(version, wave):
        return "updated", False
    scheduled = _scheduled(wave, group_staged is not None)
    if wave.status == Wave.Status.CANCELED and group_staged is not None and fetched:
        state = "held"
    elif not online:
        state = "offline"
    else:
        state = "scheduled" if scheduled else "not_scheduled"
    return state, scheduled


def _activity_state(wave, version, cell, progress, failed, staged):
    """(state, scheduled) of a device with activity in the wave: its reports' furthest step and
    outcome, and whether it was staged (on its own or with its group). The states exclude each
    other in this order (waves/states.py)."""
    scheduled = _scheduled(wave, staged)
    if version_updated(version, wave):
        return "updated", scheduled
    if failed:
        return "failed", scheduled
    if wave.status == Wave.Status.CANCELED and staged and cell & 2:
        return "held", scheduled
    if progress == 2:
        return "installing", scheduled
    if progress == 1:
        return "downloading", scheduled
    if not cell & 1:
        return "offline", scheduled
    return ("scheduled" if scheduled else "not_scheduled"), scheduled


_ROLLOUTS = "SELECT r.id, r.created_at FROM waves_rollout r WHERE r.wave_id = %(wave)s"


def _states(wave, params, *, counted=None):
    """{group id: row} of `group_states`, from the counts the database keeps for the wave or, with
    `counted` false (or where none are kept), recounted from the rows."""
    if counted is None:
        counted = counts_kept(wave, connection_for_reads())
    fleet, defaults, activity = parts_counted(params) if counted else parts_recounted(params)
    staged_groups = {group_id: as_datetime(created_at) for group_id, _, created_at in _rows(_STAGED_GROUPS, params)}
    rollout_times = {rollout_id: as_datetime(created_at) for rollout_id, created_at in _rows(_ROLLOUTS, params)}
    stuck_cutoff = params["stuck_cutoff_at"]
    finished = wave.finished_at or as_datetime(params["finished"])
    groups = defaultdict(lambda: {"states": _empty_states(), "total": 0, "online": 0, "stuck": 0, "versions": defaultdict(int), "rollout_time": None})
    for (group_id, version, cell), count in fleet.items():
        row = groups[group_id]
        row["total"] += count
        row["online"] += count if cell & 1 else 0
        row["versions"]["none" if version is None else str(version)] += count
    finished_long_ago = wave.finished_at is not None and wave.finished_at < stuck_cutoff
    for (group_id, version, cell), count in defaults.items():
        row = groups[group_id]
        group_time = staged_groups.get(group_id)
        state, waiting = _default_state(wave, group_time, version, cell)
        row["states"][state] += count
        if waiting:
            # Staged with the group: waiting since the rollout, or since joining the group later (4).
            if group_time is not None:
                stuck = group_time < stuck_cutoff and bool(cell & 4)
            else:
                stuck = finished_long_ago
            row["stuck"] += count if stuck else 0
    for (group_id, version, cell, progress, failed, rollout_id, stuck_by_report), count in activity.items():
        row = groups[group_id]
        staged_at = rollout_times.get(rollout_id)
        group_time = staged_groups.get(group_id)
        state, scheduled = _activity_state(wave, version, cell, progress, failed, staged_at is not None or group_time is not None)
        row["states"][state] += count
        if scheduled and state not in ("updated", "failed"):
            # Stuck: nothing reported since the stuck threshold, or nothing at all since staged.
            if stuck_by_report is None:
                since = staged_at or group_time or (finished if wave.status == Wave.Status.COMPLETE else None)
                stuck_by_report = since is not None and since < stuck_cutoff
            row["stuck"] += count if stuck_by_report else 0
        if staged_at is not None and (row["rollout_time"] is None or staged_at < row["rollout_time"]):
            row["rollout_time"] = staged_at
    for group_id, created_at in staged_groups.items():
        # The group's rollout time: its earliest rollout, of the whole group or of some devices.
        row = groups.get(group_id)
        if row is not None and (row["rollout_time"] is None or created_at < row["rollout_time"]):
            row["rollout_time"] = created_at
    return groups


def wave_counts_check(*, wave, now=None, repair=True):
    """Prove the wave's counts: the states read from them against a full recount, in one snapshot
    of the database. Returns the differences ({} when they agree); with `repair`, counts that
    disagree are rebuilt (and the disagreement logged: it means a write the triggers missed)."""
    now = now or timezone.now()
    if not counts_kept(wave, connection_for_reads()):
        return {}
    params = _params(wave, now=now, cutoff=offline_cutoff(), stuck_cutoff=now - timedelta(minutes=float(settings.BREAKWATER_STATUS_STUCK_AFTER_MINUTES)))
    connection = connection_for_reads()
    own = not connection.in_atomic_block
    with transaction.atomic(using=connection.alias):
        with connection.cursor() as cursor:
            if own:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            fleet_counted, _, _ = parts_counted(params)
            fleet_recounted, _, _ = parts_recounted(params)
            counted, recounted = _states(wave, params, counted=True), _states(wave, params, counted=False)
    differences = {}
    if dict(fleet_counted) != dict(fleet_recounted):
        differences["fleet"] = _differences(fleet_counted, fleet_recounted)
    for group_id in set(counted) | set(recounted):
        mine, theirs = _comparable(counted.get(group_id)), _comparable(recounted.get(group_id))
        if mine != theirs:
            differences[group_id] = {"counted": mine, "recounted": theirs}
    if differences and repair:
        logger.warning("the status counts of wave %s disagreed with a recount and were rebuilt: %r", wave.pk, differences)
        if "fleet" in differences:
            fleet_counts_rebuild(factory_id=wave.factory_id)
        wave_counts_rebuild(wave=wave)
    return differences


def _differences(counted, recounted):
    return {repr(key): (counted.get(key, 0), recounted.get(key, 0)) for key in set(counted) | set(recounted) if counted.get(key, 0) != recounted.get(key, 0)}


def _comparable(row):
    if row is None:
        return None
    return {**row, "versions": dict(row["versions"])}


def group_states(*, wave, cutoff, now=None, stuck_after_minutes=None):
    """{group id: {"states", "total", "online", "stuck", "versions", "rollout_time"}}: every
    device on the wave's tag in exactly one state of waves/states.py, per group. The one count of
    the wave's devices: the live status and its samples (`wave_snapshot`), the status table, the
    API and the CLI (`waves.status_table.wave_status`) all read it."""
    now = now or timezone.now()
    stuck_after = settings.BREAKWATER_STATUS_STUCK_AFTER_MINUTES if stuck_after_minutes is None else stuck_after_minutes
    return _states(wave, _params(wave, now=now, cutoff=cutoff, stuck_cutoff=now - timedelta(minutes=float(stuck_after))))


def _failures(params):
    sql = _FAILURES_SQL.format(chars=REASON_CHARS, report=wave_report_sql("e"), failure=failure_sql("e"), updated=updated_sql("d"))
    out = defaultdict(lambda: {"reason": defaultdict(int), "hardware_id": defaultdict(int), "version": defaultdict(int)})
    for group_id, hardware_id, version, event_type, reason, count in _rows(sql, params):
        reason = " ".join((reason or "").split()) or f"{event_type} failed"
        row = out[group_id]
        row["reason"][reason] += count
        row["hardware_id"][hardware_id or "(unknown)"] += count
        row["version"]["none" if version is None else str(version)] += count
    for row in out.values():
        reasons = sorted(row["reason"].items(), key=lambda kv: (-kv[1], kv[0]))
        kept = dict(reasons[:TOP_REASONS])
        rest = sum(n for _, n in reasons[TOP_REASONS:])
        if rest:
            kept[OTHER_REASONS] = kept.get(OTHER_REASONS, 0) + rest
        row["reason"] = kept
        row["hardware_id"] = dict(row["hardware_id"])
        row["version"] = dict(row["version"])
    return out


def wave_update_times(*, wave, params=None, now=None):
    """Time to update per phase: {phase key: {label, started_at, count, min, p50, p95, max}} in seconds.

    Phases are the wave's rollouts in order, then "after complete" for devices that were not
    staged and updated once the wave was complete. Percentiles are nearest-rank.
    """
    now = now or timezone.now()
    if params is None:
        params = _params(wave, now=now, cutoff=now, stuck_cutoff=now)
    params = dict(params)
    whens = []
    for group_id, rollout_id, created_at in _rows(_STAGED_GROUPS, params):
        # Devices that joined a fully rolled-out group later did not start with its phase.
        params[f"phase_group_{int(group_id)}"] = sql_time(as_datetime(created_at))
        whens.append(f"WHEN {int(group_id)} THEN CASE WHEN d.created_at <= %(phase_group_{int(group_id)})s THEN {int(rollout_id)} END")
    group_phase = f"(SELECT CASE d.group_id {' '.join(whens)} END {_DEVICE_ON_TAG})" if whens else "NULL"
    after_complete = "NULL"
    if wave.status == Wave.Status.COMPLETE:
        after_complete = f"CASE WHEN done.at >= %(finished)s AND EXISTS (SELECT 1 {_DEVICE_ON_TAG}) THEN 0 END"
    sql = _UPDATE_TIMES_SQL.format(group_phase=group_phase, after_complete=after_complete, report=wave_report_sql("e"))
    phases = phase_list(wave=wave)
    starts = {p["id"]: p["at"] for p in phases}
    picked = defaultdict(dict)
    sizes = {}
    for phase, rn, n, at in _rows(sql, params):
        if phase is None:
            continue
        picked[phase][rn] = as_datetime(at)
        sizes[phase] = n
    out = {}
    for p in phases:
        if p["kind"] != "rollout" and p["id"] not in sizes:
            continue
        n = sizes.get(p["id"], 0)
        entry = {"label": p["label"], "started_at": p["at"].isoformat(), "count": n, "min": None, "p50": None, "p95": None, "max": None}
        if n:
            # Device clocks can run behind the server's: a report before the rollout counts as 0 s.
            def seconds(rank):
                return max(0.0, round((picked[p["id"]][rank] - starts[p["id"]]).total_seconds(), 3))

            entry.update({"min": seconds(1), "max": seconds(n), **{name: seconds(_nearest_rank(q, n)) for name, q in PERCENTILES}})
        out[str(p["id"])] = entry
    return out


def phase_list(*, wave):
    """The wave's phases, in order: each rollout, then complete or cancel if it happened."""
    phases = []
    for i, r in enumerate(Rollout.objects.filter(wave=wave).order_by("created_at", "id"), start=1):
        scope = [r.group_name or "fleet"]
        if r.limit:
            scope.append(f"--limit {r.limit}")
        if r.uuids_count:
            scope.append(counted(r.uuids_count, "UUID"))
        if r.full_group:
            scope.append("whole group")
        phases.append({"id": r.id, "kind": "rollout", "at": r.created_at, "label": f"#{i} {' '.join(scope)}", "devices": r.device_count})
    if wave.finished_at and wave.status in (Wave.Status.COMPLETE, Wave.Status.CANCELED):
        label = "complete" if wave.status == Wave.Status.COMPLETE else "canceled"
        phases.append({"id": 0, "kind": label, "at": wave.finished_at, "label": "after complete" if label == "complete" else label, "devices": None})
    return phases


def wave_snapshot(*, wave, now=None, offline_threshold_hours=None, stuck_after_minutes=None):
    """The wave's status now: {"taken_at", "totals", "groups" (ordered list), "update_times"}.

    Reads only; `wave_status_sample_take` stores it. On PostgreSQL the statements share one
    snapshot of the database, so the per-state counts and the failure breakdown agree.
    """
    now = now or timezone.now()
    cutoff = offline_cutoff(offline_threshold_hours)
    stuck_after = settings.BREAKWATER_STATUS_STUCK_AFTER_MINUTES if stuck_after_minutes is None else stuck_after_minutes
    params = _params(wave, now=now, cutoff=cutoff, stuck_cutoff=now - timedelta(minutes=float(stuck_after)))

    def read():
        return _states(wave, params), _failures(params), wave_update_times(wave=wave, params=params, now=now)

    connection = connection_for_reads()
    if connection.vendor == "postgresql":
        own = not connection.in_atomic_block
        with transaction.atomic(using=connection.alias):
            with connection.cursor() as cursor:
                if own:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                # Compiling these few statements (JIT) costs more than running them, and their
                # hash tables should stay in memory.
                cursor.execute("SET LOCAL jit = off")
                cursor.execute("SET LOCAL work_mem = '64MB'")
                groups, failures, update_times = read()
                if not own:
                    cursor.execute("SET LOCAL jit TO DEFAULT")
                    cursor.execute("SET LOCAL work_mem TO DEFAULT")
    else:
        # On SQLite a transaction would take the write lock up front (IMMEDIATE), holding off the
        # gateway's check-in writes for nothing; inside a caller's transaction, theirs applies.
        groups, failures, update_times = read()

    names = dict(DeviceGroup.objects.filter(factory_id=wave.factory_id).values_list("id", "name"))
    rows = []
    for group_id, row in groups.items():
        rows.append(
            {
                "group": names.get(group_id, NO_GROUP) if group_id else NO_GROUP,
                "group_id": group_id,
                "total": row["total"],
                "online": row["online"],
                "stuck": row["stuck"],
                "states": row["states"],
                "versions": dict(sorted(row["versions"].items(), key=lambda kv: (kv[0] == "none", -int(kv[0]) if kv[0] != "none" else 0))),
                "failures": failures.get(group_id, {"reason": {}, "hardware_id": {}, "version": {}}),
                "rollout_time": row["rollout_time"],
            }
        )
    rows = group_order(rows)
    totals = {"total": 0, "online": 0, "stuck": 0, **_empty_states()}
    for row in rows:
        for key in ("total", "online", "stuck"):
            totals[key] += row[key]
        for state, count in row["states"].items():
            totals[state] += count
    return {"taken_at": now, "totals": totals, "groups": rows, "update_times": update_times}


# --- samples ---------------------------------------------------------------------------------


def status_interval():
    return float(settings.BREAKWATER_STATUS_INTERVAL_SECONDS)


def status_bucket(when=None):
    """The aggregation interval `when` falls in: the key that makes a sample once-only."""
    when = when or timezone.now()
    return int(when.timestamp() // status_interval())


def _stored_groups(rows):
    # JSON object keys lose their order in PostgreSQL's jsonb: the position is kept explicitly.
    out = {}
    for position, row in enumerate(rows):
        out[row["group"]] = {
            "position": position,
            "group_id": row["group_id"],
            "total": row["total"],
            "online": row["online"],
            "stuck": row["stuck"],
            "states": row["states"],
            "versions": row["versions"],
            "failures": row["failures"],
            "rollout_time": row["rollout_time"].isoformat() if row["rollout_time"] else None,
        }
    return out


def wave_status_sample_take(*, wave, bucket=None, actor=None, now=None):
    """Store the wave's status for one aggregation interval; return (sample, created).

    Once-only per (wave, bucket): a retried, duplicated or redelivered run of the same interval
    finds the sample (or loses the insert race to the database's unique constraint) and leaves
    it as it is, so nothing is ever counted twice. A sample is a measurement, not a change
    anyone made, so it is not written to the audit log (it would add 5,760 rows a day per wave).
    """
    authorize(user=actor, factory=wave.factory, action="view")
    now = now or timezone.now()
    bucket = status_bucket(now) if bucket is None else int(bucket)
    existing = WaveStatusSample.objects.filter(wave=wave, bucket=bucket).first()
    if existing is not None:
        return existing, False
    snapshot = wave_snapshot(wave=wave, now=now)
    with transaction.atomic():
        return WaveStatusSample.objects.get_or_create(
            wave=wave,
            bucket=bucket,
            defaults={
                "taken_at": now,
                "totals": snapshot["totals"],
                "groups": _stored_groups(snapshot["groups"]),
                "update_times": snapshot["update_times"],
            },
        )


def waves_followed(*, now=None):
    """Waves whose status is sampled: active ones, and those finished in the last day."""
    now = now or timezone.now()
    return Wave.objects.filter(
        Q(status=Wave.Status.ACTIVE) | Q(status__in=(Wave.Status.COMPLETE, Wave.Status.CANCELED), finished_at__gte=now - FOLLOW_FINISHED)
    ).order_by("id")


def wave_is_followed(wave, *, now=None):
    now = now or timezone.now()
    return wave.status == Wave.Status.ACTIVE or (
        wave.status in (Wave.Status.COMPLETE, Wave.Status.CANCELED) and wave.finished_at is not None and wave.finished_at >= now - FOLLOW_FINISHED
    )


def status_counts_upkeep(*, now=None):
    """Once an interval: fold the counts' delta rows and stop keeping the counts of waves the
    status no longer follows (their rows would only slow every device write)."""
    now = now or timezone.now()
    dropped = 0
    for wave in Wave.objects.filter(counts_ready=True).exclude(pk__in=waves_followed(now=now).values("pk")).only("pk"):
        wave_counts_drop(wave=wave)
        dropped += 1
    counts_compact(now=now)
    return dropped


def wave_counts_ready(*, wave, now=None):
    """Have the database keep a followed wave's counts (a wave from before they were kept, or
    dropped and followed again): rebuilt once, then kept as rows are written."""
    if not wave.counts_ready and wave_is_followed(wave, now=now) and connection_for_reads().vendor == "postgresql":
        wave_counts_rebuild(wave=wave)
    return wave.counts_ready


def status_counts_check_all(*, now=None):
    """The periodic proof: every followed wave's counts against a full recount, repaired where
    they differ. Returns {wave id: differences} of the waves that differed."""
    out = {}
    for wave in waves_followed(now=now):
        differences = wave_counts_check(wave=wave, now=now)
        if differences:
            out[wave.pk] = differences
    return out


# --- the factory status, kept warm -------------------------------------------------------------


def _factory_status_key(factory):
    # The creation time tells apart factories that reuse an id (a database rebuilt, a test run).
    return f"breakwater:factory-status:{factory.pk}:{factory.created_at.timestamp()}:{settings.BREAKWATER_OFFLINE_THRESHOLD_HOURS}"


def factory_status_refresh(*, factory):
    """Compute the factory status (every device of the factory, grouped) and keep it in the cache
    for the pages that poll it; the beat task calls this once per interval."""
    entry = {"taken_at": timezone.now(), "rows": factory_status(factory=factory)}
    cache.set(_factory_status_key(factory), entry, timeout=max(60.0, 4 * status_interval()))
    return entry


def factory_status_cached(*, factory, offline_threshold_hours=None):
    """{"taken_at", "rows"}: the factory status with the default offline threshold as of the last
    interval (computed now if the cache has none); with another threshold, computed now."""
    if offline_threshold_hours is not None:
        return {"taken_at": timezone.now(), "rows": factory_status(factory=factory, offline_threshold_hours=offline_threshold_hours)}
    return cache.get(_factory_status_key(factory)) or factory_status_refresh(factory=factory)


# --- reads for pages, charts and exports --------------------------------------------------------


def wave_status_series(*, wave, max_points=SERIES_POINTS):
    """The totals over time, thinned to at most about `max_points` evenly spaced samples (and the
    latest), so a wave watched for a month still draws from a few hundred rows."""
    samples = WaveStatusSample.objects.filter(wave=wave)
    bounds = samples.aggregate(first=Min("bucket"), last=Max("bucket"))
    if bounds["first"] is None:
        return []
    step = max(1, math.ceil((bounds["last"] - bounds["first"] + 1) / max_points))
    if step > 1:
        samples = samples.annotate(phase=Mod(F("bucket") - bounds["first"], step)).filter(Q(phase=0) | Q(bucket=bounds["last"]))
    return [{"taken_at": taken_at, "totals": totals} for taken_at, totals in samples.order_by("bucket").values_list("taken_at", "totals")]


def _groups_from_sample(groups):
    rows = []
    for name, row in groups.items():
        rollout_time = row.get("rollout_time")
        rows.append({**row, "group": name, "rollout_time": as_datetime(rollout_time) if rollout_time else None})
    return sorted(rows, key=lambda r: r.get("position", 0))


def failures_merged(groups):
    """The failure breakdowns of every group added up (reasons beyond the top ones folded)."""
    merged = {"reason": defaultdict(int), "hardware_id": defaultdict(int), "version": defaultdict(int)}
    for row in groups:
        for kind, counts in (row.get("failures") or {}).items():
            for key, count in counts.items():
                merged[kind][key] += count
    reasons = sorted(merged["reason"].items(), key=lambda kv: (kv[0] == OTHER_REASONS, -kv[1], kv[0]))
    kept, rest = dict(reasons[:TOP_REASONS]), sum(n for _, n in reasons[TOP_REASONS:])
    if rest:
        kept[OTHER_REASONS] = kept.get(OTHER_REASONS, 0) + rest
    return {"reason": kept, "hardware_id": dict(merged["hardware_id"]), "version": dict(merged["version"])}


def _last_change(wave):
    """When the wave last changed whom it is offered to: its latest rollout, retry, complete or cancel."""
    changes = [wave.finished_at, wave.retried_at, Rollout.objects.filter(wave=wave).aggregate(at=Max("created_at"))["at"]]
    return max((at for at in changes if at is not None), default=None)


def wave_current(*, wave, now=None, totals_only=False):
    """The wave's status as every door shows it now: {"taken_at", "totals", "groups",
    "update_times", "sampled"}. The latest stored sample, unless there is none yet or it was
    taken before the wave last changed (a rollout, a retry, complete, cancel): then the status
    computed now, so right after a step the live status agrees with the status table."""
    samples = WaveStatusSample.objects.filter(wave=wave).order_by("-bucket")
    latest = (samples.only("taken_at", "totals") if totals_only else samples).first()
    changed = _last_change(wave) if latest is not None else None
    if latest is not None and (changed is None or latest.taken_at >= changed):
        if totals_only:
            return {"taken_at": latest.taken_at, "totals": latest.totals, "sampled": True}
        groups = _groups_from_sample(latest.groups)
        return {"taken_at": latest.taken_at, "totals": latest.totals, "groups": groups, "update_times": latest.update_times, "sampled": True}
    return {**wave_snapshot(wave=wave, now=now), "sampled": False}


def wave_live_status(*, wave, now=None):
    """What the live status panel shows: the current status (`wave_current`), the totals over
    time, the phases and the merged failure breakdown."""
    now = now or timezone.now()
    current = wave_current(wave=wave, now=now)
    # Phases are keyed by rollout id; jsonb does not keep key order, the start times do.
    current["update_times"] = sorted(current["update_times"].values(), key=lambda p: p["started_at"])
    series = wave_status_series(wave=wave)
    if not current["sampled"]:
        # The status computed now ends the series, so the charts end where the numbers are.
        series = [*series, {"taken_at": current["taken_at"], "totals": current["totals"]}]
    return {
        "wave": wave,
        **current,
        "series": series,
        "phases": phase_list(wave=wave),
        "failures": failures_merged(current["groups"]),
        "followed": wave_is_followed(wave, now=now),
        "interval": status_interval(),
    }


CSV_STATE_COLUMNS = STATES + ("stuck",)


def wave_status_csv_rows(*, wave, offline_threshold_hours=None):
    """The status per group as CSV rows (header first, a total row last), computed now."""
    snapshot = wave_snapshot(wave=wave, offline_threshold_hours=offline_threshold_hours)
    header = ["group", "total", "online", "on_wave_version", "newer", "older", *CSV_STATE_COLUMNS, "rollout_time"]
    # A re-release (a revert) adds the devices on the bad build, among the older ones.
    revert = wave.rerelease_of is not None
    if revert:
        header.append("on_bad_build")
    rows = [header]

    def version_split(versions):
        on, newer, older = 0, 0, 0
        for version, count in versions.items():
            if version == "none" or int(version) < wave.version:
                older += count
            elif int(version) == wave.version:
                on += count
            else:
                newer += count
        return on, newer, older

    all_versions = defaultdict(int)
    for row in snapshot["groups"]:
        for version, count in row["versions"].items():
            all_versions[version] += count
        rows.append(
            [
                row["group"], row["total"], row["online"], *version_split(row["versions"]),
                *[row["states"][s] for s in STATES], row["stuck"],
                row["rollout_time"].isoformat() if row["rollout_time"] else "",
                *([rereleases.on_bad_build(row["versions"], wave)] if revert else []),
            ]
        )
    totals = snapshot["totals"]
    rows.append(
        ["(Total)", totals["total"], totals["online"], *version_split(all_versions), *[totals[s] for s in STATES], totals["stuck"], "",
         *([rereleases.on_bad_build(all_versions, wave)] if revert else [])]
    )  # fmt: skip
    return snapshot["taken_at"], rows


def wave_status_history_csv_rows(*, wave):
    """Every stored sample's totals, oldest first."""
    rows = [["taken_at", "total", "online", *CSV_STATE_COLUMNS]]
    for taken_at, totals in WaveStatusSample.objects.filter(wave=wave).order_by("bucket").values_list("taken_at", "totals").iterator(chunk_size=2000):
        rows.append([taken_at.isoformat(), totals.get("total", 0), totals.get("online", 0), *[totals.get(s, 0) for s in CSV_STATE_COLUMNS]])
    return rows


def factory_status_csv_rows(*, rows):
    """One line per tag, kind and version; the tag's totals are repeated so a filter keeps them."""
    out = [["tag", "kind", "latest_version", "devices", "on_latest", "online", "on_orphan_targets", "version", "devices_on_version"]]
    for row in rows:
        kind = "production" if row["production"] else "test"
        head = [row["tag"], kind, "" if row["latest_version"] is None else row["latest_version"], row["total"], row["on_latest"], row["online"], row["orphan"]]
        for version, count in row["versions"].items():
            out.append([*head, "none" if version is None else version, count])
    return out
