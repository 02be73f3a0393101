"""Rollout plans: a wave's ordered phases that advance on evidence (gates) or approval and halt
on trouble, plan templates, and a forecast of completion. Writes and reads, like services.py
and selectors.py, kept in one module because they share the gate arithmetic.

A phase is one `wave_rollout` (group, limit N or N%, saved list, UUIDs: the seed's semantics)
followed by a wait-and-watch period. Its gates are measured over the devices it staged:

- updated: on the wave's version (check-in), or its latest outcome reported for it is a success;
- failed: not updated, and its latest outcome reported for the wave's version is a failure;
- stuck: neither, and silent (no report for the wave's version) for T minutes: counted as failed;
- reporting: updated, failed, or reported any progress for the wave's version;
- unhealthy: updated, then silent (no check-in, no report) for T minutes.

Ratios are taken over all the devices the phase staged. A failure ratio above Y or more than Z
unhealthy devices halts the plan at once; the plan advances only after the wait time, with at
least K devices reporting and every gate met.
"""
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, connection, transaction
from django.db.models import Min, Q
from django.utils import timezone

from devices.models import Device, DeviceEvent, DeviceGroup
from devices.selectors import uuids_in
from devices.uuids import parse_uuid_list
from factory.auth import actor_name, authorize
from factory.errors import ApplicationError, Conflict, Forbidden, NotFound
from factory.names import name_clean, name_problem
from factory.services import audit_record

from . import services as wave_services
from .models import PlanDecision, PlanPhase, PlanTemplate, RolloutPlan, SavedDeviceList, Wave, WaveDevice, WaveGroup
from .scope import limit_parse, limit_size, limit_text, scope_require

logger = logging.getLogger(__name__)

MAX_PHASES = 50
MAX_MINUTES = 30 * 24 * 60
MAX_REASON = 2000
DEFAULT_WAIT_MINUTES = 60
# How long the evaluator holds a plan it claimed; a worker that dies frees it after this.
CLAIM_SECONDS = 600
# After an evaluation the plan stays taken this long: less than the beat's minute.
EVALUATED_REST_SECONDS = 45
WEBHOOK_TIMEOUT_SECONDS = 5
GROUP_PLACEHOLDER = "{group}"
TEMPLATE_NAME_MAX = 100
# A template is addressed by its name in the API's URLs.
TEMPLATE_NAME_FORBIDDEN = "/\\"
PHASE_NAME_MAX = 64

# The settings a phase takes, as every door spells them (API, CLI, templates, the editor).
PHASE_KEYS = (
    "name",
    "group",
    "limit",
    "saved_list",
    "uuids",
    "wait_minutes",
    "min_reporting",
    "min_success_ratio",
    "max_failure_ratio",
    "max_unhealthy",
    "stuck_after_minutes",
    "advance",
    "approver_must_differ",
)
SCOPE_KEYS = ("group", "limit", "saved_list", "uuids")

Status = RolloutPlan.Status
PhaseStatus = PlanPhase.Status


# --- phase settings: parsing and validation ---------------------------------------------------


def _fail(where, message):
    raise ApplicationError(f"{where}: {message}")


def _text(value, where, what, max_length):
    if value is None:
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        _fail(where, f"{what} must be text")
    value = str(value).strip()
    if "\x00" in value:
        _fail(where, f"{what} may not contain NUL characters")
    if len(value) > max_length:
        _fail(where, f"{what} may be at most {max_length} characters")
    return value


def _phase_name(value, where):
    # A phase's name is optional; given, it follows the rule of every name.
    name = _text(value, where, "name", PHASE_NAME_MAX)
    problem = name_problem(name, max_length=PHASE_NAME_MAX, required=False)
    if problem:
        _fail(where, f"a phase name {problem}")
    return name


def _whole(value, where, what, *, low, high, default=None):
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, bool):
        _fail(where, f"{what} must be a whole number")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        _fail(where, f"{what} {str(value)[:20]!r} is not a whole number")
    if not low <= number <= high:
        _fail(where, f"{what} must be between {low:,} and {high:,}")
    return number


