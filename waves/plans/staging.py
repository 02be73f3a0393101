"""When and how many devices a plan's phase stages: a paced phase's batches (each a rollout of
new devices, tied to the phase by Rollout.phase) and the maintenance windows that hold a phase
back. The evaluator (plans.services) calls these inside the plan's locked transaction."""
from devices.models import Device
from devices.selectors import uuids_in
from devices.uuids import parse_uuid_list
from factory.errors import ApplicationError

from .. import services as wave_services
from ..models import PlanDecision, Rollout
from ..scope import limit_parse, limit_size
from .decisions import decision_record
from .pacing import first_batch_size, is_paced, next_batch_size, pace_label, pace_progress, phase_total
from .windows import window_reason, windows_for

PACE_STATE = ["staged_count", "batches_done", "last_batch_at"]


def _uuids(phase):
    return phase.uuids or (phase.saved_list.uuids if phase.saved_list_id else None) or None


def _resolved_total(wave, phase):
    """The phase's limit as a number of devices, resolved once at its first batch: N, N% of
    its scope (one count, never again), or None for its whole scope."""
    limit = limit_parse(phase.limit)
    if limit is None:
        return None
    if not limit[1]:
        return limit[0]
    scope = Device.objects.filter(factory_id=wave.factory_id, is_production=True, tag=wave.tag)
    if phase.group_name:
        scope = scope.filter(group__name=phase.group_name)
    if _uuids(phase):
        scope = scope.filter(uuid__in=uuids_in(parse_uuid_list(_uuids(phase))))
    return limit_size(limit, scope.count())


def _stage(plan, phase, actor, size):
    return wave_services.wave_rollout(wave=plan.wave, actor=actor, group=phase.group_name or None, limit=str(size), uuids=_uuids(phase), phase=phase)


def phase_rollout(plan, phase, actor, now):
    """A phase's rollout: all at once, or a paced phase's first batch. Raises the rollout's
    ApplicationError (code rollout_empty when no device is left in its scope)."""
    if not is_paced(phase):
        return wave_services.wave_rollout(
            wave=plan.wave, actor=actor, group=phase.group_name or None, limit=phase.limit or None, uuids=_uuids(phase), phase=phase
        )
    total = _resolved_total(plan.wave, phase)
    size = first_batch_size(phase) if total is None else min(first_batch_size(phase), total)
    if size <= 0:
        raise ApplicationError("No device matches this rollout: nothing was staged", code="rollout_empty")
    result = _stage(plan, phase, actor, size)
    result.rollout.options = {**result.rollout.options, "phase_total": total, "pace": pace_label(phase)}
    Rollout.objects.filter(pk=result.rollout.pk).update(options=result.rollout.options)
    phase.staged_count = result.count
    phase.last_batch_at = now
    phase.batches_done = result.count < size or (total is not None and result.count >= total)
    phase.save(update_fields=PACE_STATE)
    return result


def batch_next(plan, phase, actor, now):
    """Stage a paced phase's next batch, if one is due. Returns what happened, in words."""
    size = next_batch_size(phase, now)
    if size <= 0:
        return f"the next batch is due a minute after the last; {pace_progress(phase, phase_total(phase))}"
    total = phase_total(phase)
    if total is not None:
        size = min(size, total - phase.staged_count)
    count, rollout = 0, None
    if size > 0:
        try:
            result = _stage(plan, phase, actor, size)
            count, rollout = result.count, result.rollout
        except ApplicationError as exc:
            if exc.code != "rollout_empty":
                raise
    if rollout is not None:
        phase.staged_count += count
        phase.last_batch_at = now
    # A short batch, an empty one or the phase's limit: every device of its scope is staged.
    phase.batches_done = count < size or size <= 0 or (total is not None and phase.staged_count >= total)
    phase.save(update_fields=PACE_STATE)
    reason = f"staged {count:,} more; {pace_progress(phase, total)}" if count else f"no device is left for another batch; {pace_progress(phase, total)}"
    decision_record(
        plan, phase, "batch", actor, reason=reason, evidence={"rollout": rollout.pk if rollout else None, "devices": count, "staged": phase.staged_count}
    )
    return reason


def window_wait(plan, phase, now):
    """Outside its window, a phase releases nothing: record the wait once (not at every tick,
    like the gates' waits) and say why. None when the window is open."""
    reason = window_reason(plan, phase.group_name, now)
    if reason is None:
        return None
    last = PlanDecision.objects.filter(plan=plan).order_by("-created_at", "-id").first()
    if not (last is not None and last.kind == "wait" and last.phase_id == phase.pk and last.evidence.get("unmet") == ["window"]):
        windows = windows_for(plan, phase.group_name)
        decision_record(plan, phase, "wait", None, reason=reason, evidence={"unmet": ["window"], "windows": windows, "timezone": plan.timezone})
    return reason
