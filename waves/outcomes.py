"""What became of a device in a wave: updated, failed or held. One definition for the wave's
status (waves/status.py's group_states, which `waves status`, the live status and its charts
read) and rollout plans' gates (waves/plans/gates.py):

- updated: on the wave's version or newer, by the device's own check-ins;
- failed: not updated, and the latest outcome it reported for the wave's version since the wave
  was created is a failure (a retry that succeeded since is not a failure; until the device
  checks in on the new version it is still installing). Reports from before the wave was last
  offered again to the device (a WaveRetry, waves/retries.py) no longer count: a retried device
  is installing again until it reports anew;
- held: not updated, staged in a wave that was then canceled, after fetching its targets: TUF
  forbids the lower production version, so the device stays where it is until a later wave
  completes. A held device may have failed too: every door shows it as failed, since the
  states exclude each other (waves/states.py's order, counted once by waves/status.py).

The status reads are set-based SQL, so the definition is written as SQL conditions over a device
row and its event rows, with the parameters of `outcome_params`; the Python and ORM forms below
say the same for a device already in hand and for the rollout's candidates.
"""
from datetime import datetime

from django.db import connection
from django.db.models import Exists, F, Max, OuterRef, Q, Subquery

from devices.models import DeviceEvent

from .models import WaveRetry


def sql_time(value):
    """A datetime as the backend stores it, so raw SQL compares like the ORM does (SQLite keeps text)."""
    if isinstance(value, datetime) and connection.vendor == "sqlite":
        return connection.ops.adapt_datetimefield_value(value)
    return value


def outcome_params(wave):
    """The parameters the conditions below read."""
    return {
        "factory": wave.factory_id,
        "tag": wave.tag,
        "version": wave.version,
        "wave": wave.id,
        "since": sql_time(wave.created_at),
        "retried": wave.retried_at is not None,
        "false": False,
        "true": True,
    }


def updated_sql(device="d"):
    """The device row `device` is on the wave's version or newer (never NULL, so NOT works)."""
    return f"({device}.target_version IS NOT NULL AND {device}.target_version >= %(version)s)"


def wave_report_sql(event="e"):
    """The event row `event` is a report of the factory's devices about the wave's version since
    the wave was created, and since the wave was last offered again to its device. A wave that
    was never retried (most) skips the check: `%(retried)s` is a constant the planner folds."""
    return (
        f"{event}.factory_id = %(factory)s AND {event}.target_version = %(version)s AND {event}.reported_at >= %(since)s"
        f" AND (%(retried)s = %(false)s OR NOT EXISTS (SELECT 1 FROM waves_waveretry wr WHERE wr.wave_id = %(wave)s"
        f" AND wr.device_id = {event}.device_id AND wr.retried_at > {event}.reported_at))"
    )


def wave_reports(wave, reports):
    """wave_report_sql as an ORM filter over `reports`, device events of the wave's version."""
    reports = reports.filter(factory_id=wave.factory_id, target_version=wave.version, reported_at__gte=wave.created_at)
    if wave.retried_at is None:
        return reports
    later_retry = WaveRetry.objects.filter(wave_id=wave.id, device_id=OuterRef("device_id"), retried_at__gt=OuterRef("reported_at"))
    return reports.exclude(Exists(later_retry))


def failure_sql(event="e"):
    """The wave report `event` is a failure."""
    return f"{event}.success = %(false)s"


def success_sql(event="e"):
    """The wave report `event` is a success."""
    return f"{event}.success = %(true)s"


def failed_sql(outcomes="a"):
    """Over `outcomes`, a device's last_success and last_failure among its wave reports: its
    latest outcome is a failure (a success at the same moment wins). Not updated is the caller's."""
    return f"({outcomes}.last_failure IS NOT NULL AND ({outcomes}.last_success IS NULL OR {outcomes}.last_failure > {outcomes}.last_success))"


def device_outcomes_sql():
    """A subquery: per device that reported on the wave, its last success and last failure."""
    return f"""SELECT e.device_id,
       MAX(CASE WHEN {success_sql("e")} THEN e.reported_at END) AS last_success,
       MAX(CASE WHEN {failure_sql("e")} THEN e.reported_at END) AS last_failure
  FROM devices_deviceevent e
 WHERE {wave_report_sql("e")}
 GROUP BY e.device_id"""


def fetched_sql(device="d"):
    """The device row `device` has fetched the wave's targets (their version is the wave's)."""
    return f"{device}.targets_version_seen >= %(version)s"


def version_updated(version, wave):
    """updated_sql for a target version in hand."""
    return version is not None and version >= wave.version


def not_updated_q(wave):
    """Devices not updated to `wave`, as an ORM filter (the rollout's candidates, a plan's estimates)."""
    return Q(target_version__isnull=True) | Q(target_version__lt=wave.version)


def _last(reports):
    return Subquery(reports.order_by().values("device_id").annotate(m=Max("reported_at")).values("m")[:1])


def devices_failed(devices, wave):
    """Of `devices` (a Device queryset), those that failed `wave`: the rule above as an ORM filter."""
    reports = wave_reports(wave, DeviceEvent.objects.filter(device_id=OuterRef("pk")))
    annotated = devices.filter(not_updated_q(wave)).annotate(
        last_failure=_last(reports.filter(success=False)), last_success=_last(reports.filter(success=True))
    )
    return annotated.filter(Q(last_failure__isnull=False) & (Q(last_success__isnull=True) | Q(last_failure__gt=F("last_success"))))


def devices_silent_since(devices, wave, since, *, never_reported):
    """Of `devices` not updated to `wave`, those whose last wave report (or retry) is older than
    `since`, and with `never_reported` those that reported nothing either: the gates' stuck."""
    reports = wave_reports(wave, DeviceEvent.objects.filter(device_id=OuterRef("pk")))
    retried = WaveRetry.objects.filter(wave_id=wave.id, device_id=OuterRef("pk"), retried_at__gte=since)
    annotated = devices.filter(not_updated_q(wave)).annotate(last_report=_last(reports)).exclude(Exists(retried))
    silent = Q(last_report__lt=since)
    if never_reported:
        silent |= Q(last_report__isnull=True)
    return annotated.filter(silent)