def parse_ratio(value, where="ratio", what="ratio"):
    """0.95, "0.95" or "95%" -> 0.95; None or "" -> None (gate off)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        _fail(where, f"{what} must be a number between 0 and 1, or a percentage")
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        number = float(text.rstrip("%").strip())
    except ValueError:
        _fail(where, f"{what} {text[:20]!r} is not a number between 0 and 1, or a percentage")
    if percent:
        number /= 100
    if math.isnan(number) or not 0 <= number <= 1:
        _fail(where, f"{what} must be between 0 and 1 (0% and 100%)")
    return round(number, 6)


def _boolean(value, where, what):
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    _fail(where, f"{what} must be true or false")


def _limit(value, where):
    try:
        return limit_text(limit_parse(value))
    except ApplicationError as exc:
        _fail(where, exc.message)


def phase_clean(raw, *, index, factory=None, placeholders=False):
    """One phase as given by a door -> its settings, checked, in the doors' spelling.

    With `factory`, the group and the saved list must exist in it. With `placeholders`
    (templates), a group may be the `{group}` placeholder filled in when the template is applied.
    """
    where = f"phase {index}"
    if not isinstance(raw, dict):
        raise ApplicationError(f"{where}: a phase is a set of settings (e.g. group, limit, wait_minutes)")
    unknown = sorted(str(k) for k in raw if k not in PHASE_KEYS)
    if unknown:
        raise ApplicationError(f"{where}: unknown setting {', '.join(unknown[:5])}; a phase takes {', '.join(PHASE_KEYS)}")
    phase = {
        "name": _phase_name(raw.get("name"), where),
        "group": _text(raw.get("group"), where, "group", 64),
        "limit": _limit(raw.get("limit"), where),
        "saved_list": _text(raw.get("saved_list"), where, "saved list", 100),
        "uuids": "",
        "wait_minutes": _whole(raw.get("wait_minutes"), where, "wait time (minutes)", low=0, high=MAX_MINUTES, default=DEFAULT_WAIT_MINUTES),
        "min_reporting": _whole(raw.get("min_reporting"), where, "devices reporting", low=0, high=10_000_000, default=0),
        "min_success_ratio": parse_ratio(raw.get("min_success_ratio"), where, "success ratio"),
        "max_failure_ratio": parse_ratio(raw.get("max_failure_ratio"), where, "failure ratio"),
        "max_unhealthy": _whole(raw.get("max_unhealthy"), where, "unhealthy devices", low=0, high=10_000_000),
        "stuck_after_minutes": _whole(raw.get("stuck_after_minutes"), where, "stuck after (minutes)", low=1, high=MAX_MINUTES),
        "advance": _text(raw.get("advance"), where, "advance", 16) or PlanPhase.Advance.AUTO,
        "approver_must_differ": _boolean(raw.get("approver_must_differ"), where, "approver must differ"),
    }
    uuids = raw.get("uuids")
    if uuids is not None and not (isinstance(uuids, str) and not uuids.strip()) and uuids != []:
        try:
            phase["uuids"] = "\n".join(str(u) for u in parse_uuid_list(uuids))
        except ApplicationError as exc:
            raise ApplicationError(f"{where}: {exc.message}") from None
    scope_require(group=phase["group"], limit=phase["limit"], uuids=phase["uuids"], saved_list=phase["saved_list"], where=where)
    if phase["saved_list"] and phase["uuids"]:
        raise ApplicationError(f"{where}: give either a saved device list or UUIDs, not both")
    if phase["advance"] not in PlanPhase.Advance.values:
        raise ApplicationError(f"{where}: advance must be 'auto' or 'approval', not {phase['advance']!r}")
    if phase["approver_must_differ"] and phase["advance"] != PlanPhase.Advance.APPROVAL:
        raise ApplicationError(f"{where}: only a phase that advances by approval can require an approver other than the author")
    if phase["max_unhealthy"] is not None and phase["stuck_after_minutes"] is None:
        raise ApplicationError(
            f"{where}: the health gate needs 'stuck after (minutes)': how long an updated device may stay silent before it counts as unhealthy"
        )
    if factory is not None:
        group = phase["group"]
        if group and not (placeholders and GROUP_PLACEHOLDER in group):
            if not DeviceGroup.objects.filter(factory=factory, name=group).exists():
                raise ApplicationError(f"{where}: device group {group} does not exist")
        if phase["saved_list"] and not SavedDeviceList.objects.filter(factory=factory, name=phase["saved_list"]).exists():
            raise ApplicationError(f"{where}: saved device list {phase['saved_list']} does not exist")
    return phase


def phases_clean(phases, *, factory=None, placeholders=False):
    if isinstance(phases, dict) or isinstance(phases, str) or phases is None:
        raise ApplicationError("a plan is a list of phases")
    phases = list(phases)
    if not phases:
        raise ApplicationError("a plan needs at least one phase")
    if len(phases) > MAX_PHASES:
        raise ApplicationError(f"a plan may have at most {MAX_PHASES} phases")
    return [phase_clean(raw, index=i, factory=factory, placeholders=placeholders) for i, raw in enumerate(phases, start=1)]


def phase_as_input(phase):
    """A stored phase in the doors' spelling (what `phase_clean` returns for it)."""
    return {
        "name": phase.name,
        "group": phase.group_name,
        "limit": phase.limit,
        "saved_list": phase.saved_list.name if phase.saved_list_id else "",
        "uuids": phase.uuids,
        "wait_minutes": phase.wait_minutes,
        "min_reporting": phase.min_reporting,
        "min_success_ratio": phase.min_success_ratio,
        "max_failure_ratio": phase.max_failure_ratio,
        "max_unhealthy": phase.max_unhealthy,
        "stuck_after_minutes": phase.stuck_after_minutes,
        "advance": phase.advance,
        "approver_must_differ": phase.approver_must_differ,
    }


def large_fleet_phases(group, *, wait_minutes=60, approval_before_rest=False):
    """The seed's large-fleet example as a plan: 5, then 20, then 100, then the rest of `group`.

    Gates: every device of a small phase must report, 90% (then 95%) must update, at most 10%
    (then 5%) may fail, devices silent for 30 minutes are stuck, no updated device may go silent.
    """
    common = {"group": group, "wait_minutes": wait_minutes, "stuck_after_minutes": 30, "max_unhealthy": 0}
    return [
        {**common, "name": f"{group}: canary 5", "limit": "5", "min_reporting": 5, "min_success_ratio": 0.9, "max_failure_ratio": 0.1},
        {**common, "name": f"{group}: 20 more", "limit": "20", "min_reporting": 15, "min_success_ratio": 0.9, "max_failure_ratio": 0.1},
        {
            **common,
            "name": f"{group}: 100 more",
            "limit": "100",
            "min_reporting": 50,
            "min_success_ratio": 0.95,
            "max_failure_ratio": 0.05,
            "advance": PlanPhase.Advance.APPROVAL if approval_before_rest else PlanPhase.Advance.AUTO,
        },
        {**common, "name": f"{group}: the rest", "limit": "", "min_reporting": 0, "min_success_ratio": 0.95, "max_failure_ratio": 0.05},
    ]


def phase_label(phase):
    """What a phase rolls out to, in a release manager's words."""
    if isinstance(phase, PlanPhase):
        group, limit, saved, uuids = phase.group_name, phase.limit, (phase.saved_list.name if phase.saved_list_id else ""), phase.uuids
    else:
        group, limit, saved, uuids = phase.get("group"), phase.get("limit"), phase.get("saved_list"), phase.get("uuids")
    parts = []
    if limit:
        parts.append(f"{limit} of " if limit.endswith("%") else f"{limit} devices of ")
    elif not saved and not uuids:
        parts.append("every device of " if group else "")
    if saved:
        parts.append(f"list {saved}" + (" in " if group else ""))
    elif uuids:
        count = len([u for u in uuids.split() if u]) if isinstance(uuids, str) else len(uuids)
        parts.append(f"{count} listed devices" + (" in " if group else ""))
    parts.append(f"group {group}" if group else ("the fleet" if not saved and not uuids else ""))
    return "".join(parts).strip()


# --- decisions, audit, webhook ----------------------------------------------------------------


