"""A phase's gates, measured over the devices it staged:

- updated and failed: as waves/outcomes.py defines them for every status;
- stuck: neither, and silent (no report for the wave's version) for T minutes: counted as failed;
- reporting: updated, failed, or reported any progress for the wave's version;
- unhealthy: updated, then silent (no check-in, no report) for T minutes.

Ratios are taken over all the devices the phase staged. A failure ratio above Y or more than Z
unhealthy devices halts the plan at once; the plan advances only after the wait time, with at
least K devices reporting and every gate met.
"""
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from ..outcomes import failed_sql, failure_sql, outcome_params, sql_time, success_sql, updated_sql, wave_report_sql
from .pacing import batches_pending, pace_progress, phase_total
from .selectors import phase_devices


@dataclass
class Gate:
    key: str
    label: str
    met: bool
    observed: str
    # "halt": unmet means trouble and halts the plan; "wait": unmet means not yet
    on_fail: str = "wait"

    def as_dict(self):
        return {"key": self.key, "label": self.label, "met": self.met, "observed": self.observed, "on_fail": self.on_fail}


@dataclass
class Evidence:
    staged: int = 0
    updated: int = 0
    failed: int = 0
    stuck: int = 0
    in_progress: int = 0
    reporting: int = 0
    unhealthy: int = 0
    wait_ends_at: datetime | None = None
    gates: list = field(default_factory=list)
    measured_at: datetime | None = None

    @property
    def failures(self):
        return self.failed + self.stuck

    @property
    def success_ratio(self):
        return self.updated / self.staged if self.staged else None

    @property
    def failure_ratio(self):
        return self.failures / self.staged if self.staged else None

    @property
    def halting(self):
        return [g for g in self.gates if not g.met and g.on_fail == "halt"]

    @property
    def unmet(self):
        return [g for g in self.gates if not g.met]

    def as_dict(self):
        return {
            "staged": self.staged,
            "updated": self.updated,
            "failed": self.failed,
            "stuck": self.stuck,
            "in_progress": self.in_progress,
            "reporting": self.reporting,
            "unhealthy": self.unhealthy,
            "success_ratio": None if self.success_ratio is None else round(self.success_ratio, 4),
            "failure_ratio": None if self.failure_ratio is None else round(self.failure_ratio, 4),
            "wait_ends_at": self.wait_ends_at.isoformat() if self.wait_ends_at else None,
            "measured_at": self.measured_at.isoformat() if self.measured_at else None,
            "gates": [g.as_dict() for g in self.gates],
        }


def _percent(ratio):
    if ratio is None:
        return "-"
    return f"{ratio * 100:.1f}".rstrip("0").rstrip(".") + "%"


# One pass over a phase's devices and their reports for the wave's version: each device's latest
# report, latest success and latest failure (one aggregate over a join, no sort, no window; FILTER
# runs on SQLite and PostgreSQL alike), its state, and the counts. Grouping the join by device
# keeps the planner's row estimates right: a large phase gets a hash join over the version's
# events, a small one index lookups, and neither is mistaken for a huge query.
_COUNTS_SQL = """
WITH phase AS ({devices}),
reports AS (
  SELECT p.target_version, p.last_seen,
         MAX(e.reported_at) AS reported,
         MAX(rt.retried_at) AS retried,
         MAX(e.reported_at) FILTER (WHERE {success}) AS last_success,
         MAX(e.reported_at) FILTER (WHERE {failure}) AS last_failure
    FROM phase p
    LEFT JOIN devices_deviceevent e ON e.device_id = p.id AND {report}
    LEFT JOIN waves_waveretry rt ON %(retried)s = %(true)s AND rt.wave_id = %(wave)s AND rt.device_id = p.id
   GROUP BY p.id, p.target_version, p.last_seen
),
-- A retry sets the device's earlier reports aside and is its latest activity: it is installing
-- again, and stuck only if it stays silent for the stuck threshold after the retry.
latest AS (
  SELECT target_version, last_seen, last_success, last_failure,
         CASE WHEN retried IS NOT NULL AND (reported IS NULL OR retried > reported) THEN retried ELSE reported END AS last_report
    FROM reports
),
states AS (
  SELECT last_seen, last_report,
         CASE
           WHEN {updated} THEN 'updated'
           WHEN {failed} THEN 'failed'
           WHEN {stuck} THEN 'stuck'
           WHEN last_report IS NOT NULL THEN 'in_progress'
           ELSE 'waiting'
         END AS state
    FROM latest l
)
SELECT COUNT(*),
       COUNT(*) FILTER (WHERE state = 'updated'),
       COUNT(*) FILTER (WHERE state = 'failed'),
       COUNT(*) FILTER (WHERE state = 'stuck'),
       COUNT(*) FILTER (WHERE state = 'in_progress'),
       COUNT(*) FILTER (WHERE state IN ('updated', 'failed') OR last_report IS NOT NULL),
       COUNT(*) FILTER (WHERE {unhealthy})
  FROM states
"""
_COUNT_KEYS = ("staged", "updated", "failed", "stuck", "in_progress", "reporting", "unhealthy")


