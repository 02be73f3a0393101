"""The wave status's inputs, counted two ways: read from the counts PostgreSQL keeps as devices,
events, stagings and retries are written (devices migration 0009, waves migration 0008), or
recounted from those rows. Both give the same three parts, which waves/status.py turns into
states:

- fleet: {(group id, version, cell): devices on the wave's tag}, cell = online * 1 + fetched
  the wave's targets * 2;
- defaults: {(group id, version, cell + joined before the stuck threshold * 4): devices with no
  activity in the wave}, whose state follows from those columns;
- activity: [(group id, version, cell, progress, failed, rollout id, stuck by the last report
  (None: no report), devices)] for the devices with activity (a report on the wave's version,
  a staging of their own).

The counts cost what changed: a few hundred rows per wave, whatever the fleet's size. The recount
is a pass over the tag's devices and the wave's reports; it serves SQLite, waves whose counts
are not kept (finished long ago, or from before the counts), and the periodic proof that the
counts are right (`status.wave_counts_check`).

Cutoffs are whole minutes (`minute_floor`), the granularity of the counts, so both ways agree
to the device.
"""
from collections import defaultdict
from datetime import datetime, timedelta, timezone as dt_timezone

from django.db import connection, connections, router, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from devices.models import Device

from .models import Wave
from .outcomes import failed_sql, failure_sql, fetched_sql, outcome_params, success_sql, wave_report_sql


# Counts of devices last seen, or last reporting, before this long ago are folded into minute 0:
# older than any offline threshold (at most a year) or stuck threshold a read can ask for.
FOLD_AFTER = timedelta(days=367)


def minute_floor(at):
    """`at` rounded down to the minute: the cutoffs the status compares with."""
    return at.replace(second=0, microsecond=0)


