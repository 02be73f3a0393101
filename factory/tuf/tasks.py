"""Periodic TUF upkeep: thin Celery tasks over factory.tuf.services.refresh.

Timestamps last a day and snapshots a week; `tuf_views_refresh` re-signs them (and CI targets)
well before they expire. Each tag is claimed with a conditional update, so any number of
workers and overlapping beats sign it once.
"""
from datetime import datetime

from celery import shared_task
from django.utils import timezone

from . import selectors
from .services import refresh

BATCH = 200


@shared_task(name="factory.tuf.tasks.tuf_views_refresh")
def tuf_views_refresh(now=None):
    """Re-sign the views that expire soon, a batch at a time; returns how many tags were signed."""
    moment = datetime.fromisoformat(now) if now else timezone.now()
    due = selectors.views_due(now=moment, limit=BATCH + 1)
    signed = refresh.views_refresh(anchor_ids=due[:BATCH], now=moment)
    if len(due) > BATCH and not now:
        tuf_views_refresh.delay()
    return signed


@shared_task(name="factory.tuf.tasks.tuf_roots_renew")
def tuf_roots_renew():
    """Renew online roots before they expire; offline roots appear in the expiry warnings."""
    return refresh.roots_renew_due()