def _decide(plan, phase, kind, actor=None, reason="", evidence=None):
    """Record one decision on the plan and the same in the factory's audit log."""
    evidence = evidence or {}
    decision = PlanDecision.objects.create(plan=plan, phase=phase, kind=kind, actor=actor, reason=reason[:MAX_REASON], evidence=evidence)
    details = {"decision": decision.pk, "reason": reason[:500]}
    if phase is not None:
        details["phase"] = phase.position
        details["phase_name"] = phase.name or phase_label(phase)
    for key in ("rollout", "devices", "unmet", "failed_gates", "status"):
        if key in evidence:
            details[key] = evidence[key]
    audit_record(factory=plan.wave.factory, actor=actor, action=f"plan.{kind}", target=plan.wave.name, details=details)
    return decision


def _webhook_on_commit(plan, event, payload):
    url = plan.webhook_url
    if not url:
        return
    body = {
        "event": event,
        "factory": plan.wave.factory.name,
        "wave": plan.wave.name,
        "plan_status": plan.status,
        "at": timezone.now().isoformat(),
        **payload,
    }
    # After commit, so a slow or dead receiver never holds the plan's transaction open and a
    # rolled-back decision is never announced.
    transaction.on_commit(lambda: webhook_send(url, body))


def webhook_send(url, body):
    """POST the JSON body with a short timeout. Failures are logged, never raised: the plan's
    decision is already recorded and the dashboard shows it either way."""
    import json

    import urllib3

    try:
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=WEBHOOK_TIMEOUT_SECONDS))
        response = http.request(
            "POST", url, body=json.dumps(body, default=str).encode(), headers={"Content-Type": "application/json", "User-Agent": "breakwater-plans"}
        )
        if response.status >= 400:
            logger.warning("plan webhook %s answered HTTP %s", url, response.status)
        return response.status
    except Exception as exc:  # noqa: BLE001 - a receiver's failure must never break the evaluator
        logger.warning("plan webhook %s failed: %s", url, exc)
        return None


def _validate_webhook(url):
    url = (url or "").strip()
    if not url:
        return ""
    if len(url) > 200:
        raise ApplicationError("the webhook URL may be at most 200 characters")
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise ApplicationError(f"the webhook URL {url[:80]!r} is not an http:// or https:// URL") from None
    return url


# --- reads -------------------------------------------------------------------------------------


def plan_get(*, wave):
    """The wave's plan, or NotFound."""
    plan = RolloutPlan.objects.select_related("wave", "wave__factory", "author").filter(wave=wave).first()
    if plan is None:
        raise NotFound(f"wave {wave.name} has no rollout plan")
    return plan


def plan_find(*, wave):
    return RolloutPlan.objects.select_related("wave", "wave__factory", "author").filter(wave=wave).first()


def plan_phases(plan):
    return list(PlanPhase.objects.filter(plan=plan).select_related("saved_list", "rollout").order_by("position"))


def current_phase(phases):
    """The first phase that has not passed, or None when every phase has."""
    return next((p for p in phases if p.status != PhaseStatus.PASSED), None)


def phase_devices(phase, wave=None):
    """The devices a started phase staged. A full-group rollout stages the group itself: its
    devices are those of the group not staged on their own (before or since)."""
    wave = wave or phase.plan.wave
    rollout = phase.rollout
    if rollout is None:
        return Device.objects.none()
    if rollout.full_group:
        if rollout.group_id is None:
            return Device.objects.none()
        return Device.objects.filter(factory_id=wave.factory_id, is_production=True, tag=wave.tag, group_id=rollout.group_id).exclude(
            pk__in=WaveDevice.objects.filter(wave=wave).values("device_id")
        )
    return Device.objects.filter(wave_stagings__rollout=rollout)


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
latest AS (
  SELECT p.target_version, p.last_seen,
         MAX(e.reported_at) AS last_report,
         MAX(e.reported_at) FILTER (WHERE e.success = %(true)s) AS last_success,
         MAX(e.reported_at) FILTER (WHERE e.success = %(false)s) AS last_failure
    FROM phase p
    LEFT JOIN devices_deviceevent e ON e.device_id = p.id AND e.factory_id = %(factory)s AND e.target_version = %(version)s
   GROUP BY p.id, p.target_version, p.last_seen
),
states AS (
  SELECT last_seen, last_report,
         CASE
           WHEN target_version >= %(version)s
             OR (last_success IS NOT NULL AND (last_failure IS NULL OR last_success >= last_failure)) THEN 'updated'
           WHEN last_failure IS NOT NULL THEN 'failed'
           WHEN {stuck} THEN 'stuck'
           WHEN last_report IS NOT NULL THEN 'in_progress'
           ELSE 'waiting'
         END AS state
    FROM latest
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
    params = {"factory": wave.factory_id, "version": wave.version, "true": True, "false": False}
    # The devices' query comes with positional parameters; the rest of the statement uses names.
    for index, value in enumerate(devices_params):
        params[f"d{index}"] = value
    names = iter(range(len(devices_params)))
    devices_sql = re.sub(r"(?<!%)%s", lambda _: f"%(d{next(names)})s", devices_sql)
    stuck = unhealthy = "1 = 0"
    if phase.stuck_after_minutes is not None:
        params["silent_since"] = connection.ops.adapt_datetimefield_value(now - timedelta(minutes=phase.stuck_after_minutes))
        stuck = "last_report < %(silent_since)s"
        if (phase.started_at or now) < now - timedelta(minutes=phase.stuck_after_minutes):
            stuck += " OR last_report IS NULL"  # nothing reported since the phase started
        stuck = f"({stuck})"
        unhealthy = (
            "state = 'updated' AND (last_seen IS NULL OR last_seen < %(silent_since)s) "
            "AND (last_report IS NULL OR last_report < %(silent_since)s)"
        )
    with connection.cursor() as cursor:
        cursor.execute(_COUNTS_SQL.format(devices=devices_sql, stuck=stuck, unhealthy=unhealthy), params)
        return dict(zip(_COUNT_KEYS, cursor.fetchone()))


def phase_evidence(phase, *, now=None, wave=None):
    """The phase's counts and each gate: met or not, and whether unmet means wait or halt."""
    now = now or timezone.now()
    counts = phase_counts(phase, now=now, wave=wave)
    ev = Evidence(measured_at=now, **counts)
    n = ev.staged
    if phase.started_at is not None:
        ev.wait_ends_at = phase.started_at + timedelta(minutes=phase.wait_minutes)
        ev.gates.append(
            Gate(
                "wait",
                f"wait {phase.wait_minutes} min",
                now >= ev.wait_ends_at,
                "over" if now >= ev.wait_ends_at else f"{math.ceil((ev.wait_ends_at - now).total_seconds() / 60)} min left",
            )
        )
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


def _phase_estimates(phases, wave):
    """About how many devices each phase yet to start would stage, if it started after the phases
    before it took their share: a sample of a group leaves the rest of that group to the next."""
    estimates = {}
    taken = {}  # group name ("" for the fleet) -> devices the earlier pending phases take
    for phase in phases:
        if phase.rollout_id is not None or phase.status != PhaseStatus.PENDING:
            continue
        scope = Device.objects.filter(factory_id=wave.factory_id, is_production=True, tag=wave.tag)
        if phase.group_name:
            scope = scope.filter(group__name=phase.group_name)
        listed = phase.uuids or (phase.saved_list.uuids if phase.saved_list_id else "")
        if listed:
            try:
                scope = scope.filter(uuid__in=uuids_in(parse_uuid_list(listed)))
            except ApplicationError:
                estimates[phase.pk] = None
                continue
        available = (
            scope.exclude(pk__in=WaveDevice.objects.filter(wave=wave).values("device_id"))
            .exclude(group_id__in=WaveGroup.objects.filter(wave=wave).values("group_id"))
            .exclude(target_version__gte=wave.version)
            .count()
        )
        if not listed:
            group = phase.group_name
            available -= sum(taken.values()) if not group else taken.get(group, 0) + taken.get("", 0)
        available = max(0, available)
        limit = limit_parse(phase.limit)
        if limit is not None:
            available = min(limit_size(limit, scope.count() if limit[1] else 0), available)
        if not listed:
            taken[phase.group_name] = taken.get(phase.group_name, 0) + available
        estimates[phase.pk] = available
    return estimates


def _update_minutes(phases, wave, *, per_phase=2000):
    """Minutes from staging to a successful install, for a bounded sample of each started phase."""
    minutes = []
    for phase in phases:
        if phase.rollout_id is None or phase.started_at is None:
            continue
        rows = (
            DeviceEvent.objects.filter(
                device__in=phase_devices(phase, wave).values("pk"),
                target_version=wave.version,
                event_type=DeviceEvent.Type.INSTALL_COMPLETED,
                success=True,
            )
            .values("device_id")
            .annotate(at=Min("reported_at"))
            .order_by("device_id")[:per_phase]
        )
        minutes += [max(0.0, (r["at"] - phase.started_at).total_seconds() / 60) for r in rows]
    return sorted(minutes)


def _quantile(values, q):
    if not values:
        return None
    index = min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))
    return values[index]


