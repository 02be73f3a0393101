"""The device count of a full-group rollout, taken right after it commits.

A full-group rollout stages the group itself (a WaveGroup row): every production device of the
group on the wave's tag gets the wave, including devices that join it later. Counting the group
in the request would make the rollout as slow as the group is large (a second for a
1,000,000-device group). So the request counts at most INLINE_COUNT_MAX devices: a group that
small gets its exact count at once; a larger one is recorded with its device_count empty, and
a task counts what the rollout staged and fills it in, for the rollout history, its API and the
CLI, which say the devices are being counted until then. The status beat sends the task again
for a rollout still uncounted (a broker that was down when the rollout committed).
"""
import logging

from celery import shared_task
from django.db import transaction
from django.db.models import Exists, OuterRef

from devices.models import Device

from .models import Rollout, WaveDevice
from .outcomes import not_updated_q

logger = logging.getLogger(__name__)


# Counting this many rows costs a few milliseconds; past it the count leaves the request.
INLINE_COUNT_MAX = 10_000


def candidates_count_capped(scope, candidates):
    """The number of `candidates` (a queryset narrowing `scope`, the group's devices on the tag)
    when the group holds at most INLINE_COUNT_MAX devices, else None. The group is sized first,
    reading INLINE_COUNT_MAX + 1 index entries at most; only a group that small is counted with
    the candidates' exclusions, whose plan for a large group may read every staged row."""
    if scope.order_by().values("pk")[: INLINE_COUNT_MAX + 1].count() > INLINE_COUNT_MAX:
        return None
    return candidates.count()


def rollout_group_count(*, rollout_id):
    """Count and store the devices a full-group rollout staged: the group's production devices
    on the tag, below the wave's version, not staged on their own before. Returns the count, or
    None when there is nothing to count (another rollout, or counted already). Idempotent."""
    rollout = Rollout.objects.select_related("wave").filter(pk=rollout_id, full_group=True, device_count__isnull=True).first()
    if rollout is None:
        return None
    wave = rollout.wave
    # Devices update only after they poll and install, minutes after the rollout: counted within
    # moments of the commit, "below the wave's version" is the state the rollout found.
    count = (
        Device.objects.filter(factory_id=wave.factory_id, is_production=True, tag=wave.tag, group_id=rollout.group_id)
        .filter(not_updated_q(wave), ~Exists(WaveDevice.objects.filter(wave=wave, device_id=OuterRef("pk"))))
        .count()
    )
    # Filled in once: a redelivered task finds it counted and leaves it.
    Rollout.objects.filter(pk=rollout.pk, device_count__isnull=True).update(device_count=count)
    return count


def rollout_count_send(rollout_id):
    try:
        rollout_group_count_task.delay(rollout_id)
    except Exception:
        # The rollout is committed and staged; only its count waits for the next status beat.
        logger.exception("sending the device count of rollout %s failed; the status beat sends it again", rollout_id)


def rollout_count_enqueue(rollout):
    """Count a full-group rollout once it commits (from inside the rollout's transaction)."""
    transaction.on_commit(lambda: rollout_count_send(rollout.pk))


def rollouts_uncounted_send(*, wave_ids):
    """Send the count again for every uncounted full-group rollout of these waves."""
    for rollout_id in Rollout.objects.filter(wave_id__in=wave_ids, full_group=True, device_count__isnull=True).values_list("pk", flat=True):
        transaction.on_commit(lambda rollout_id=rollout_id: rollout_count_send(rollout_id))


@shared_task(name="waves.rollout_counts.rollout_group_count_task", ignore_result=True, acks_late=True)
def rollout_group_count_task(rollout_id):
    rollout_group_count(rollout_id=rollout_id)
