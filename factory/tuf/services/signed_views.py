"""The signed views devices are served: per factory (CI), per tag (production) and per active wave.

Snapshot and timestamp versions of a tag's production and wave views come from the tag's anchor
(its production view row): each signing takes max(counter + 1, current Unix time), so a device
that moves between the two views, or to another tag, never sees a version go down. The wave
view is always signed after the production view, so a newly staged device moves up too.

Only release managers make a tag's views (a wave signed on it). Production devices on a tag
nothing was released for all share one empty view per factory (`EMPTY_TAG`), signed once and
re-signed only as it expires; a tag's first view starts its counter at the empty view's, so a
device that was served the empty view moves up when its tag gets a view of its own.
"""
import secrets

from django.db import IntegrityError, transaction
from django.utils import timezone
from tuf.api.metadata import Targets

from factory.errors import Conflict, NotFound
from factory.models import CiTarget

from .. import metadata as md
from ..lifetimes import ci_keep_builds, ci_targets_lifetime, ci_targets_max_bytes, max_tags, snapshot_lifetime, timestamp_lifetime
from ..models import EMPTY_TAG, TufRepository, TufView
from . import siblings
from .keyring import Keyring


def token_new():
    """A fresh token: cached bytes and staging decisions keyed by the old one are never read again."""
    return secrets.token_hex(16)


def next_version(anchor, now):
    version = max(anchor.counter + 1, int(now.timestamp()))
    anchor.counter = version
    return version


def view_set_targets(view, targets_bytes, targets_md=None, *, keyring):
    """Serve `targets_bytes` from the view, and beside them their aktualizr sibling (the online
    targets key's signature, or the offline signatures stored for the same content)."""
    targets_bytes = bytes(targets_bytes)
    targets_md = targets_md or md.parse(targets_bytes, Targets, "targets")
    view.targets = targets_bytes
    view.targets_hash = md.sha256(targets_bytes)
    view.targets_version = targets_md.signed.version
    view.targets_expires_at = targets_md.signed.expires
    siblings.view_set_targets(view, siblings.targets_sibling(factory_id=view.factory_id, keyring=keyring, tuf_bytes=targets_bytes))


def view_sign(view, keyring, *, version, now):
    """Sign the view's snapshot and timestamp at `version` over its current targets bytes."""
    snapshot = md.snapshot_build(
        targets_bytes=bytes(view.targets), targets_version=view.targets_version, version=version, expires=now + snapshot_lifetime()
    )
    snapshot.sign(keyring.online_signer("snapshot"))
    snapshot_bytes = md.to_bytes(snapshot)
    timestamp = md.timestamp_build(snapshot_bytes=snapshot_bytes, version=version, expires=now + timestamp_lifetime())
    timestamp.sign(keyring.online_signer("timestamp"))
    timestamp_bytes = md.to_bytes(timestamp)
    view.snapshot, view.snapshot_hash = snapshot_bytes, md.sha256(snapshot_bytes)
    view.timestamp, view.timestamp_hash = timestamp_bytes, md.sha256(timestamp_bytes)
    view.version = version
    view.snapshot_expires_at = snapshot.signed.expires
    view.timestamp_expires_at = timestamp.signed.expires
    siblings.view_sign(view, keyring)
    view.token = token_new()


def production_anchor(factory_id, tag, *, keyring=None, now=None):
    """The tag's production view, locked; created (serving the baseline) if the tag is new.

    Only release-side writes (a wave signed on the tag, the empty view) reach here: a device's
    tag never does, so the number of views follows what release managers create. A new tag's
    counter starts at the empty view's, read under its row lock, so its first versions are
    above every version the empty view has served and a device moving off it never goes down.
    """
    anchor = TufView.objects.select_for_update().filter(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=tag).first()
    if anchor is not None:
        return anchor
    now = now or timezone.now()
    repository = TufRepository.objects.filter(factory_id=factory_id).first()
    if repository is None:
        raise NotFound("This factory has no TUF repository")
    view = TufView(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=tag, baseline=True, staging_token=token_new())
    if tag != EMPTY_TAG:
        production_tag_admit(factory_id=factory_id, tag=tag)
        view.counter = (
            TufView.objects.select_for_update()
            .filter(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=EMPTY_TAG)
            .values_list("counter", flat=True)
            .first()
        ) or 0
    keyring = keyring or Keyring(factory_id)
    view_set_targets(view, repository.baseline_targets, keyring=keyring)
    view_sign(view, keyring, version=next_version(view, now), now=now)
    try:
        with transaction.atomic():
            view.save()
    except IntegrityError:
        # Another process created it first: use theirs.
        return TufView.objects.select_for_update().get(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=tag)
    return view


def production_tag_admit(*, factory_id, tag, open_wave_tags=()):
    """Refuse a tag that would take the factory past `max_tags()` production tags.

    The tags counted are real ones: those with a production view (a wave was signed on them)
    and `open_wave_tags` (the tags of waves not yet signed, which will need a view). A tag
    already counted is always admitted. Raises Conflict with what to do.
    """
    tags = set(
        TufView.objects.filter(factory_id=factory_id, kind=TufView.Kind.PRODUCTION).exclude(tag=EMPTY_TAG).values_list("tag", flat=True)
    )
    tags.update(open_wave_tags)
    if tag in tags or len(tags) < max_tags():
        return
    raise Conflict(
        f"This factory already has {max_tags()} production tags (BREAKWATER_TUF_MAX_TAGS); tag {tag} would be one more: "
        "release on an existing tag, or raise the limit"
    )