def plan_forecast(*, plan, now=None, phases=None):
    """When the plan should finish, from how long its devices took to update so far.

    Each remaining phase takes the longer of its wait time and the time its success ratio needs
    (the same share of the devices observed so far updated within that time); approvals add an
    unknown delay and are counted apart.
    """
    now = now or timezone.now()
    wave = plan.wave
    phases = phases if phases is not None else plan_phases(plan)
    minutes = _update_minutes(phases, wave)
    hour_ago = now - timedelta(hours=1)
    # A device is staged once per wave, so the phases' device sets are disjoint and add up.
    rate = sum(
        DeviceEvent.objects.filter(
            device__in=phase_devices(p, wave).values("pk"),
            target_version=wave.version,
            event_type=DeviceEvent.Type.INSTALL_COMPLETED,
            success=True,
            reported_at__gt=hour_ago,
            reported_at__lte=now,
        )
        .values("device_id")
        .distinct()
        .count()
        for p in phases
        if p.rollout_id is not None
    )
    result = {
        "completion_at": None,
        "remaining_minutes": None,
        "updates_last_hour": rate,
        "typical_update_minutes": None if not minutes else round(_quantile(minutes, 0.5), 1),
        "slow_update_minutes": None if not minutes else round(_quantile(minutes, 0.9), 1),
        "observed_updates": len(minutes),
        "approvals_ahead": 0,
        "phases": [],
        "basis": "",
    }
    if plan.status in (Status.FINISHED, Status.CANCELED):
        result["basis"] = f"the plan is {plan.status}"
        return result
    if not minutes:
        result["basis"] = "no device has reported a successful update yet"
        return result
    at = now
    for phase in phases:
        if phase.status == PhaseStatus.PASSED:
            continue
        needed = _quantile(minutes, phase.min_success_ratio or 0.5)
        if phase.status == PhaseStatus.AWAITING_APPROVAL:
            end = now
        elif phase.started_at is not None:
            end = max(now, phase.started_at + timedelta(minutes=max(phase.wait_minutes, needed)))
        else:
            end = at + timedelta(minutes=max(phase.wait_minutes, needed))
        if phase.advance == PlanPhase.Advance.APPROVAL and phase.status != PhaseStatus.PASSED:
            result["approvals_ahead"] += 1
        at = max(at, end)
        result["phases"].append({"position": phase.position, "ends_at": at})
    result["completion_at"] = at
    result["remaining_minutes"] = round((at - now).total_seconds() / 60)
    result["basis"] = (
        f"half of the {len(minutes)} devices observed updated within {result['typical_update_minutes']} min, "
        f"90% within {result['slow_update_minutes']} min"
    )
    return result


def plan_show(*, plan, now=None, forecast=True):
    """Everything a timeline shows: phases with their gates, decisions, the forecast."""
    now = now or timezone.now()
    wave = plan.wave
    phases = plan_phases(plan)
    current = current_phase(phases)
    estimates = _phase_estimates(phases, wave)
    rows = []
    for phase in phases:
        evidence = phase_evidence(phase, now=now, wave=wave) if phase.rollout_id is not None else None
        rows.append(
            {
                "phase": phase,
                "label": phase_label(phase),
                "current": phase is current and plan.status not in (Status.DRAFT, Status.FINISHED, Status.CANCELED),
                "evidence": evidence,
                "estimate": estimates.get(phase.pk),
            }
        )
    decisions = list(PlanDecision.objects.filter(plan=plan).select_related("actor", "phase").order_by("created_at", "id"))
    return {
        "plan": plan,
        "wave": wave,
        "phases": rows,
        "current": current,
        "decisions": decisions,
        "forecast": plan_forecast(plan=plan, now=now, phases=phases) if forecast else None,
        "measured_at": now,
    }


