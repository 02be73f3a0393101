"""Maintenance windows: phases release devices only inside them.

A window is {"days": ["mon", ...], "start": "HH:MM", "end": "HH:MM"} in the plan's time zone;
the compact text "mon-fri 02:00-05:00" (what the CLI and the editor take) means the same. A
window whose end is not after its start crosses midnight: it opens on the listed days and closes
the next morning. `group_windows` gives a group its own windows, which replace the plan's for
that group's phases. No windows: always open.
"""
import re
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from devices.models import DeviceGroup
from factory.errors import ApplicationError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WINDOWS = 20
MAX_GROUP_WINDOWS = 50
_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_TEXT_RE = re.compile(r"^\s*(\S+)\s+(\S+)\s*-\s*(\S+)\s*$")


def _days(value, where):
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value.strip().lower()) if v]
    if not isinstance(value, (list, tuple)) or not value:
        raise ApplicationError(f"{where}: days must be a list such as mon,tue or a range such as mon-fri")
    days = set()
    for item in value:
        item = str(item).strip().lower()
        if "-" in item:
            first, _, last = item.partition("-")
            if _day(first) is None or _day(last) is None:
                raise ApplicationError(f"{where}: unknown day in {item[:20]!r}; days are {', '.join(DAYS)}")
            i, j = DAYS.index(_day(first)), DAYS.index(_day(last))
            span = range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)]
            days.update(DAYS[k] for k in span)
        elif _day(item) is not None:
            days.add(_day(item))
        elif item in ("daily", "every", "all", "*"):
            days.update(DAYS)
        else:
            raise ApplicationError(f"{where}: unknown day {item[:20]!r}; days are {', '.join(DAYS)}")
    return [d for d in DAYS if d in days]


_LONG = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(text):
    """'mon' or 'monday' -> 'mon'; anything else -> None."""
    if text in DAYS:
        return text
    return DAYS[_LONG.index(text)] if text in _LONG else None


def _time(value, where, what):
    match = _TIME_RE.match(str(value or "").strip())
    if not match:
        raise ApplicationError(f"{where}: {what} time {str(value)[:20]!r} must be HH:MM (00:00 to 23:59)")
    return f"{int(match.group(1)):02d}:{match.group(2)}"


def window_clean(raw, where="Window"):
    """One window, as a dict or as text such as 'mon-fri 02:00-05:00' -> its stored form."""
    if isinstance(raw, str):
        match = _TEXT_RE.match(raw)
        if not match:
            raise ApplicationError(f"{where}: {raw[:40]!r} is not a window such as 'mon-fri 02:00-05:00'")
        raw = {"days": match.group(1), "start": match.group(2), "end": match.group(3)}
    if not isinstance(raw, dict):
        raise ApplicationError(f"{where}: a window is days, start and end, e.g. 'mon-fri 02:00-05:00'")
    unknown = sorted(str(k) for k in raw if k not in ("days", "start", "end"))
    if unknown:
        raise ApplicationError(f"{where}: unknown setting {', '.join(unknown[:5])}; a window takes days, start, end")
    window = {"days": _days(raw.get("days"), where), "start": _time(raw.get("start"), where, "start"), "end": _time(raw.get("end"), where, "end")}
    if window["start"] == window["end"] and window["start"] != "00:00":
        raise ApplicationError(f"{where}: a window needs different start and end times (00:00-00:00 is the whole day)")
    return window


def windows_clean(raw, where="Windows"):
    if raw is None or raw == "" or raw == []:
        return []
    if isinstance(raw, (str, dict)):
        raw = [w for w in re.split(r"[;\n]", raw) if w.strip()] if isinstance(raw, str) else [raw]
    if not isinstance(raw, (list, tuple)):
        raise ApplicationError(f"{where}: give a list of windows such as 'mon-fri 02:00-05:00'")
    if len(raw) > MAX_WINDOWS:
        raise ApplicationError(f"{where}: at most {MAX_WINDOWS} windows")
    return [window_clean(w, f"{where} {i}") for i, w in enumerate(raw, start=1)]


def timezone_clean(name):
    name = str(name or "").strip() or "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ApplicationError(f"Unknown time zone {name[:64]!r}; use a name such as Europe/Berlin or UTC") from None
    return name


def group_windows_clean(raw, *, group_exists=None):
    """{"group": [windows]}, or a list of 'group=windows' texts (the CLI's --group-window)."""
    if raw is None or raw == "" or raw == {} or raw == []:
        return {}
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, (list, tuple)):
        merged = {}
        for item in raw:
            group, sep, text = str(item).partition("=")
            if not sep or not group.strip():
                raise ApplicationError(f"Group window {str(item)[:40]!r} must be GROUP=WINDOW, e.g. beta=sat 00:00-06:00")
            merged.setdefault(group.strip(), []).append(text.strip().strip("\"'"))
        raw = merged
    if not isinstance(raw, dict):
        raise ApplicationError("Group windows map a group name to its windows")
    if len(raw) > MAX_GROUP_WINDOWS:
        raise ApplicationError(f"At most {MAX_GROUP_WINDOWS} groups may have their own windows")
    cleaned = {}
    for group, windows in raw.items():
        group = str(group).strip()
        if group_exists is not None and not group_exists(group):
            raise ApplicationError(f"Group windows: device group {group[:64]} does not exist")
        cleaned[group] = windows_clean(windows, f"Windows of group {group[:64]}")
        if not cleaned[group]:
            raise ApplicationError(f"Windows of group {group[:64]}: give at least one window (or leave the group out)")
    return cleaned


