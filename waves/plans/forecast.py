"""When a plan should finish, from how long its devices took to update so far, and everything a
plan's timeline shows: phases with their gates and estimates, decisions, the forecast."""
import math
from datetime import timedelta

from django.db.models import Min
from django.utils import timezone

from devices.models import Device, DeviceEvent
from devices.selectors import uuids_in
from devices.uuids import parse_uuid_list
from factory.errors import ApplicationError
from factory.plurals import counted

from ..models import PlanDecision, PlanPhase, RolloutPlan, WaveDevice, WaveGroup
from ..outcomes import not_updated_q
from ..scope import limit_parse, limit_size
from .gates import phase_evidence
from .pacing import batches_pending, is_paced, pace_label, pace_minutes, pace_progress, phase_total
from .phases import phase_label
from .selectors import current_phase, phase_devices, plan_phases
from .windows import next_opening, window_reason, window_schedule, window_text, windows_for, windows_summary

Status = RolloutPlan.Status
PhaseStatus = PlanPhase.Status


def _phase_estimates(phases, wave):
    """About how many devices each phase yet to start would stage, if it started after the phases
    before it took their share: a sample of a group leaves the rest of that group to the next."""
    estimates = {}
    taken = {}  # group name ("" for the fleet) -> devices the earlier pending phases take
    for phase in phases:
        # A paced phase still staging batches: how many devices its next batches take.
        batching = batches_pending(phase) and phase.status == PhaseStatus.WATCHING
        if (phase.rollout_id is not None or phase.status != PhaseStatus.PENDING) and not batching:
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
            .filter(not_updated_q(wave))
            .count()
        )
        if not listed:
            group = phase.group_name
            available -= sum(taken.values()) if not group else taken.get(group, 0) + taken.get("", 0)
        available = max(0, available)
        limit = limit_parse(phase.limit)
        if batching:
            total = phase_total(phase)
            available = available if total is None else min(available, max(0, total - phase.staged_count))
        elif limit is not None:
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


def plan_forecast(*, plan, now=None, phases=None, estimates=None):
    """When the plan should finish, from how long its devices took to update so far.

    Each remaining phase takes the longer of its wait time and the time its success ratio needs
    (the same share of the devices observed so far updated within that time); approvals add an
    unknown delay and are counted apart. A paced phase first takes the minutes its batches need
    at its rate; a phase starts, and its batches go on, only inside its maintenance windows.
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
    if estimates is None and any(is_paced(p) for p in phases):
        estimates = _phase_estimates(phases, wave)
    at = now
    for phase in phases:
        if phase.status == PhaseStatus.PASSED:
            continue
        needed = _quantile(minutes, phase.min_success_ratio or 0.5)
        watch = timedelta(minutes=max(phase.wait_minutes, needed))
        starts, previous = None, at
        if phase.status == PhaseStatus.AWAITING_APPROVAL:
            end = now
        elif batches_pending(phase):
            # The next batch is due a minute after the last; then the rest at the phase's rate.
            remaining = (estimates or {}).get(phase.pk) or 0
            batches = (pace_minutes(phase, remaining, phase.staged_count) + 1) if remaining else 0
            last = window_schedule(plan, phase.group_name, max(now, phase.last_batch_at), batches)
            end = max(now, last + watch)
        elif phase.started_at is not None:
            end = max(now, phase.started_at + watch)
        else:
            starts = next_opening(plan, phase.group_name, at) or at
            batches = pace_minutes(phase, (estimates or {}).get(phase.pk) or 0)
            end = window_schedule(plan, phase.group_name, starts, batches) + watch
        if phase.advance == PlanPhase.Advance.APPROVAL and phase.status != PhaseStatus.PASSED:
            result["approvals_ahead"] += 1
        at = max(at, end)
        result["phases"].append(
            {"position": phase.position, "ends_at": at, "starts_at": starts, "pace": pace_label(phase), "window_delay": starts is not None and starts > previous}
        )
    result["completion_at"] = at
    result["remaining_minutes"] = round((at - now).total_seconds() / 60)
    result["basis"] = (
        f"half of the {counted(len(minutes), 'device')} observed updated within {result['typical_update_minutes']} min, "
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
                "pace": pace_label(phase),
                "pace_progress": pace_progress(phase, phase_total(phase)) if is_paced(phase) and phase.last_batch_at else "",
                "windows": windows_for(plan, phase.group_name),
            }
        )
    opens = None
    if current is not None and plan.status == Status.RUNNING and (current.rollout_id is None or batches_pending(current)):
        opens = next_opening(plan, current.group_name, now)
        for row in rows:
            if row["phase"] is current:
                # The current phase has devices to release and its window is shut: say so on it.
                row["window_wait"] = window_reason(plan, current.group_name, now)
    predicted = plan_forecast(plan=plan, now=now, phases=phases, estimates=estimates) if forecast else None
    by_position = {f["position"]: f for f in (predicted or {}).get("phases", [])}
    for row in rows:
        row["window_text"] = "; ".join(window_text(w) for w in row["windows"])
        row["window_wait"] = row.get("window_wait")
        row["forecast"] = by_position.get(row["phase"].position)
    decisions = list(PlanDecision.objects.filter(plan=plan).select_related("actor", "phase").order_by("created_at", "id"))
    return {
        "plan": plan,
        "wave": wave,
        "phases": rows,
        "current": current,
        "decisions": decisions,
        "forecast": predicted,
        "windows": windows_summary(plan),
        # When the current phase may next release devices (now when its window is open).
        "next_opening": opens,
        "measured_at": now,
    }