def plan_template_list(*, factory):
    return list(PlanTemplate.objects.filter(factory=factory).select_related("created_by").order_by("name"))


def plan_template_get(*, factory, name):
    template = PlanTemplate.objects.filter(factory=factory, name=name).first()
    if template is None:
        raise NotFound(f"plan template {name} does not exist")
    return template


# --- writes ------------------------------------------------------------------------------------


def _locked_plan(plan):
    return RolloutPlan.objects.select_for_update(of=("self",)).select_related("wave", "wave__factory", "author").get(pk=plan.pk)


def _reason(reason, *, required, what):
    reason = (reason or "").strip()
    if "\x00" in reason:
        raise ApplicationError("the reason may not contain NUL characters")
    if required and not reason:
        raise ApplicationError(f"say why ({what}): the reason is recorded in the plan and the audit log")
    if len(reason) > MAX_REASON:
        raise ApplicationError(f"the reason may be at most {MAX_REASON} characters")
    return reason


def plan_set(*, wave, actor, phases, webhook_url=None):
    """Create the wave's plan or replace its phases; the actor becomes the plan's author.

    A plan that has not started is replaced entirely. A paused or halted plan keeps the phases
    that have started: the list must begin with them, with the same scope (the current phase's
    gates may change; a passed phase may not), and replaces the phases still to come.
    """
    factory = wave.factory
    authorize(user=actor, factory=factory, action="wave.manage")
    cleaned = phases_clean(phases, factory=factory)
    webhook = _validate_webhook(webhook_url) if webhook_url is not None else None
    try:
        with transaction.atomic():
            locked_wave = Wave.objects.select_for_update().get(pk=wave.pk)
            if not locked_wave.is_open:
                raise Conflict(f"wave {wave.name} is {locked_wave.status}; it takes no rollout plan")
            plan, created = RolloutPlan.objects.get_or_create(wave=locked_wave, defaults={"author": actor})
            plan = _locked_plan(plan)
            if plan.status == Status.RUNNING:
                raise Conflict(f"the plan of wave {wave.name} is running; pause it before changing its phases")
            if plan.status in (Status.FINISHED, Status.CANCELED):
                raise Conflict(f"the plan of wave {wave.name} is {plan.status}; it cannot change")
            existing = plan_phases(plan)
            # A phase that rolled out (or was skipped) is history: its scope stays as it was.
            started = [p for p in existing if p.rollout_id is not None or p.status == PhaseStatus.PASSED]
            if started and len(cleaned) < started[-1].position:
                raise ApplicationError(f"{started[-1].position} phases have already started; the plan must keep them")
            saved_lists = {s.name: s for s in SavedDeviceList.objects.filter(factory=factory, name__in=[p["saved_list"] for p in cleaned if p["saved_list"]])}
            by_position = {p.position: p for p in existing}
            for position, new in enumerate(cleaned, start=1):
                phase = by_position.get(position)
                if phase is None:
                    PlanPhase.objects.create(plan=plan, position=position, **_model_fields(new, saved_lists))
                    continue
                if phase in started:
                    where = f"phase {position} ({phase.name or phase_label(phase)})"
                    old = phase_as_input(phase)
                    if any((old[k] or "") != (new[k] or "") for k in SCOPE_KEYS):
                        raise ApplicationError(f"{where} has already rolled out; its scope cannot change")
                    if phase.status == PhaseStatus.PASSED:
                        if old != new:
                            raise ApplicationError(f"{where} has passed; it cannot change")
                        continue
                else:
                    phase.status = PhaseStatus.PENDING
                    phase.rollout = phase.started_at = phase.finished_at = None
                for key, value in _model_fields(new, saved_lists).items():
                    setattr(phase, key, value)
                phase.save()
            dropped = PlanPhase.objects.filter(plan=plan, position__gt=len(cleaned))
            # Decisions about a dropped phase stay in the plan's history.
            PlanDecision.objects.filter(phase__in=dropped).update(phase=None)
            dropped.delete()
            plan.author = actor
            fields = ["author", "updated_at"]
            if webhook is not None:
                plan.webhook_url = webhook
                fields.append("webhook_url")
            plan.save(update_fields=fields)
            _decide(
                plan,
                None,
                "set",
                actor,
                reason="created" if created else "phases replaced",
                evidence={"phases": [p["name"] or phase_label(p) for p in cleaned], "kept": len(started), "webhook": bool(plan.webhook_url)},
            )
    except IntegrityError:
        raise Conflict(f"the plan of wave {wave.name} was changed at the same time; try again") from None
    return plan


def _model_fields(phase, saved_lists):
    return {
        "name": phase["name"],
        "group_name": phase["group"],
        "limit": phase["limit"],
        "saved_list": saved_lists.get(phase["saved_list"]) if phase["saved_list"] else None,
        "uuids": phase["uuids"],
        "wait_minutes": phase["wait_minutes"],
        "min_reporting": phase["min_reporting"],
        "min_success_ratio": phase["min_success_ratio"],
        "max_failure_ratio": phase["max_failure_ratio"],
        "max_unhealthy": phase["max_unhealthy"],
        "stuck_after_minutes": phase["stuck_after_minutes"],
        "advance": phase["advance"],
        "approver_must_differ": phase["approver_must_differ"],
    }


def _phase_rollout(plan, phase, actor, now):
    """Roll the phase out (as `actor`) and start watching it. Raises ApplicationError if the
    rollout is refused; returns False when no device was left in its scope (phase passes)."""
    uuids = phase.uuids or (phase.saved_list.uuids if phase.saved_list_id else None)
    try:
        result = wave_services.wave_rollout(
            wave=plan.wave,
            actor=actor,
            group=phase.group_name or None,
            limit=phase.limit or None,
            uuids=uuids or None,
        )
    except ApplicationError as exc:
        if exc.code != "rollout_empty":
            raise
        phase.status = PhaseStatus.PASSED
        phase.started_at = phase.finished_at = now
        phase.save(update_fields=["status", "started_at", "finished_at"])
        _decide(plan, phase, "skip", actor, reason="no device is left in this phase's scope: nothing to roll out or watch", evidence={"devices": 0})
        return False
    phase.rollout = result.rollout
    phase.status = PhaseStatus.WATCHING
    phase.started_at = now
    phase.finished_at = None
    phase.save(update_fields=["rollout", "status", "started_at", "finished_at"])
    _decide(
        plan,
        phase,
        "rollout",
        actor,
        reason=result.message,
        evidence={"rollout": result.rollout.pk, "devices": result.count, "skipped": len(result.skipped), "full_group": result.full_group},
    )
    return True


