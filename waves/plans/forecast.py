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

from ..models import PlanDecision, PlanPhase, RolloutPlan, WaveDevice, WaveGroup
from ..outcomes import not_updated_q
from ..scope import limit_parse, limit_size
from .gates import phase_evidence
from .phases import phase_label
from .selectors import current_phase, phase_devices, plan_phases

Status = RolloutPlan.Status
PhaseStatus = PlanPhase.Status


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
            .filter(not_updated_q(wave))
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
