"""Pacing inside a phase: a paced phase stages its devices in batches over time, at most N a
minute (`pace_per_minute`) or growing from `pace_start` by `pace_factor` each minute up to
`pace_ceiling`. Pure arithmetic on the phase's own fields: a paced tick never counts devices."""
import math

from devices.uuids import MAX_UUIDS
from factory.errors import ApplicationError

# Catching up after a stalled scheduler releases at most this many minutes' worth at once, so
# an outage never turns into a flood.
CATCH_UP_MINUTES = 2
# A tick sooner than this after the last batch (a duplicate tick, an evaluation by hand)
# stages nothing: the rate is per minute, not per evaluation.
MIN_BATCH_GAP_SECONDS = 30
MAX_PACE = MAX_UUIDS
MAX_FACTOR = 10.0
MIN_FACTOR = 1.01


def is_paced(phase):
    """A phase (model or cleaned settings) paced by rate or exponentially."""
    get = phase.get if isinstance(phase, dict) else lambda k: getattr(phase, k)
    return bool(get("pace_per_minute") or get("pace_start"))


def batches_pending(phase):
    """A paced phase that staged its first batch and has more to stage."""
    return is_paced(phase) and phase.last_batch_at is not None and not phase.batches_done


def _exponential_size(phase, k):
    ceiling = phase.pace_ceiling or MAX_PACE
    return max(1, min(ceiling, MAX_PACE, math.floor(phase.pace_start * phase.pace_factor**k)))


def _exponential_next(phase, staged):
    """The next batch of an exponential phase that staged `staged` devices in full batches."""
    cum, k = 0, 0
    while True:
        size = _exponential_size(phase, k)
        if cum >= staged or size >= (phase.pace_ceiling or MAX_PACE):
            return size
        cum += size
        k += 1


def first_batch_size(phase):
    if phase.pace_per_minute:
        return min(phase.pace_per_minute, MAX_PACE)
    return _exponential_size(phase, 0)


def next_batch_size(phase, now):
    """How many devices this tick stages for a paced phase (0: too soon after the last batch)."""
    if phase.last_batch_at is None:
        return first_batch_size(phase)
    seconds = (now - phase.last_batch_at).total_seconds()
    if seconds < MIN_BATCH_GAP_SECONDS:
        return 0
    if phase.pace_per_minute:
        minutes = min(CATCH_UP_MINUTES, max(1, math.floor(seconds / 60)))
        return min(phase.pace_per_minute * minutes, MAX_PACE)
    return _exponential_next(phase, phase.staged_count)


def pace_label(phase):
    """'10 a minute', '5, x2 each minute, up to 200'; '' for a phase staged at once."""
    get = phase.get if isinstance(phase, dict) else lambda k: getattr(phase, k)
    if get("pace_per_minute"):
        return f"{get('pace_per_minute'):,} a minute"
    if get("pace_start"):
        factor = f"{get('pace_factor'):g}"
        ceiling = f", up to {get('pace_ceiling'):,}" if get("pace_ceiling") else ""
        return f"{get('pace_start'):,}, x{factor} each minute{ceiling}"
    return ""


def pace_minutes(phase, devices, staged=0):
    """About how many minutes after its next batch a paced phase that staged `staged` devices
    stages its last one, for `devices` more (0: unpaced, or one batch is enough)."""
    if not devices or not is_paced(phase):
        return 0
    get = phase.get if isinstance(phase, dict) else lambda k: getattr(phase, k)
    if get("pace_per_minute"):
        return max(0, math.ceil(devices / get("pace_per_minute")) - 1)
    start, factor, ceiling = get("pace_start"), get("pace_factor"), min(get("pace_ceiling") or MAX_PACE, MAX_PACE)
    cum, k = 0, 0
    # Skip the batches already staged; then count the ones still to come.
    while cum < staged:
        size = max(1, min(ceiling, math.floor(start * factor**k)))
        if size >= ceiling:
            break
        cum += size
        k += 1
    batches = 0
    while devices > 0:
        size = max(1, min(ceiling, math.floor(start * factor**k)))
        if size >= ceiling:
            batches += math.ceil(devices / size)
            break
        devices -= size
        batches += 1
        k += 1
    return max(0, batches - 1)


def pace_progress(phase, total=None):
    """'staged 30 of 100 at 10 a minute' (total unknown: 'staged 30 at ...')."""
    of = f" of {total:,}" if total is not None else ""
    done = "; every batch staged" if phase.batches_done else ""
    return f"staged {phase.staged_count:,}{of} at {pace_label(phase)}{done}"


def phase_total(phase):
    """The phase's cap on devices as resolved at its first batch (None: its whole scope)."""
    rollout = phase.rollout
    if rollout is not None and rollout.options.get("phase_total") is not None:
        return rollout.options["phase_total"]
    return None


PACE_KEYS = ("pace_per_minute", "pace_start", "pace_factor", "pace_ceiling")


def _number(value, where, what, *, whole, low, high):
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ApplicationError(f"{where}: {what} must be a number")
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) else value
    except ValueError:
        raise ApplicationError(f"{where}: {what} {str(value)[:20]!r} is not a number") from None
    if math.isnan(number) or not low <= number <= high:
        raise ApplicationError(f"{where}: {what} must be between {low:,g} and {high:,g}")
    if whole:
        if not float(number).is_integer():
            raise ApplicationError(f"{where}: {what} must be a whole number")
        return int(number)
    return round(float(number), 4)


def pace_clean(raw, where):
    """A phase's pace settings as a door gives them -> checked (rate and exponential exclusive)."""
    pace = {
        "pace_per_minute": _number(raw.get("pace_per_minute"), where, "pace (devices a minute)", whole=True, low=1, high=MAX_PACE),
        "pace_start": _number(raw.get("pace_start"), where, "pace start (first batch)", whole=True, low=1, high=MAX_PACE),
        "pace_factor": _number(raw.get("pace_factor"), where, "pace factor", whole=False, low=0, high=MAX_FACTOR),
        "pace_ceiling": _number(raw.get("pace_ceiling"), where, "pace ceiling (largest batch)", whole=True, low=1, high=MAX_PACE),
    }
    exponential = [k for k in ("pace_start", "pace_factor", "pace_ceiling") if pace[k] is not None]
    if pace["pace_per_minute"] is not None and exponential:
        raise ApplicationError(f"{where}: pace either at a rate (pace_per_minute) or exponentially (pace_start, pace_factor, pace_ceiling), not both")
    if exponential and (pace["pace_start"] is None or pace["pace_factor"] is None):
        raise ApplicationError(f"{where}: exponential pacing needs pace_start and pace_factor (and optionally pace_ceiling)")
    # At least MIN_FACTOR: a factor a hair above 1 would grow so slowly that counting its batches
    # (next_batch_size, the forecast) walks one batch a device.
    if pace["pace_factor"] is not None and pace["pace_factor"] < MIN_FACTOR:
        raise ApplicationError(f"{where}: the pace factor must be above 1 (each batch grows; at least {MIN_FACTOR:g}), not {pace['pace_factor']:g}")
    if pace["pace_ceiling"] is not None and pace["pace_ceiling"] < pace["pace_start"]:
        raise ApplicationError(f"{where}: the pace ceiling ({pace['pace_ceiling']:,}) may not be below the first batch ({pace['pace_start']:,})")
    return pace