def _advance(plan, phases, start_index, actor, now):
    """Start the next phase that has devices to roll out to, or finish the plan.

    Returns ("started", phase), ("finished", None), or raises the rollout's ApplicationError.
    """
    for phase in phases[start_index:]:
        if phase.status == PhaseStatus.PASSED:
            continue
        if _phase_rollout(plan, phase, actor, now):
            return "started", phase
    plan.status = Status.FINISHED
    plan.save(update_fields=["status", "updated_at"])
    _decide(plan, None, "finish", actor, reason=f"every phase has passed; complete wave {plan.wave.name} when you are ready", evidence={"status": plan.status})
    _webhook_on_commit(plan, "plan.finished", {"reason": "every phase has passed"})
    return "finished", None


def _halt(plan, phase, reason, evidence, now, actor=None):
    plan.status = Status.HALTED
    plan.halted_reason = reason[:MAX_REASON]
    plan.save(update_fields=["status", "halted_reason", "updated_at"])
    if phase is not None:
        phase.status = PhaseStatus.FAILED
        phase.finished_at = now
        phase.save(update_fields=["status", "finished_at"])
    _decide(plan, phase, "halt", actor, reason=reason, evidence=evidence)
    _webhook_on_commit(
        plan,
        "plan.halted",
        {
            "reason": reason,
            "phase": None if phase is None else {"position": phase.position, "name": phase.name or phase_label(phase)},
            "evidence": evidence,
        },
    )


def _halt_reason(phase, evidence):
    gates = "; ".join(f"{g.label}: {g.observed}" for g in evidence.halting)
    return f"phase {phase.position} ({phase.name or phase_label(phase)}) failed its gates: {gates}"


def _rollout_refused(phase, exc):
    return f"phase {phase.position} ({phase.name or phase_label(phase)}) could not be rolled out: {exc.message}"


def plan_start(*, wave, actor, now=None):
    """Start a drafted plan: roll out its first phase now, as `actor`, and watch it."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    now = now or timezone.now()
    plan = plan_get(wave=wave)
    with transaction.atomic():
        plan = _locked_plan(plan)
        if plan.status != Status.DRAFT:
            raise Conflict(f"the plan of wave {wave.name} is {plan.status}; only a draft plan can start")
        if plan.wave.status != Wave.Status.ACTIVE:
            raise Conflict(f"wave {wave.name} is {plan.wave.status}; sign it (it must be active) before starting its plan")
        phases = plan_phases(plan)
        if not phases:
            raise ApplicationError(f"the plan of wave {wave.name} has no phases")
        plan.status = Status.RUNNING
        plan.halted_reason = ""
        plan.save(update_fields=["status", "halted_reason", "updated_at"])
        _decide(plan, None, "start", actor, reason=f"{len(phases)} phases", evidence={"status": plan.status})
        try:
            _advance(plan, phases, 0, actor, now)
        except ApplicationError as exc:
            # The person starting the plan is right here: refuse, and change nothing.
            failed = current_phase(phases) or phases[0]
            raise type(exc)(_rollout_refused(failed, exc), code=exc.code, extra=exc.extra) from None
    return plan


@dataclass
class Evaluation:
    plan: RolloutPlan
    outcome: str  # idle, wait, advanced, awaiting-approval, halted, finished, canceled
    phase: PlanPhase | None = None
    reason: str = ""
    evidence: Evidence | None = None


def plan_evaluate(*, plan, now=None):
    """Measure the current phase's gates and act: advance, wait, ask for approval, or halt.

    Run by the scheduler (see plan_tasks) with no user: rollouts are made as the plan's author.
    A plan that is not running is left alone.
    """
    now = now or timezone.now()
    with transaction.atomic():
        plan = _locked_plan(plan)
        wave = plan.wave
        if plan.status in (Status.FINISHED, Status.CANCELED):
            return Evaluation(plan, "idle")
        if wave.status in (Wave.Status.COMPLETE, Wave.Status.CANCELED):
            # The wave was completed or canceled by hand (even while the plan was paused or
            # halted): the plan has nothing left to do.
            ended = Status.FINISHED if wave.status == Wave.Status.COMPLETE else Status.CANCELED
            plan.status = ended
            plan.save(update_fields=["status", "updated_at"])
            reason = f"wave {wave.name} was {'completed' if ended == Status.FINISHED else 'canceled'}"
            _decide(plan, None, "finish" if ended == Status.FINISHED else "cancel", None, reason=reason, evidence={"status": ended})
            return Evaluation(plan, "finished" if ended == Status.FINISHED else "canceled", reason=reason)
        if plan.status != Status.RUNNING:
            return Evaluation(plan, "idle")
        phases = plan_phases(plan)
        phase = current_phase(phases)
        if phase is None:
            _advance(plan, phases, len(phases), None, now)
            return Evaluation(plan, "finished")
        index = phases.index(phase)
        if phase.rollout_id is None and phase.status == PhaseStatus.PENDING:
            return _evaluate_start(plan, phases, index, now)
        evidence = phase_evidence(phase, now=now, wave=wave)
        if evidence.halting:
            reason = _halt_reason(phase, evidence)
            _halt(plan, phase, reason, evidence.as_dict(), now)
            return Evaluation(plan, "halted", phase, reason, evidence)
        if phase.status == PhaseStatus.AWAITING_APPROVAL:
            return Evaluation(plan, "awaiting-approval", phase, evidence=evidence)
        unmet = evidence.unmet
        if unmet:
            _record_wait(plan, phase, evidence)
            return Evaluation(plan, "wait", phase, "; ".join(f"{g.label}: {g.observed}" for g in unmet), evidence)
        if phase.advance == PlanPhase.Advance.APPROVAL:
            phase.status = PhaseStatus.AWAITING_APPROVAL
            phase.save(update_fields=["status"])
            differ = f" other than {actor_name(plan.author)}" if phase.approver_must_differ else ""
            reason = f"every gate is met; waiting for a release manager{differ} to approve"
            _decide(plan, phase, "await-approval", None, reason=reason, evidence=evidence.as_dict())
            _webhook_on_commit(plan, "plan.awaiting-approval", {"reason": reason, "phase": {"position": phase.position, "name": phase.name or phase_label(phase)}})
            return Evaluation(plan, "awaiting-approval", phase, reason, evidence)
        _pass(plan, phase, None, "every gate is met", evidence, now, kind="advance")
        return _evaluate_advance(plan, phases, index + 1, now, evidence)


def _pass(plan, phase, actor, reason, evidence, now, *, kind):
    phase.status = PhaseStatus.PASSED
    phase.finished_at = now
    phase.save(update_fields=["status", "finished_at"])
    _decide(plan, phase, kind, actor, reason=reason, evidence=evidence.as_dict() if evidence else {})


def _author(plan):
    """Who the scheduler acts as: the plan's author, who must still be allowed to roll out."""
    if plan.author is None:
        raise Forbidden("the plan's author no longer exists; set the plan again to become its author")
    if not plan.author.is_active:
        raise Forbidden(f"the plan's author {plan.author.get_username()} is disabled; set the plan again to become its author")
    return plan.author


