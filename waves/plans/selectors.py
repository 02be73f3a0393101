"""Reads of a plan: the plan of a wave, its phases in order, the current phase, and the devices
a started phase staged."""
from devices.models import Device
from factory.errors import NotFound

from ..models import PlanPhase, RolloutPlan, WaveDevice

PhaseStatus = PlanPhase.Status


def plan_get(*, wave):
    """The wave's plan, or NotFound."""
    plan = RolloutPlan.objects.select_related("wave", "wave__factory", "author").filter(wave=wave).first()
    if plan is None:
        raise NotFound(f"Wave {wave.name} has no rollout plan")
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
    if phase.last_batch_at is not None:
        # A paced phase: every batch it staged so far.
        return Device.objects.filter(wave_stagings__rollout__phase=phase)
    if rollout.full_group:
        if rollout.group_id is None:
            return Device.objects.none()
        return Device.objects.filter(factory_id=wave.factory_id, is_production=True, tag=wave.tag, group_id=rollout.group_id).exclude(
            pk__in=WaveDevice.objects.filter(wave=wave).values("device_id")
        )
    return Device.objects.filter(wave_stagings__rollout=rollout)