def _minute(at):
    return int(at.astimezone(dt_timezone.utc).timestamp() // 60)


def connection_for_reads():
    """Where status statements run: where the ORM reads devices (a read replica for the pages
    that allow one, factory/replica.py), so a status read and its raw SQL use the same copy."""
    return connections[router.db_for_read(Device)]


def counts_kept(wave, connection=None):
    """Whether the database keeps `wave`'s counts (PostgreSQL, and the wave's counts are ready)."""
    connection = connection or connection_for_reads()
    return connection.vendor == "postgresql" and wave.counts_ready


def _rows(sql, params):
    with connection_for_reads().cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


# --- recounted from the rows -------------------------------------------------------------------

# Per device that reported on the wave's version since the wave was created, or was staged on
# its own: the furthest step reported (1 download, 2 install), its last success and last failure,
# the last report, and the rollout that staged it. One subquery, so the pass over the devices
# probes a single hash table. The counts' triggers keep the same per device (WaveActivity).
ACTIVITY_SQL = f"""
SELECT device_id, COALESCE(MAX(progress), 0) AS progress, MAX(last_success) AS last_success, MAX(last_failure) AS last_failure,
       MAX(last_report) AS last_report, MAX(rollout_id) AS rollout_id
  FROM (
    SELECT e.device_id,
           CASE WHEN e.event_type IN ('install-started', 'install-applied', 'install-completed') THEN 2 ELSE 1 END AS progress,
           CASE WHEN {success_sql("e")} THEN e.reported_at END AS last_success,
           CASE WHEN {failure_sql("e")} THEN e.reported_at END AS last_failure,
           e.reported_at AS last_report,
           NULL AS rollout_id
      FROM devices_deviceevent e
     WHERE {wave_report_sql("e")}
    UNION ALL
    SELECT wd.device_id, NULL, NULL, NULL, NULL, wd.rollout_id
      FROM waves_wavedevice wd
     WHERE wd.wave_id = %(wave)s
  ) activity
 GROUP BY device_id
"""

_CELL = f"""CASE WHEN d.last_seen >= %(cutoff)s THEN 1 ELSE 0 END + CASE WHEN {fetched_sql("d")} THEN 2 ELSE 0 END"""
_JOINED = "CASE WHEN d.created_at < %(stuck_cutoff)s THEN 4 ELSE 0 END"
_ON_TAG = "d.factory_id = %(factory)s AND d.is_production AND d.tag = %(tag)s"

# Part 0: every device of the tag by cell; part 1: the devices with activity by their key. One
# statement (UNION ALL), so both parts see the same database.
_RECOUNT_SQL = f"""
SELECT 0, d.group_id, d.target_version, {_CELL} + {_JOINED}, NULL, NULL, NULL, NULL, COUNT(*)
  FROM devices_device d
 WHERE {_ON_TAG}
 GROUP BY 1, 2, 3, 4
UNION ALL
SELECT 1, d.group_id, d.target_version, {_CELL} + {_JOINED}, a.progress, CASE WHEN {failed_sql("a")} THEN 1 ELSE 0 END,
       COALESCE(a.rollout_id, 0), CASE WHEN a.last_report IS NULL THEN NULL WHEN a.last_report < %(stuck_cutoff)s THEN 1 ELSE 0 END,
       COUNT(*)
  FROM ({ACTIVITY_SQL}) a
  JOIN devices_device d ON d.id = a.device_id
 WHERE {_ON_TAG}
 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
"""


def parts_recounted(params):
    """(fleet, defaults, activity) counted from the devices, events and stagings."""
    fleet, defaults, activity = defaultdict(int), defaultdict(int), defaultdict(int)
    for part, group_id, version, cell, progress, failed, rollout_id, stuck, count in _rows(_RECOUNT_SQL, params):
        if part == 0:
            fleet[(group_id, version, cell & 3)] += count
            defaults[(group_id, version, cell)] += count
        else:
            defaults[(group_id, version, cell)] -= count
            activity[(group_id, version, cell & 3, progress, bool(failed), rollout_id, None if stuck is None else bool(stuck))] += count
    return fleet, {key: n for key, n in defaults.items() if n}, activity


# --- read from the counts ----------------------------------------------------------------------

_COUNTED_CELL = "CASE WHEN c.seen_minute >= %(cutoff_minute)s THEN 1 ELSE 0 END + CASE WHEN c.targets_seen >= %(version)s THEN 2 ELSE 0 END"

# Part 0: the tag's fleet counts by cell; part 1: the wave's activity counts by key; part 2: the
# devices of fully rolled-out groups that joined after the stuck threshold and have no activity,
# by index (device_group_joined): a device's join time is not in the counts, and it decides
# whether such a device is stuck. The join time is asked apart (OFFSET 0 keeps the planner from
# merging it into the tag's conditions), so only that index can answer it: led by the tag, the
# planner would read a whole group to find the few that joined lately. One statement, so the
# parts see the same database.
_COUNTED_SQL = f"""
SELECT 0, NULLIF(c.group_id, 0), NULLIF(c.target_version, -1), {_COUNTED_CELL}, NULL, NULL, NULL, NULL, SUM(c.n)::bigint
  FROM devices_fleetcount c
 WHERE c.factory_id = %(factory)s AND c.tag = %(tag)s
 GROUP BY 1, 2, 3, 4
HAVING SUM(c.n) <> 0
UNION ALL
SELECT 1, NULLIF(c.group_id, 0), NULLIF(c.target_version, -1), {_COUNTED_CELL}, c.progress, CASE WHEN c.failed THEN 1 ELSE 0 END, c.rollout_id,
       CASE WHEN c.since_minute < 0 THEN NULL WHEN c.since_minute < %(stuck_minute)s THEN 1 ELSE 0 END, SUM(c.n)::bigint
  FROM waves_waveactivitycount c
 WHERE c.wave_id = %(wave)s
 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
HAVING SUM(c.n) <> 0
UNION ALL
SELECT 2, d.group_id, d.target_version, {_CELL}, NULL, NULL, NULL, NULL, COUNT(*)
  FROM (SELECT j.* FROM devices_device j
         WHERE j.group_id IN (SELECT wg.group_id FROM waves_wavegroup wg WHERE wg.wave_id = %(wave)s) AND j.created_at >= %(stuck_cutoff)s
        OFFSET 0) d
 WHERE {_ON_TAG}
   AND NOT EXISTS (SELECT 1 FROM waves_waveactivity a WHERE a.device_id = d.id AND a.wave_id = %(wave)s)
 GROUP BY 1, 2, 3, 4
"""


def parts_counted(params):
    """(fleet, defaults, activity) read from the counts the database keeps for the wave."""
    params = {**params, "cutoff_minute": _minute(params["cutoff_at"]), "stuck_minute": _minute(params["stuck_cutoff_at"])}
    fleet, recent = defaultdict(int), defaultdict(int)
    activity = defaultdict(int)
    rest = defaultdict(int)
    for part, group_id, version, cell, progress, failed, rollout_id, stuck, count in _rows(_COUNTED_SQL, params):
        if part == 0:
            fleet[(group_id, version, cell)] += count
            rest[(group_id, version, cell)] += count
        elif part == 1:
            rest[(group_id, version, cell)] -= count
            activity[(group_id, version, cell, progress, bool(failed), rollout_id, None if stuck is None else bool(stuck))] += count
        else:
            recent[(group_id, version, cell)] += count
    defaults = {}
    for key, n in rest.items():
        group_id, version, cell = key
        if recent[key]:
            defaults[key] = recent[key]
        if n - recent[key]:
            defaults[(group_id, version, cell | 4)] = n - recent[key]
    return fleet, defaults, activity


# --- keeping the counts ------------------------------------------------------------------------

_COMPACT_FLEET = """
WITH gone AS (
    DELETE FROM devices_fleetcount
    RETURNING factory_id, tag, group_id, target_version, targets_seen,
              CASE WHEN seen_minute > 0 AND seen_minute < %(fold)s THEN 0 ELSE seen_minute END AS seen_minute, n
)
INSERT INTO devices_fleetcount (factory_id, tag, group_id, target_version, targets_seen, seen_minute, n)
SELECT factory_id, tag, group_id, target_version, targets_seen, seen_minute, SUM(n) FROM gone
 GROUP BY 1, 2, 3, 4, 5, 6 HAVING SUM(n) <> 0
"""

_COMPACT_ACTIVITY = """
WITH gone AS (
    DELETE FROM waves_waveactivitycount
    RETURNING wave_id, group_id, target_version, targets_seen,
              CASE WHEN seen_minute > 0 AND seen_minute < %(fold)s THEN 0 ELSE seen_minute END AS seen_minute,
              progress, failed, rollout_id,
              CASE WHEN since_minute > 0 AND since_minute < %(fold)s THEN 0 ELSE since_minute END AS since_minute, n
)
INSERT INTO waves_waveactivitycount (wave_id, group_id, target_version, targets_seen, seen_minute, progress, failed, rollout_id, since_minute, n)
SELECT g.wave_id, g.group_id, g.target_version, g.targets_seen, g.seen_minute, g.progress, g.failed, g.rollout_id, g.since_minute, SUM(g.n)
  FROM gone g JOIN waves_wave w ON w.id = g.wave_id AND w.counts_ready
 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9 HAVING SUM(g.n) <> 0
"""

# Only one compaction at a time; a second one skips its turn rather than wait.
_COMPACTION_LOCK = 7_202_612


def counts_compact(*, now):
    """Fold each key's delta rows into one, drop the keys that net to nothing and the counts of
    waves no longer kept. Writers only insert, so this never waits on them; a row a writer
    commits meanwhile is not in this statement's snapshot and stays for the next compaction."""
    if connection.vendor != "postgresql":
        return False
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_COMPACTION_LOCK])
        if not cursor.fetchone()[0]:
            return False
        fold = _minute(now - FOLD_AFTER)
        cursor.execute(_COMPACT_FLEET, {"fold": fold})
        cursor.execute(_COMPACT_ACTIVITY, {"fold": fold})
    return True