def _evaluate_start(plan, phases, index, now):
    remaining = [p for p in phases[index:] if p.status != PhaseStatus.PASSED]
    try:
        outcome, started = _advance(plan, phases, index, _author(plan) if remaining else None, now)
    except ApplicationError as exc:
        failed = next(p for p in phases[index:] if p.status != PhaseStatus.PASSED)
        reason = _rollout_refused(failed, exc)
        _halt(plan, failed, reason, {"error": exc.message, "code": exc.code}, now)
        return Evaluation(plan, "halted", failed, reason)
    return Evaluation(plan, "advanced" if outcome == "started" else "finished", started)


def _evaluate_advance(plan, phases, index, now, evidence):
    result = _evaluate_start(plan, phases, index, now)
    result.evidence = result.evidence or evidence
    return result


def _record_wait(plan, phase, evidence):
    """A wait is recorded when what the phase waits for changes, not at every evaluation."""
    unmet = sorted(g.key for g in evidence.unmet)
    last = PlanDecision.objects.filter(plan=plan).order_by("-created_at", "-id").first()
    if last is not None and last.kind == "wait" and last.phase_id == phase.pk and last.evidence.get("unmet") == unmet:
        return
    _decide(
        plan,
        phase,
        "wait",
        None,
        reason="waiting for: " + "; ".join(f"{g.label} ({g.observed})" for g in evidence.unmet),
        evidence={**evidence.as_dict(), "unmet": unmet},
    )


def plan_approve(*, wave, actor, reason, now=None):
    """Approve the phase awaiting approval: it passes and the next phase rolls out as `actor`.

    If the phase's gates no longer hold (devices failed since), the plan halts instead and the
    approval is refused.
    """
    authorize(user=actor, factory=wave.factory, action="plan.approve")
    reason = _reason(reason, required=True, what="approving a phase")
    now = now or timezone.now()
    plan = plan_get(wave=wave)
    halted = None
    with transaction.atomic():
        plan = _locked_plan(plan)
        if plan.status != Status.RUNNING:
            raise Conflict(f"the plan of wave {wave.name} is {plan.status}; only a running plan takes approvals")
        phases = plan_phases(plan)
        phase = current_phase(phases)
        if phase is None or phase.status != PhaseStatus.AWAITING_APPROVAL:
            what = "no phase" if phase is None else f"phase {phase.position} is {phase.status}"
            raise Conflict(f"nothing to approve in the plan of wave {wave.name}: {what}")
        if phase.approver_must_differ and actor is not None and plan.author_id == actor.pk:
            raise Forbidden(
                f"phase {phase.position} needs an approval from a release manager other than the plan's author {actor_name(plan.author)}"
            )
        evidence = phase_evidence(phase, now=now, wave=plan.wave)
        if evidence.halting:
            halted = _halt_reason(phase, evidence)
            _halt(plan, phase, halted, evidence.as_dict(), now)
        else:
            _pass(plan, phase, actor, reason, evidence, now, kind="approve")
            try:
                _advance(plan, phases, phases.index(phase) + 1, actor, now)
            except ApplicationError as exc:
                failed = current_phase(phases)
                _halt(plan, failed, _rollout_refused(failed, exc), {"error": exc.message, "code": exc.code}, now, actor=actor)
    if halted:
        raise Conflict(f"not approved: {halted}; the plan is halted")
    return plan


def plan_pause(*, wave, actor, reason=""):
    """Stop advancing: no phase rolls out and no gate is judged until the plan resumes."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    reason = _reason(reason, required=False, what="pausing")
    plan = plan_get(wave=wave)
    with transaction.atomic():
        plan = _locked_plan(plan)
        if plan.status != Status.RUNNING:
            raise Conflict(f"the plan of wave {wave.name} is {plan.status}; only a running plan can be paused")
        plan.status = Status.PAUSED
        plan.save(update_fields=["status", "updated_at"])
        _decide(plan, current_phase(plan_phases(plan)), "pause", actor, reason=reason, evidence={"status": plan.status})
    return plan


def plan_resume(*, wave, actor, reason=""):
    """Resume a paused or halted plan. A halted phase is watched again (its gates may have been
    changed with plan_set meanwhile); a phase whose rollout was refused is rolled out again at
    the next evaluation. Resuming a halted plan needs a reason."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    plan = plan_get(wave=wave)
    reason = _reason(reason, required=plan.status == Status.HALTED, what="resuming a halted plan")
    with transaction.atomic():
        plan = _locked_plan(plan)
        if plan.status not in (Status.PAUSED, Status.HALTED):
            raise Conflict(f"the plan of wave {wave.name} is {plan.status}; only a paused or halted plan can resume")
        if plan.wave.status != Wave.Status.ACTIVE:
            raise Conflict(f"wave {wave.name} is {plan.wave.status}; its plan cannot resume")
        if plan.status == Status.HALTED and not reason:
            raise ApplicationError("say why (resuming a halted plan): the reason is recorded in the plan and the audit log")
        was = plan.status
        phase = current_phase(plan_phases(plan))
        if phase is not None and phase.status == PhaseStatus.FAILED:
            phase.status = PhaseStatus.WATCHING if phase.rollout_id is not None else PhaseStatus.PENDING
            phase.finished_at = None
            phase.save(update_fields=["status", "finished_at"])
        plan.status = Status.RUNNING
        plan.halted_reason = ""
        plan.save(update_fields=["status", "halted_reason", "updated_at"])
        _decide(plan, phase, "resume", actor, reason=reason, evidence={"status": plan.status, "was": was})
    return plan


