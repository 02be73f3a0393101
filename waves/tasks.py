"""Celery tasks of the waves app: the live status aggregation.

Beat runs `wave_status_schedule` every BREAKWATER_STATUS_INTERVAL_SECONDS; it sends one
`wave_status_aggregate` per followed wave for the current interval, and one
`factory_status_refresh` per factory. A sample is once-only per
(wave, interval), so these tasks are safe to retry, duplicate and redeliver: that is why
`wave_status_aggregate` acknowledges late and asks to be redelivered if its worker dies.
The schedule also folds the status counts' delta rows, and `status_counts_check` (hourly)
proves the counts against a full recount (waves/status_counts.py). The background rollouts' task
lives with its job, in waves/rollout_jobs.py.
"""
import logging

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from factory.models import Factory

from . import status
from .rollout_counts import rollouts_uncounted_send  # also registers the full-group rollouts' count task
from .models import Wave
from .status_table import cached_wave_status
from .plan_tasks import plans_evaluate  # noqa: F401 (registers the rollout plans' beat task)
from .event_retention_tasks import device_events_purge  # noqa: F401 (registers the device events' retention beat task)
from .rollout_jobs import wave_rollout_job  # noqa: F401 (registers the background rollouts' task)

logger = logging.getLogger(__name__)


def stale_after_seconds():
    """A message older than this describes an interval long gone; the next one covers the wave."""
    return max(60.0, 4 * status.status_interval())


@shared_task(name="waves.tasks.wave_status_schedule", ignore_result=True)
def wave_status_schedule():
    """Send one aggregation per followed wave, for the interval that is starting now."""
    bucket = status.status_bucket()
    wave_ids = list(status.waves_followed().values_list("id", flat=True))
    expires = stale_after_seconds()
    for wave_id in wave_ids:
        transaction.on_commit(lambda wave_id=wave_id: wave_status_aggregate.apply_async((wave_id, bucket), expires=expires))
    for factory_id in Factory.objects.values_list("id", flat=True):
        transaction.on_commit(lambda factory_id=factory_id: factory_status_refresh.apply_async((factory_id,), expires=expires))
    rollouts_uncounted_send(wave_ids=wave_ids)
    status.status_counts_upkeep()
    return len(wave_ids)


@shared_task(name="waves.tasks.wave_status_aggregate", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def wave_status_aggregate(wave_id, bucket):
    """Store the wave's status sample for interval `bucket` (once: a second run changes nothing)."""
    wave = Wave.objects.select_related("factory").filter(pk=wave_id).first()
    if wave is None:
        return "gone"
    age = timezone.now().timestamp() - int(bucket) * status.status_interval()
    if age > stale_after_seconds():
        logger.info("skipping the status sample of wave %s for an interval %.0f s old", wave.name, age)
        return "stale"
    status.wave_counts_ready(wave=wave)
    _, created = status.wave_status_sample_take(wave=wave, bucket=bucket)
    # Warm the dashboard's status table for this interval, so no page view computes it.
    cached_wave_status(wave)
    return "created" if created else "exists"


@shared_task(name="waves.tasks.status_counts_check", ignore_result=True)
def status_counts_check():
    """Prove the followed waves' status counts against a full recount; rebuild any that differ."""
    differing = status.status_counts_check_all()
    return f"{len(differing)} differed" if differing else "agreed"


@shared_task(name="waves.tasks.factory_status_refresh", ignore_result=True)
def factory_status_refresh(factory_id):
    """Recompute the factory status the dashboard polls (a cache entry: safe to run twice)."""
    factory = Factory.objects.filter(pk=factory_id).first()
    if factory is None:
        return "gone"
    status.factory_status_refresh(factory=factory)
    return "refreshed"
