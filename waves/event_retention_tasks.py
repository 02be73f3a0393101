"""Celery task of the device events' retention: beat runs `device_events_purge` every hour.

Each run deletes at most MAX_BATCHES batches and hands the rest to a task of its own, starting
where it stopped, so a first purge of years of events never holds a worker for long. Deleting
is idempotent: overlapping runs (a long purge still going when beat ticks again) delete each
event once and find nothing left where the other went first.
"""
from celery import shared_task

from . import event_retention

BATCH = event_retention.BATCH
MAX_BATCHES = 100  # of BATCH events: half a million events a task


@shared_task(name="waves.event_retention_tasks.device_events_purge", ignore_result=True)
def device_events_purge(after=0):
    """Delete expired device events from the event id `after` on; returns how many went."""
    purge = event_retention.device_events_purge(after=after, batch=BATCH, max_batches=MAX_BATCHES)
    if not purge.done:
        device_events_purge.delay(after=purge.position)
    return purge.deleted