def _tag_views(anchor):
    """The anchor, then the tag's wave view if any: the order in which they must be signed."""
    views = [anchor]
    if anchor.kind == TufView.Kind.PRODUCTION:
        views += list(
            TufView.objects.select_for_update().filter(factory_id=anchor.factory_id, kind=TufView.Kind.WAVE, tag=anchor.tag).order_by("id")
        )
    return views


VIEW_FIELDS = [
    "targets", "snapshot", "timestamp", "targets_hash", "snapshot_hash", "timestamp_hash", "targets_version", "version",
    "targets_expires_at", "snapshot_expires_at", "timestamp_expires_at", "baseline", "token", "counter", "staging_token",
    "updated_at", "aktualizr_targets", "aktualizr_snapshot", "aktualizr_timestamp", "aktualizr_targets_hash",
    "aktualizr_snapshot_hash", "aktualizr_timestamp_hash",
]  # fmt: skip


def tag_resign(anchor, keyring, now):
    """Re-sign snapshot and timestamp of every view of the anchor's tag, production first."""
    views = _tag_views(anchor)
    for view in views:
        view_sign(view, keyring, version=next_version(anchor, now), now=now)
    for view in views[1:]:
        view.save(update_fields=VIEW_FIELDS)
    anchor.save(update_fields=VIEW_FIELDS)
    return views


def tag_republish(*, factory_id, tag, now=None):
    """Re-sign the tag's snapshot and timestamp over the same targets (in the caller's
    transaction): its devices see new metadata versions at their next poll."""
    now = now or timezone.now()
    anchor = production_anchor(factory_id, tag, now=now)
    return tag_resign(anchor, Keyring(factory_id), now)


def production_view_ensure(*, factory_id, tag):
    """Give a real production tag its view (serving the baseline until a wave completes).

    For release-side code only (waves do it themselves): never for a tag a device names,
    which is served `production_empty_view_ensure`'s view until something is released for it.
    """
    with transaction.atomic():
        return production_anchor(factory_id, tag)


def production_empty_view_ensure(*, factory_id):
    """The factory's one shared empty production view, made the first time a device needs it.

    Production devices on a tag with no view of its own are served it: valid, verifiable
    metadata that grants nothing, whatever tag they name, without a row or a signature per tag.
    """
    with transaction.atomic():
        return production_anchor(factory_id, EMPTY_TAG)


def views_changed(*, factory, tag):
    """Staging or wave state on `tag` changed: cached device resolutions of the tag are stale."""
    factory_id = getattr(factory, "pk", factory)
    TufView.objects.filter(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=tag).update(staging_token=token_new())


# --- the CI view ------------------------------------------------------------------------------


def _ci_target_files(factory_id):
    """The CI targets to publish: the newest builds of each tag, under the size limit."""
    keep = ci_keep_builds()
    rows = list(
        CiTarget.objects.filter(factory_id=factory_id)
        .order_by("-version", "name")
        .values_list("name", "version", "sha256", "length", "custom")
    )
    versions_by_tag = {}
    for _, version, _, _, custom in rows:
        for tag in (custom or {}).get("tags", []) or [""]:
            versions_by_tag.setdefault(tag, set())
            if len(versions_by_tag[tag]) < keep:
                versions_by_tag[tag].add(version)
    kept = set().union(*versions_by_tag.values()) if versions_by_tag else set()
    return [
        (version, md.target_file(name=name, sha256_hex=sha, length=length, custom=custom or {}))
        for name, version, sha, length, custom in rows
        if version in kept
    ]


def ci_targets_sign(view, keyring, now, *, version):
    files = _ci_target_files(view.factory_id)
    limit = ci_targets_max_bytes()
    while True:
        targets = md.targets_build(target_files=[f for _, f in files], version=version, expires=now + ci_targets_lifetime())
        targets.sign(keyring.online_signer("targets"))
        data = md.to_bytes(targets)
        if len(data) <= limit or not files:
            break
        # Over the size limit: drop the oldest tenth of the builds and try again.
        versions = sorted({v for v, _ in files})
        cut = versions[max(1, len(versions) // 10) - 1]
        files = [(v, f) for v, f in files if v > cut]
    view_set_targets(view, data, targets, keyring=keyring)


def ci_view_publish(*, factory):
    """Re-sign the CI targets, snapshot and timestamp after a CI build is published."""
    now = timezone.now()
    with transaction.atomic():
        view = TufView.objects.select_for_update().filter(factory=factory, kind=TufView.Kind.CI).first()
        if view is None:
            raise NotFound(f"Factory {factory.name} has no TUF repository")
        keyring = Keyring(factory.id)
        ci_targets_sign(view, keyring, now, version=view.targets_version + 1)
        view_sign(view, keyring, version=next_version(view, now), now=now)
        view.save(update_fields=VIEW_FIELDS)