def phase_counts(phase, *, now, wave=None):
    """Set-based counts of the phase's devices (one query, whatever the phase's size)."""
    wave = wave or phase.plan.wave
    if phase.rollout_id is None:
        return dict.fromkeys(_COUNT_KEYS, 0)
    devices_sql, devices_params = phase_devices(phase, wave).values("id", "target_version", "last_seen").query.sql_with_params()
    params = outcome_params(wave)
    # The devices' query comes with positional parameters; the rest of the statement uses names.
    for index, value in enumerate(devices_params):
        params[f"d{index}"] = value
    names = iter(range(len(devices_params)))
    devices_sql = re.sub(r"(?<!%)%s", lambda _: f"%(d{next(names)})s", devices_sql)
    stuck = unhealthy = "1 = 0"
    if phase.stuck_after_minutes is not None:
        params["silent_since"] = sql_time(now - timedelta(minutes=phase.stuck_after_minutes))
        stuck = "last_report < %(silent_since)s"
        # A paced phase's latest batch has had only since then to report.
        if (phase.last_batch_at or phase.started_at or now) < now - timedelta(minutes=phase.stuck_after_minutes):
            stuck += " OR last_report IS NULL"  # nothing reported since the phase started
        stuck = f"({stuck})"
        unhealthy = (
            "state = 'updated' AND (last_seen IS NULL OR last_seen < %(silent_since)s) "
            "AND (last_report IS NULL OR last_report < %(silent_since)s)"
        )
    sql = _COUNTS_SQL.format(
        devices=devices_sql,
        report=wave_report_sql("e"),
        success=success_sql("e"),
        failure=failure_sql("e"),
        updated=updated_sql("l"),
        failed=failed_sql("l"),
        stuck=stuck,
        unhealthy=unhealthy,
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return dict(zip(_COUNT_KEYS, cursor.fetchone()))


def phase_evidence(phase, *, now=None, wave=None):
    """The phase's counts and each gate: met or not, and whether unmet means wait or halt."""
    now = now or timezone.now()
    counts = phase_counts(phase, now=now, wave=wave)
    ev = Evidence(measured_at=now, **counts)
    n = ev.staged
    if phase.started_at is not None:
        # A paced phase waits from its latest batch.
        ev.wait_ends_at = (phase.last_batch_at or phase.started_at) + timedelta(minutes=phase.wait_minutes)
        ev.gates.append(
            Gate(
                "wait",
                f"wait {phase.wait_minutes} min",
                now >= ev.wait_ends_at,
                "over" if now >= ev.wait_ends_at else f"{math.ceil((ev.wait_ends_at - now).total_seconds() / 60)} min left",
            )
        )
    if batches_pending(phase):
        ev.gates.append(Gate("batches", "every batch staged", False, pace_progress(phase, phase_total(phase))))
    if phase.min_reporting:
        needed = min(phase.min_reporting, n)
        clamp = f" (all {n} staged)" if needed < phase.min_reporting else ""
        ev.gates.append(Gate("min_reporting", f"at least {phase.min_reporting} reporting{clamp}", ev.reporting >= needed, f"{ev.reporting} reporting"))
    if phase.min_success_ratio is not None:
        ratio = ev.success_ratio
        ev.gates.append(
            Gate(
                "min_success_ratio",
                f"success ≥ {_percent(phase.min_success_ratio)}",
                n == 0 or ratio + 1e-9 >= phase.min_success_ratio,
                f"{_percent(ratio)} ({ev.updated} of {n} updated)",
            )
        )
    if phase.max_failure_ratio is not None:
        ratio = ev.failure_ratio
        stuck = f", {ev.stuck} stuck" if ev.stuck else ""
        ev.gates.append(
            Gate(
                "max_failure_ratio",
                f"failures ≤ {_percent(phase.max_failure_ratio)}",
                n == 0 or ratio <= phase.max_failure_ratio + 1e-9,
                f"{_percent(ratio)} ({ev.failed} failed{stuck} of {n})",
                on_fail="halt",
            )
        )
    if phase.max_unhealthy is not None:
        ev.gates.append(
            Gate(
                "max_unhealthy",
                f"silent after updating ≤ {phase.max_unhealthy}",
                ev.unhealthy <= phase.max_unhealthy,
                f"{ev.unhealthy} silent for {phase.stuck_after_minutes} min",
                on_fail="halt",
            )
        )
    return ev
