"""Disarming a plan's pre-signed rollback (an ARMED wave): once the plan's wave is completed or
canceled by hand, or its plan ends, the rollback must never activate later.

Apart from waves/plans/rollback.py, which arms and triggers it, because waves/services.py (wave
complete and cancel) disarms it too and the plans package imports waves.services.
"""
from django.utils import timezone

from factory.services import audit_record

from .models import Wave


def rollback_disarm(*, wave, actor, reason):
    """Cancel the ARMED rollback of `wave`'s plan, if any (in the caller's transaction); returns it."""
    armed = Wave.objects.select_for_update().filter(rollback_of_plan__wave=wave, status=Wave.Status.ARMED).first()
    if armed is None:
        return None
    armed.status = Wave.Status.CANCELED
    armed.finished_at = timezone.now()
    armed.finished_by = actor
    armed.save(update_fields=["status", "finished_at", "finished_by"])
    audit_record(
        factory=armed.factory,
        actor=actor,
        action="wave.disarm",
        target=armed.name,
        details={"plan_wave": wave.name, "version": armed.version, "reason": reason[:500]},
    )
    return armed
