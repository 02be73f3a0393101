"""A phase's settings as every door gives them (API, CLI, templates, the editor): parsed, checked
and put in the doors' one spelling; the seed's large-fleet example; a phase's label."""
import math

from devices.models import DeviceGroup
from devices.uuids import parse_uuid_list
from factory.errors import ApplicationError
from factory.names import name_problem
from factory.plurals import counted

from ..models import PlanPhase, SavedDeviceList
from ..retries import MAX_RETRIES
from ..scope import limit_parse, limit_text, scope_require
from .pacing import PACE_KEYS, pace_clean

MAX_PHASES = 50
MAX_MINUTES = 30 * 24 * 60
DEFAULT_WAIT_MINUTES = 60
GROUP_PLACEHOLDER = "{group}"
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
    "retry_failed",
    *PACE_KEYS,
)
SCOPE_KEYS = ("group", "limit", "saved_list", "uuids")


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
    where = f"Phase {index}"
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
        "retry_failed": _whole(raw.get("retry_failed"), where, "retries per failed device", low=0, high=MAX_RETRIES, default=0),
        **pace_clean(raw, where),
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
        raise ApplicationError("A plan is a list of phases")
    phases = list(phases)
    if not phases:
        raise ApplicationError("A plan needs at least one phase")
    if len(phases) > MAX_PHASES:
        raise ApplicationError(f"A plan may have at most {MAX_PHASES} phases")
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
        "retry_failed": phase.retry_failed,
        **{key: getattr(phase, key) for key in PACE_KEYS},
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
        parts.append(f"{limit} of " if limit.endswith("%") else f"{counted(int(limit), 'device')} of ")
    elif not saved and not uuids:
        parts.append("every device of " if group else "")
    if saved:
        parts.append(f"list {saved}" + (" in " if group else ""))
    elif uuids:
        count = len([u for u in uuids.split() if u]) if isinstance(uuids, str) else len(uuids)
        parts.append(counted(count, "listed device") + (" in " if group else ""))
    parts.append(f"group {group}" if group else ("the fleet" if not saved and not uuids else ""))
    return "".join(parts).strip()