def window_text(window):
    """{"days": ["mon", ..., "fri"], ...} -> 'mon-fri 02:00-05:00'."""
    days = window["days"]
    indexes = [DAYS.index(d) for d in days]
    if len(days) == 7:
        text = "daily"
    elif len(days) > 2 and indexes == list(range(indexes[0], indexes[-1] + 1)):
        text = f"{days[0]}-{days[-1]}"
    else:
        text = ",".join(days)
    return f"{text} {window['start']}-{window['end']}"


def windows_for(plan, group_name):
    """The windows that apply to a phase of `group_name`: the group's own, else the plan's."""
    return (plan.group_windows or {}).get(group_name or "") or plan.windows or []


def _zone(plan):
    try:
        return ZoneInfo(plan.timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _hm(text):
    h, m = text.split(":")
    return time(int(h), int(m))


def _spans(window, day, zone):
    """The window's opening that begins on local date `day`, as aware datetimes (or None)."""
    if DAYS[day.weekday()] not in window["days"]:
        return None
    start = datetime.combine(day, _hm(window["start"]), zone)
    end_day = day if window["end"] > window["start"] else day + timedelta(days=1)
    end = datetime.combine(end_day, _hm(window["end"]), zone)
    return start, end


def window_open(plan, group_name, now):
    """Whether a phase of `group_name` may release devices at `now`."""
    windows = windows_for(plan, group_name)
    if not windows:
        return True
    zone = _zone(plan)
    local = now.astimezone(zone)
    for window in windows:
        # Today's opening, or yesterday's that crosses midnight.
        for day in (local.date(), local.date() - timedelta(days=1)):
            span = _spans(window, day, zone)
            if span and span[0] <= local < span[1]:
                return True
    return False


def next_opening(plan, group_name, now):
    """When a phase of `group_name` may next release devices: `now` if open, else the next
    opening (None with no window at all)."""
    if window_open(plan, group_name, now):
        return now
    windows = windows_for(plan, group_name)
    zone = _zone(plan)
    local = now.astimezone(zone)
    best = None
    for offset in range(0, 8):
        day = local.date() + timedelta(days=offset)
        for window in windows:
            span = _spans(window, day, zone)
            if span and span[0] > local and (best is None or span[0] < best):
                best = span[0]
        if best is not None:
            break
    return best


def next_closing(plan, group_name, now):
    """When the open window closes (None: no windows, or closed now)."""
    windows = windows_for(plan, group_name)
    if not windows:
        return None
    zone = _zone(plan)
    local = now.astimezone(zone)
    ends = []
    for window in windows:
        for day in (local.date(), local.date() - timedelta(days=1)):
            span = _spans(window, day, zone)
            if span and span[0] <= local < span[1]:
                ends.append(span[1])
    return min(ends) if ends else None


def opening_text(plan, at):
    """'Tue 02:00 Europe/Berlin'."""
    local = at.astimezone(_zone(plan))
    return f"{DAYS[local.weekday()].capitalize()} {local:%H:%M} {plan.timezone or 'UTC'}"


def window_reason(plan, group_name, now):
    """Why a phase of `group_name` releases nothing now: every door says it in these words
    (None: its window is open)."""
    if window_open(plan, group_name, now):
        return None
    opens = next_opening(plan, group_name, now)
    when = f": opens {opening_text(plan, opens)}" if opens else ""
    return f"waiting for the maintenance window{when}"


def windows_summary(plan):
    """What the timeline and `plan show` print: the plan's windows, and each group's own."""
    parts = [window_text(w) for w in plan.windows or []]
    text = "; ".join(parts) if parts else "any time"
    groups = [f"{g}: {'; '.join(window_text(w) for w in ws)}" for g, ws in sorted((plan.group_windows or {}).items())]
    return f"{text} ({plan.timezone or 'UTC'})" + (f"; group {', group '.join(groups)}" if groups else "")


def plan_windows_clean(*, factory, windows=None, time_zone=None, group_windows=None):
    """A plan's windows as plan_set takes them -> the fields to change (only those given)."""
    fields = {}
    if windows is not None:
        fields["windows"] = windows_clean(windows)
    if time_zone is not None:
        fields["timezone"] = timezone_clean(time_zone)
    if group_windows is not None:
        fields["group_windows"] = group_windows_clean(
            group_windows, group_exists=lambda name: DeviceGroup.objects.filter(factory=factory, name=name).exists()
        )
    return fields


def window_schedule(plan, group_name, start, minutes):
    """When `minutes` of releasing that begin at `start` end, counting only time inside the
    windows (a phase's batches stop at a window's close and go on at the next opening)."""
    at = next_opening(plan, group_name, start) or start
    left = timedelta(minutes=minutes)
    for _ in range(100):
        closes = next_closing(plan, group_name, at)
        if closes is None or at + left <= closes:
            return at + left
        left -= closes - at
        at = next_opening(plan, group_name, closes) or closes
    return at + left
