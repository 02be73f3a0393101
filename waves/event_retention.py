"""Device events expire: they are deleted BREAKWATER_EVENT_RETENTION_DAYS after the gateway
received them, a batch at a time, except the reports waves still read.

Kept whatever their age: a factory's events on a wave's version while the wave is open
(unsigned, armed, active), and for the retention period after it finished (never less than the
day its status is still followed, `waves.status.FOLLOW_FINISHED`). Wave status, failure reasons,
time to update, rollout plans' gates and forecasts, and retries read no other events
(`waves.outcomes`), so a wave's status is the same after a purge as before it for as long as
anyone follows it.

Events are walked in id order, which is the order the flush wrote them in (to within the
seconds two flushes overlap; a straggler goes at the next purge). A batch reads `batch` ids and
deletes the expired ones among them in one statement and a transaction of its own: a purge never
holds a lock for long, and never locks a device row, so check-ins and event reports go on.

Not audited, like the other upkeep (dead letters, TUF re-signing, status samples): nobody
changed anything a release manager would look up; the purge logs what it deleted.
"""
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from devices.models import DeviceEvent
from factory.errors import ApplicationError

from .models import Wave
from .status import FOLLOW_FINISHED

logger = logging.getLogger(__name__)

BATCH = 5000


@dataclass
class Purge:
    """What one purge did (or, dry, would do)."""

    cutoff: datetime | None  # events received before this expire; None: they are kept for ever
    waves_since: datetime | None = None  # the reports of waves open or finished since then are kept
    dry_run: bool = False
    deleted: int = 0  # expired events deleted (dry: that would be)
    kept: dict = field(default_factory=dict)  # {(factory id, version): expired events kept for its waves}
    batches: int = 0
    position: int = 0  # the last event id looked at: a purge cut short goes on after it
    done: bool = True  # False: stopped after max_batches with events left to look at


def retention_days(days=None):
    """The retention in days (the setting unless `days`); 0 keeps events for ever."""
    days = settings.BREAKWATER_EVENT_RETENTION_DAYS if days is None else days
    try:
        days = float(days)
    except (TypeError, ValueError):
        raise ApplicationError(f"The event retention must be a number of days, not {str(days)[:40]!r}") from None
    if not days >= 0 or days == float("inf"):
        raise ApplicationError(f"The event retention must be 0 (keep for ever) or a positive number of days, not {days:g}")
    return days


def _waves_reading(*, factory_id, version, since):
    """Waves whose status reads events of `version` in the factory: open, or finished since `since`."""
    return Wave.objects.filter(factory_id=factory_id, version=version).filter(Q(finished_at__isnull=True) | Q(finished_at__gte=since))


def device_events_purge(*, now=None, days=None, batch=BATCH, max_batches=None, after=0, dry_run=False):
    """Delete the device events that expired by `now`, `batch` ids at a time, from the event id
    `after` on; stop after `max_batches` batches (None: until the events received since the
    cutoff are reached). Returns a Purge; with `dry_run` it counts and deletes nothing."""
    now = now or timezone.now()
    days = retention_days(days)
    if batch < 1:
        raise ApplicationError("A purge batch must hold at least one event")
    if not days:
        return Purge(cutoff=None, dry_run=dry_run, position=after)
    purge = Purge(cutoff=now - timedelta(days=days), waves_since=now - max(timedelta(days=days), FOLLOW_FINISHED), dry_run=dry_run, position=after)
    read = Exists(_waves_reading(factory_id=OuterRef("factory_id"), version=OuterRef("target_version"), since=purge.waves_since))
    while max_batches is None or purge.batches < max_batches:
        window = list(DeviceEvent.objects.filter(pk__gt=purge.position).order_by("pk").values_list("pk", "received_at")[:batch])
        if not window:
            break
        expired = DeviceEvent.objects.filter(pk__gt=purge.position, pk__lte=window[-1][0], received_at__lt=purge.cutoff)
        for key in expired.filter(read).values("factory_id", "target_version").annotate(n=Count("pk")).order_by():
            place = (key["factory_id"], key["target_version"])
            purge.kept[place] = purge.kept.get(place, 0) + key["n"]
        doomed = expired.exclude(read)
        if dry_run:
            purge.deleted += doomed.count()
        else:
            with transaction.atomic():
                purge.deleted += doomed.delete()[0]
        purge.batches += 1
        purge.position = window[-1][0]
        if len(window) < batch or any(received_at >= purge.cutoff for _, received_at in window):
            break  # the events received since the cutoff: nothing further has expired
    else:
        purge.done = False
    if purge.deleted and not dry_run:
        logger.info(
            "device events purged: %d received before %s deleted, %d kept for waves", purge.deleted, purge.cutoff.isoformat(), sum(purge.kept.values())
        )
    return purge


def purge_kept_waves(purge):
    """[(factory name, [wave names], expired events kept)] for the events a purge kept."""
    rows = []
    for (factory_id, version), n in sorted(purge.kept.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        waves = list(_waves_reading(factory_id=factory_id, version=version, since=purge.waves_since).order_by("created_at").values_list("factory__name", "name"))
        if waves:
            rows.append((waves[0][0], [name for _, name in waves], n))
    return rows