def plan_wave_cancel(*, wave, actor, reason=""):
    """Cancel the plan's wave (see wave_cancel) and end the plan, in one transaction."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    reason = _reason(reason, required=False, what="canceling")
    plan = plan_get(wave=wave)
    with transaction.atomic():
        plan = _locked_plan(plan)
        if plan.status == Status.CANCELED:
            raise Conflict(f"the plan of wave {wave.name} is already canceled")
        wave_services.wave_cancel(wave=plan.wave, actor=actor)
        plan.wave.refresh_from_db()
        plan.status = Status.CANCELED
        plan.save(update_fields=["status", "updated_at"])
        _decide(plan, current_phase(plan_phases(plan)), "cancel", actor, reason=reason or f"wave {wave.name} canceled", evidence={"status": plan.status})
    return plan


def plans_evaluate_due(*, now=None, claim_seconds=CLAIM_SECONDS):
    """Evaluate every running plan once. Each plan is claimed with a conditional update, so two
    workers (or a slow run overlapping the next tick) never act on the same plan twice."""
    now = now or timezone.now()
    free = Q(evaluating_until__isnull=True) | Q(evaluating_until__lt=now)
    # Running plans, and plans of any other open status whose wave was completed or canceled.
    due = Q(status=Status.RUNNING) | Q(
        status__in=(Status.DRAFT, Status.PAUSED, Status.HALTED), wave__status__in=(Wave.Status.COMPLETE, Wave.Status.CANCELED)
    )
    results = []
    for plan_id in list(RolloutPlan.objects.filter(free & due).order_by("id").values_list("id", flat=True)):
        until = now + timedelta(seconds=claim_seconds)
        # The claim filters on the plan's own row only: a join would turn it into a subquery
        # that PostgreSQL does not re-check against a concurrent claim.
        open_statuses = (Status.RUNNING, Status.DRAFT, Status.PAUSED, Status.HALTED)
        if not RolloutPlan.objects.filter(free, pk=plan_id, status__in=open_statuses).update(evaluating_until=until):
            continue
        rest = None
        try:
            results.append(plan_evaluate(plan=RolloutPlan(pk=plan_id), now=now))
            # Evaluated for this tick: a duplicate tick (a second beat, a redelivered message)
            # finds it taken; the next tick, a minute later, finds it free.
            rest = now + timedelta(seconds=EVALUATED_REST_SECONDS)
        except Exception:
            # One broken plan must not stop the others; the next tick tries it again.
            logger.exception("evaluating rollout plan %s failed", plan_id)
        finally:
            RolloutPlan.objects.filter(pk=plan_id, evaluating_until=until).update(evaluating_until=rest)
    return results


# --- templates ---------------------------------------------------------------------------------


def _template_name(name):
    return name_clean(name, what="a template name", max_length=TEMPLATE_NAME_MAX, forbidden=TEMPLATE_NAME_FORBIDDEN)


def plan_template_save(*, factory, actor, name, phases=None, wave=None, replace=False):
    """Save phases (given, or the plan of `wave`) as a template. A group may be `{group}`,
    filled in when the template is applied, so one template serves every group."""
    authorize(user=actor, factory=factory, action="wave.manage")
    name = _template_name(name)
    if phases is None:
        if wave is None:
            raise ApplicationError("give the phases to save, or a wave whose plan to save")
        phases = [phase_as_input(p) for p in plan_phases(plan_get(wave=wave))]
    cleaned = phases_clean(phases, factory=factory, placeholders=True)
    with transaction.atomic():
        existing = PlanTemplate.objects.select_for_update().filter(factory=factory, name=name).first()
        if existing is not None and not replace:
            raise Conflict(f"a plan template named {name} already exists")
        try:
            with transaction.atomic():
                if existing is not None:
                    existing.phases = cleaned
                    existing.created_by = actor
                    existing.save(update_fields=["phases", "created_by"])
                    template = existing
                else:
                    template = PlanTemplate.objects.create(factory=factory, name=name, phases=cleaned, created_by=actor)
        except IntegrityError:
            raise Conflict(f"a plan template named {name} was just created") from None
        audit_record(factory=factory, actor=actor, action="plan.template-save", target=name, details={"phases": [phase_label(p) for p in cleaned]})
    return template


def plan_template_delete(*, factory, actor, name):
    authorize(user=actor, factory=factory, action="wave.manage")
    with transaction.atomic():
        template = plan_template_get(factory=factory, name=name)
        template.delete()
        audit_record(factory=factory, actor=actor, action="plan.template-delete", target=name)


def template_phases(template, groups=None):
    """The template's phases, repeated for each group when they use the `{group}` placeholder."""
    phases = template.phases if isinstance(template, PlanTemplate) else template
    uses = any(GROUP_PLACEHOLDER in (p.get("group") or "") or GROUP_PLACEHOLDER in (p.get("name") or "") for p in phases)
    groups = [g.strip() for g in (groups or []) if g and g.strip()]
    if not uses:
        if groups:
            raise ApplicationError("this template names its groups itself; it takes no groups")
        return [dict(p) for p in phases]
    if not groups:
        raise ApplicationError("this template is per group ({group}): give the groups to apply it to")
    out = []
    for group in groups:
        for p in phases:
            out.append({**p, "group": (p.get("group") or "").replace(GROUP_PLACEHOLDER, group), "name": (p.get("name") or "").replace(GROUP_PLACEHOLDER, group)})
    return out


def plan_template_apply(*, wave, actor, name, groups=None, webhook_url=None):
    """Set the wave's plan from a template (see plan_set)."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    template = plan_template_get(factory=wave.factory, name=name)
    phases = template_phases(template, groups)
    with transaction.atomic():
        plan = plan_set(wave=wave, actor=actor, phases=phases, webhook_url=webhook_url)
        audit_record(factory=wave.factory, actor=actor, action="plan.template-apply", target=wave.name, details={"template": name, "groups": list(groups or [])})
    return plan