_REBUILD_ACTIVITY = f"""
INSERT INTO waves_waveactivity (wave_id, device_id, progress, last_success, last_failure, last_report, rollout_id)
SELECT %(wave)s, a.device_id, a.progress, a.last_success, a.last_failure, a.last_report, a.rollout_id FROM ({ACTIVITY_SQL}) a
"""


def wave_counts_rebuild(*, wave):
    """Count the wave's activity afresh and keep its counts from now on. The tables the counts
    follow are held still meanwhile (writers wait; readers do not), so nothing written during
    the rebuild is missed: it takes as long as a recount of the wave."""
    if connection.vendor != "postgresql":
        return False
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE devices_device, devices_deviceevent, waves_wavedevice, waves_waveretry IN SHARE MODE")
        locked = Wave.objects.select_for_update().get(pk=wave.pk)
        cursor.execute("UPDATE waves_wave SET counts_ready = false WHERE id = %s", [wave.pk])
        cursor.execute("DELETE FROM waves_waveactivity WHERE wave_id = %s", [wave.pk])
        cursor.execute("DELETE FROM waves_waveactivitycount WHERE wave_id = %s", [wave.pk])
        # From here the triggers count the wave: the activity inserted next is counted as it goes in.
        cursor.execute("UPDATE waves_wave SET counts_ready = true WHERE id = %s", [wave.pk])
        cursor.execute(_REBUILD_ACTIVITY, outcome_params(locked))
    wave.counts_ready = True
    return True


_REBUILD_FLEET = """
INSERT INTO devices_fleetcount (factory_id, tag, group_id, target_version, targets_seen, seen_minute, n)
SELECT d.factory_id, d.tag, COALESCE(d.group_id, 0), COALESCE(d.target_version, -1), COALESCE(d.targets_version_seen, -1),
       breakwater_minute(d.last_seen), COUNT(*)
  FROM devices_device d WHERE d.factory_id = %(factory)s AND d.is_production
 GROUP BY 1, 2, 3, 4, 5, 6
"""


def fleet_counts_rebuild(*, factory_id):
    """Count the factory's production devices afresh; device writes wait meanwhile."""
    if connection.vendor != "postgresql":
        return False
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE devices_device IN SHARE MODE")
        cursor.execute("DELETE FROM devices_fleetcount WHERE factory_id = %s", [factory_id])
        cursor.execute(_REBUILD_FLEET, {"factory": factory_id})
    return True


def wave_counts_drop(*, wave):
    """Stop keeping the wave's counts (a wave finished longer ago than the status follows it):
    its status is recounted if anyone asks, and device writes no longer look at its activity."""
    with transaction.atomic():
        Wave.objects.filter(pk=wave.pk).update(counts_ready=False)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM waves_waveactivity WHERE wave_id = %s", [wave.pk])
                cursor.execute("DELETE FROM waves_waveactivitycount WHERE wave_id = %s", [wave.pk])
    wave.counts_ready = False


def as_datetime(value):
    """A timestamp from raw SQL (SQLite gives text) as an aware datetime."""
    if value is None or isinstance(value, datetime):
        return value if value is None or timezone.is_aware(value) else timezone.make_aware(value, dt_timezone.utc)
    parsed = parse_datetime(str(value))
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, dt_timezone.utc)

