"""Periodic re-signing: timestamps, snapshots and CI targets before they expire, online roots
before theirs. Idempotent: a tag is claimed with a conditional update before it is signed."""
import logging
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from factory.errors import Conflict
from factory.plurals import counted

from ..lifetimes import ci_targets_margin, refresh_margin, root_margin
from ..models import TufRepository, TufRootChange, TufView
from .keyring import Keyring
from .root_changes import root_renew
from .signed_views import ci_targets_sign, next_version, token_new, view_sign

logger = logging.getLogger(__name__)

REFRESH_CLAIM = timedelta(minutes=10)


def _anchor_due(anchor, views, now):
    soon = now + refresh_margin()
    due = any(v.timestamp_expires_at < soon or v.snapshot_expires_at < soon for v in views)
    if anchor.kind == TufView.Kind.CI:
        due = due or anchor.targets_expires_at < now + ci_targets_margin()
    return due


RESIGN_FIELDS = [
    "snapshot", "timestamp", "snapshot_hash", "timestamp_hash", "version", "snapshot_expires_at", "timestamp_expires_at", "token",
    "counter", "updated_at", "aktualizr_snapshot", "aktualizr_timestamp", "aktualizr_snapshot_hash", "aktualizr_timestamp_hash",
]  # fmt: skip


def views_refresh(*, anchor_ids, now=None):
    """Re-sign the tags (or CI views) of `anchor_ids` whose views expire soon; returns how many.

    A batch is claimed with one conditional update (claimed_until in the past -> ours, under a
    fresh claim token), so two workers never sign the same tag twice; the due check is repeated
    under the row locks, so a late duplicate run changes nothing. Signing happens in one
    transaction per batch: a few queries for any number of tags.
    """
    now = now or timezone.now()
    claim = token_new()
    TufView.objects.filter(pk__in=list(anchor_ids), kind__in=[TufView.Kind.CI, TufView.Kind.PRODUCTION]).filter(
        Q(refresh_claimed_until__isnull=True) | Q(refresh_claimed_until__lt=now)
    ).update(refresh_claimed_until=now + REFRESH_CLAIM, refresh_claim=claim)
    try:
        with transaction.atomic():
            anchors = list(TufView.objects.select_for_update().filter(refresh_claim=claim).order_by("id"))
            if not anchors:
                return 0
            waves = {}
            production = [a for a in anchors if a.kind == TufView.Kind.PRODUCTION]
            if production:
                pairs = Q()
                for anchor in production:
                    pairs |= Q(factory_id=anchor.factory_id, tag=anchor.tag)
                for view in TufView.objects.select_for_update().filter(pairs, kind=TufView.Kind.WAVE).order_by("id"):
                    waves.setdefault((view.factory_id, view.tag), []).append(view)
            keyrings = Keyring.for_factories({a.factory_id for a in anchors})
            signed, changed = 0, []
            for anchor in anchors:
                views = [anchor] + waves.get((anchor.factory_id, anchor.tag), []) if anchor.kind == TufView.Kind.PRODUCTION else [anchor]
                if not _anchor_due(anchor, views, now):
                    continue
                keyring = keyrings[anchor.factory_id]
                if anchor.kind == TufView.Kind.CI and anchor.targets_expires_at < now + ci_targets_margin():
                    ci_targets_sign(anchor, keyring, now, version=anchor.targets_version + 1)
                    anchor.save(update_fields=["targets", "targets_hash", "targets_version", "targets_expires_at", "aktualizr_targets", "aktualizr_targets_hash"])
                # Production first, then the wave view, each above the last.
                for view in views:
                    view_sign(view, keyring, version=next_version(anchor, now), now=now)
                    view.updated_at = now
                changed += views
                signed += 1
            # One plain UPDATE per view: much cheaper than bulk_update's CASE expressions here.
            for view in changed:
                view.save(update_fields=RESIGN_FIELDS)
            if signed:
                logger.info("re-signed the TUF views of %s", counted(signed, "tag"))
            return signed
    finally:
        TufView.objects.filter(refresh_claim=claim).update(refresh_claimed_until=None, refresh_claim="")


def tag_views_refresh(*, anchor_id, now=None):
    """Re-sign one tag's (or the CI) views if they expire soon. Returns True if it signed."""
    return views_refresh(anchor_ids=[anchor_id], now=now) == 1


def roots_renew_due(*, now=None):
    """Renew online roots that expire soon (offline roots are shown as warnings instead)."""
    now = now or timezone.now()
    renewed = 0
    for repository in TufRepository.objects.filter(root_online=True, root_expires_at__lt=now + root_margin()).select_related("factory"):
        try:
            change = root_renew(factory=repository.factory, actor=None)
        except Conflict:
            continue  # a root change is waiting for signatures; it renews the root too
        renewed += change.status == TufRootChange.Status.APPLIED
    return renewed
