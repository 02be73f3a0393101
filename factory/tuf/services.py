"""TUF repository writes: keys, roots and the signed views devices are served.

Views are signed per factory (CI), per tag (production) and per active wave, never per device.
Snapshot and timestamp versions of a tag's production and wave views come from the tag's anchor
(its production view row): each signing takes max(counter + 1, current Unix time), so a device
that moves between the two views, or to another tag, never sees a version go down. The wave
view is always signed after the production view, so a newly staged device moves up too.

Only release managers make a tag's views (a wave signed on it). Production devices on a tag
nothing was released for all share one empty view per factory (`EMPTY_TAG`), signed once and
re-signed only as it expires; a tag's first view starts its counter at the empty view's, so a
device that was served the empty view moves up when its tag gets a view of its own.
"""
import base64
import logging
import re
import secrets
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from securesystemslib.signer import SSlibKey
from tuf.api.metadata import Root, Targets

from factory.auth import authorize
from factory.errors import ApplicationError, Conflict, NotFound
from factory.models import CiTarget
from factory.services import audit_record

from . import keys as tuf_keys
from . import metadata as md
from .models import EMPTY_TAG, Channel, TufKey, TufRepository, TufRoot, TufRootChange, TufView

logger = logging.getLogger(__name__)


def _setting(name, default):
    return getattr(settings, name, default)


def timestamp_lifetime():
    return timedelta(hours=float(_setting("BREAKWATER_TUF_TIMESTAMP_HOURS", 24)))


def snapshot_lifetime():
    return timedelta(days=float(_setting("BREAKWATER_TUF_SNAPSHOT_DAYS", 7)))


def refresh_margin():
    """Re-sign a timestamp or snapshot once less than this is left (well before it ends)."""
    return timedelta(hours=float(_setting("BREAKWATER_TUF_REFRESH_MARGIN_HOURS", 12)))


def ci_targets_lifetime():
    return timedelta(days=float(_setting("BREAKWATER_TUF_CI_TARGETS_DAYS", 90)))


def ci_targets_margin():
    return timedelta(days=float(_setting("BREAKWATER_TUF_CI_TARGETS_REFRESH_DAYS", 30)))


def root_lifetime():
    return timedelta(days=float(_setting("BREAKWATER_TUF_ROOT_DAYS", 365)))


def root_margin():
    return timedelta(days=float(_setting("BREAKWATER_TUF_ROOT_REFRESH_DAYS", 60)))


def baseline_lifetime():
    # Empty targets grant nothing to install, and snapshots pin the targets version, so a long
    # life is safe; it saves production tags without waves from needing a yearly offline signing.
    return timedelta(days=float(_setting("BREAKWATER_TUF_BASELINE_DAYS", 3650)))


def ci_keep_builds():
    """How many of the newest CI builds of each tag the CI targets keep."""
    return int(_setting("BREAKWATER_TUF_CI_KEEP_BUILDS", 50))


def ci_targets_max_bytes():
    # python-tuf's client refuses targets over 5 MB by default; stay well under it.
    return int(_setting("BREAKWATER_TUF_CI_TARGETS_MAX_BYTES", 2_000_000))


def max_tags():
    """How many production tags (tags with a wave or a production view) a factory may have."""
    return int(_setting("BREAKWATER_TUF_MAX_TAGS", 1000))



REFRESH_CLAIM = timedelta(minutes=10)
ROLES = ("root", "targets", "snapshot", "timestamp")


def _token():
    return secrets.token_hex(16)


# --- keys ------------------------------------------------------------------------------------


class Keyring:
    """The factory's live keys, loaded once per operation; online signers decrypted on demand."""

    def __init__(self, factory_id, rows=None):
        self.factory_id = factory_id
        if rows is None:
            rows = TufKey.objects.filter(factory_id=factory_id, retired_at__isnull=True).order_by("id")
        self.rows = list(rows)
        self._signers = {}

    @classmethod
    def for_factories(cls, factory_ids):
        """{factory id: Keyring} in one query."""
        rows = {factory_id: [] for factory_id in factory_ids}
        for row in TufKey.objects.filter(factory_id__in=list(rows), retired_at__isnull=True).order_by("id"):
            rows[row.factory_id].append(row)
        return {factory_id: cls(factory_id, keys) for factory_id, keys in rows.items()}

    def keys(self, role):
        return [SSlibKey.from_dict(row.keyid, dict(row.public)) for row in self.rows if row.role == role]

    def keysets(self):
        return {role: self.keys(role) for role in ROLES}

    def online_keyids(self):
        return {row.keyid for row in self.rows if row.online and row.private_encrypted is not None}

    def signer(self, role):
        """The online signer of `role`, or None (a root key taken offline)."""
        if role not in self._signers:
            row = next((r for r in self.rows if r.role == role and r.online and r.private_encrypted is not None), None)
            if row is None:
                self._signers[role] = None
            else:
                key = SSlibKey.from_dict(row.keyid, dict(row.public))
                self._signers[role] = tuf_keys.private_decrypt(row.private_encrypted, key)
        return self._signers[role]

    def online_signer(self, role):
        signer = self.signer(role)
        if signer is None:
            raise ApplicationError(f"the factory has no online {role} key")
        return signer


def _roots_build(*, keysets, production_threshold, version, expires):
    return {
        Channel.CI: md.root_build(keys=keysets, targets_threshold=1, version=version, expires=expires),
        Channel.PRODUCTION: md.root_build(keys=keysets, targets_threshold=production_threshold, version=version, expires=expires),
    }


def root_current(*, factory_id, channel):
    """The newest root of a channel, as Metadata[Root]."""
    row = TufRoot.objects.filter(factory_id=factory_id, channel=channel).order_by("-version").first()
    if row is None:
        raise NotFound("this factory has no TUF repository")
    return md.parse(row.data, Root, "the stored root")


# --- views -----------------------------------------------------------------------------------


def _next_version(anchor, now):
    version = max(anchor.counter + 1, int(now.timestamp()))
    anchor.counter = version
    return version


def _view_set_targets(view, targets_bytes, targets_md=None):
    targets_bytes = bytes(targets_bytes)
    targets_md = targets_md or md.parse(targets_bytes, Targets, "targets")
    view.targets = targets_bytes
    view.targets_hash = md.sha256(targets_bytes)
    view.targets_version = targets_md.signed.version
    view.targets_expires_at = targets_md.signed.expires


def _view_sign(view, keyring, *, version, now):
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
    view.token = _token()


def _production_anchor(factory_id, tag, *, keyring=None, now=None):
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
        raise NotFound("this factory has no TUF repository")
    view = TufView(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=tag, baseline=True, staging_token=_token())
    if tag != EMPTY_TAG:
        production_tag_admit(factory_id=factory_id, tag=tag)
        view.counter = (
            TufView.objects.select_for_update()
            .filter(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=EMPTY_TAG)
            .values_list("counter", flat=True)
            .first()
        ) or 0
    keyring = keyring or Keyring(factory_id)
    _view_set_targets(view, repository.baseline_targets)
    _view_sign(view, keyring, version=_next_version(view, now), now=now)
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
        f"this factory already has {max_tags()} production tags (BREAKWATER_TUF_MAX_TAGS); tag {tag} would be one more: "
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
    "updated_at",
]  # fmt: skip


def _tag_resign(anchor, keyring, now):
    """Re-sign snapshot and timestamp of every view of the anchor's tag, production first."""
    views = _tag_views(anchor)
    for view in views:
        _view_sign(view, keyring, version=_next_version(anchor, now), now=now)
    for view in views[1:]:
        view.save(update_fields=VIEW_FIELDS)
    anchor.save(update_fields=VIEW_FIELDS)
    return views


def production_view_ensure(*, factory_id, tag):
    """Give a real production tag its view (serving the baseline until a wave completes).

    For release-side code only (waves do it themselves): never for a tag a device names,
    which is served `production_empty_view_ensure`'s view until something is released for it.
    """
    with transaction.atomic():
        return _production_anchor(factory_id, tag)


def production_empty_view_ensure(*, factory_id):
    """The factory's one shared empty production view, made the first time a device needs it.

    Production devices on a tag with no view of its own are served it: valid, verifiable
    metadata that grants nothing, whatever tag they name, without a row or a signature per tag.
    """
    with transaction.atomic():
        return _production_anchor(factory_id, EMPTY_TAG)


def views_changed(*, factory, tag):
    """Staging or wave state on `tag` changed: cached device resolutions of the tag are stale."""
    factory_id = getattr(factory, "pk", factory)
    TufView.objects.filter(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=tag).update(staging_token=_token())


# --- repository and CI view ------------------------------------------------------------------


def repository_init(*, factory):
    """Create the factory's keys and its CI and production roots (version 1) and its CI view.

    The root key starts online (bootstrap); `offline_key_add(role="root")` takes it offline.
    """
    now = timezone.now()
    with transaction.atomic():
        if TufRepository.objects.filter(factory=factory).exists():
            raise Conflict(f"factory {factory.name} already has a TUF repository")
        for role in ROLES:
            signer = tuf_keys.key_generate()
            TufKey.objects.create(
                factory=factory,
                role=role,
                keyid=signer.public_key.keyid,
                public=signer.public_key.to_dict(),
                private_encrypted=tuf_keys.private_encrypt(signer),
                online=True,
            )
        keyring = Keyring(factory.id)
        baseline = md.targets_build(target_files=[], version=1, expires=now + baseline_lifetime())
        baseline.sign(keyring.online_signer("targets"))
        root_expires = (now + root_lifetime()).replace(microsecond=0)
        TufRepository.objects.create(
            factory=factory,
            root_version=1,
            root_expires_at=root_expires,
            production_targets_threshold=1,
            baseline_targets=md.to_bytes(baseline),
            baseline_expires_at=baseline.signed.expires,
        )
        for channel, root in _roots_build(keysets=keyring.keysets(), production_threshold=1, version=1, expires=root_expires).items():
            root.sign(keyring.online_signer("root"))
            TufRoot.objects.create(factory=factory, channel=channel, version=1, data=md.to_bytes(root), expires_at=root.signed.expires)
        view = TufView(factory=factory, kind=TufView.Kind.CI, tag="")
        _ci_targets_sign(view, keyring, now, version=1)
        _view_sign(view, keyring, version=_next_version(view, now), now=now)
        view.save()


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


def _ci_targets_sign(view, keyring, now, *, version):
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
    _view_set_targets(view, data, targets)


def ci_view_publish(*, factory):
    """Re-sign the CI targets, snapshot and timestamp after a CI build is published."""
    now = timezone.now()
    with transaction.atomic():
        view = TufView.objects.select_for_update().filter(factory=factory, kind=TufView.Kind.CI).first()
        if view is None:
            raise NotFound(f"factory {factory.name} has no TUF repository")
        keyring = Keyring(factory.id)
        _ci_targets_sign(view, keyring, now, version=view.targets_version + 1)
        _view_sign(view, keyring, version=_next_version(view, now), now=now)
        view.save(update_fields=VIEW_FIELDS)


# --- waves -----------------------------------------------------------------------------------


def _production_targets_md(factory_id, tag):
    """The tag's production targets (None while it serves the baseline)."""
    row = (
        TufView.objects.filter(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=tag, baseline=False)
        .values_list("targets", flat=True)
        .first()
    )
    return None if row is None else md.parse(row, Targets, f"the production targets of tag {tag}")


def _offline_targets_keyids(keyring):
    return {row.keyid for row in keyring.rows if row.role == "targets" and not row.online}


def wave_targets_build(*, factory, tag, version, prune=(), expires_at, source_tag=None):
    """The wave's targets: the tag's production targets plus CI build `version`, minus `prune`.

    Signed by the online targets key only: devices see nothing until offline signatures meet
    the production root's threshold (`wave_signatures_add`).
    """
    keyring = Keyring(factory.id)
    if not _offline_targets_keyids(keyring):
        raise ApplicationError(
            "this factory has no offline targets key yet; create one first (breakwater keys rotate-offline-key --role targets)"
        )
    wanted = source_tag or tag
    files = {}
    production = _production_targets_md(factory.id, tag)
    if production is not None:
        files.update(production.signed.targets)
    build = list(CiTarget.objects.filter(factory=factory, version=version).order_by("name"))
    build = [target for target in build if wanted in target.tags]
    if not build:
        raise ApplicationError(f"CI build {version} has no targets tagged {wanted}")
    for target in build:
        custom = {**target.custom, "tags": [tag]}
        files[target.name] = md.target_file(name=target.name, sha256_hex=target.sha256, length=target.length, custom=custom)
    pruned = {int(v) for v in prune}
    kept = [f for f in files.values() if md.target_version(f) not in pruned]
    targets = md.targets_build(target_files=kept, version=int(version), expires=expires_at)
    targets.sign(keyring.online_signer("targets"))
    return md.to_bytes(targets)


def wave_signing_payload(targets_bytes):
    """The canonical bytes of the wave's targets that offline keys sign."""
    return md.signing_payload(targets_bytes, Targets, "the wave's targets")


def _verified_signatures(*, key_for, payload, signatures, what):
    """Parse and verify {"keyid", "sig"} dicts; any unknown key or bad signature refuses them all."""
    if not isinstance(signatures, (list, tuple)):
        raise ApplicationError("signatures must be a list of objects with keyid and sig")
    verified = []
    for value in signatures:
        signature = tuf_keys.signature_parse(value)
        key = key_for(signature.keyid)
        if key is None:
            raise ApplicationError(f"key {signature.keyid} may not sign {what}")
        if not tuf_keys.signature_verify(key, signature, payload):
            raise ApplicationError(f"the signature by key {signature.keyid} does not verify over {what}")
        verified.append(signature)
    return verified


def _production_threshold_met(root, targets_md, online_keyids):
    result = md.targets_verification(root, targets_md)
    # The threshold must include at least one offline key: an online key alone never suffices.
    return result.verified and any(keyid not in online_keyids for keyid in result.signed)


def wave_signatures_add(*, factory, targets_bytes, signatures):
    """Verify offline signatures against the production root and append them.

    Returns (new targets bytes, whether the production root's targets threshold is now met).
    """
    targets = md.parse(targets_bytes, Targets, "the wave's targets")
    root = root_current(factory_id=factory.id, channel=Channel.PRODUCTION).signed
    role = root.roles["targets"]

    def key_for(keyid):
        return root.keys[keyid] if keyid in role.keyids else None

    verified = _verified_signatures(key_for=key_for, payload=targets.signed_bytes, signatures=signatures, what="this wave's targets")
    md.signatures_merge(targets, verified)
    met = _production_threshold_met(root, targets, Keyring(factory.id).online_keyids())
    return md.to_bytes(targets), met


def key_archive_signatures(*, payload, archive_bytes):
    """Sign `payload` with each targets key of a .tgz key archive, in memory; keys are dropped."""
    return tuf_keys.archive_signatures(payload=payload, archive_bytes=archive_bytes, roles=("targets",))


def _servable_wave_targets(wave, keyring, now):
    """The wave's targets, checked as a device would: production root threshold, not expired."""
    targets = md.parse(wave.targets, Targets, f"wave {wave.name}'s targets")
    root = root_current(factory_id=wave.factory_id, channel=Channel.PRODUCTION).signed
    if not _production_threshold_met(root, targets, keyring.online_keyids()):
        raise ApplicationError(f"wave {wave.name} is not signed by enough offline targets keys; devices cannot be served it")
    if targets.signed.version != wave.version:
        raise ApplicationError(f"wave {wave.name}'s targets are version {targets.signed.version}, not {wave.version}")
    if md.is_expired(targets, now):
        raise ApplicationError(f"wave {wave.name}'s targets expired on {targets.signed.expires:%Y-%m-%d}; devices would refuse them")
    return targets


def wave_view_publish(*, wave):
    """The wave became active: sign its view (its targets bytes exactly, new snapshot/timestamp)."""
    now = timezone.now()
    with transaction.atomic():
        keyring = Keyring(wave.factory_id)
        targets = _servable_wave_targets(wave, keyring, now)
        anchor = _production_anchor(wave.factory_id, wave.tag, keyring=keyring, now=now)
        if TufView.objects.filter(kind=TufView.Kind.WAVE, wave=wave).exists():
            return
        view = TufView(factory_id=wave.factory_id, kind=TufView.Kind.WAVE, tag=wave.tag, wave=wave)
        _view_set_targets(view, wave.targets, targets)
        # Signed after (so above) the production view: staged devices move up, never down.
        _view_sign(view, keyring, version=_next_version(anchor, now), now=now)
        view.save()
        anchor.staging_token = _token()
        anchor.save(update_fields=["counter", "staging_token", "updated_at"])


def _wave_view_remove(anchor, wave, keyring, now):
    TufView.objects.filter(kind=TufView.Kind.WAVE, wave=wave).delete()
    # Re-sign above the wave view's versions so its devices move to production upwards.
    _view_sign(anchor, keyring, version=_next_version(anchor, now), now=now)
    anchor.staging_token = _token()
    anchor.save(update_fields=VIEW_FIELDS)


def wave_view_drop(*, wave):
    """The wave was canceled: no device is served it any longer."""
    now = timezone.now()
    with transaction.atomic():
        keyring = Keyring(wave.factory_id)
        anchor = _production_anchor(wave.factory_id, wave.tag, keyring=keyring, now=now)
        _wave_view_remove(anchor, wave, keyring, now)


def production_targets_promote(*, wave):
    """The wave is complete: its targets bytes, signatures unchanged, become the tag's production targets."""
    now = timezone.now()
    with transaction.atomic():
        keyring = Keyring(wave.factory_id)
        targets = _servable_wave_targets(wave, keyring, now)
        anchor = _production_anchor(wave.factory_id, wave.tag, keyring=keyring, now=now)
        _view_set_targets(anchor, wave.targets, targets)
        anchor.baseline = False
        _wave_view_remove(anchor, wave, keyring, now)


# --- periodic re-signing -----------------------------------------------------------------------


def _anchor_due(anchor, views, now):
    soon = now + refresh_margin()
    due = any(v.timestamp_expires_at < soon or v.snapshot_expires_at < soon for v in views)
    if anchor.kind == TufView.Kind.CI:
        due = due or anchor.targets_expires_at < now + ci_targets_margin()
    return due


RESIGN_FIELDS = [
    "snapshot", "timestamp", "snapshot_hash", "timestamp_hash", "version", "snapshot_expires_at", "timestamp_expires_at", "token",
    "counter", "updated_at",
]  # fmt: skip


def views_refresh(*, anchor_ids, now=None):
    """Re-sign the tags (or CI views) of `anchor_ids` whose views expire soon; returns how many.

    A batch is claimed with one conditional update (claimed_until in the past -> ours, under a
    fresh claim token), so two workers never sign the same tag twice; the due check is repeated
    under the row locks, so a late duplicate run changes nothing. Signing happens in one
    transaction per batch: a few queries for any number of tags.
    """
    now = now or timezone.now()
    claim = _token()
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
                    _ci_targets_sign(anchor, keyring, now, version=anchor.targets_version + 1)
                    anchor.save(update_fields=["targets", "targets_hash", "targets_version", "targets_expires_at"])
                # Production first, then the wave view, each above the last.
                for view in views:
                    _view_sign(view, keyring, version=_next_version(anchor, now), now=now)
                    view.updated_at = now
                changed += views
                signed += 1
            # One plain UPDATE per view: much cheaper than bulk_update's CASE expressions here.
            for view in changed:
                view.save(update_fields=RESIGN_FIELDS)
            if signed:
                logger.info("re-signed the TUF views of %d tag(s)", signed)
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


# --- root changes: offline keys --------------------------------------------------------------


def _b64(data):
    return base64.b64encode(bytes(data)).decode()


def _unb64(text):
    return base64.b64decode(text.encode())


def _repository_locked(factory):
    repository = TufRepository.objects.select_for_update().filter(factory=factory).first()
    if repository is None:
        raise NotFound(f"factory {factory.name} has no TUF repository")
    return repository


def _root_change_begin(*, repository, actor, action, keysets, production_threshold, new_key=None, retire_keyids=(), details=None):
    """Create the change: new roots signed online where possible, and targets to re-sign."""
    factory = repository.factory
    if TufRootChange.objects.filter(factory=factory, status=TufRootChange.Status.PENDING).exists():
        raise Conflict("a key change is waiting for offline signatures; sign it or abandon it first")
    now = timezone.now()
    keyring = Keyring(factory.id)
    version = repository.root_version + 1
    expires = (now + root_lifetime()).replace(microsecond=0)
    roots = _roots_build(keysets=keysets, production_threshold=production_threshold, version=version, expires=expires)
    old_root_signer = keyring.signer("root")
    documents = []
    for channel, root in roots.items():
        previous = root_current(factory_id=factory.id, channel=channel).signed
        # The old online root key signs for the previous root, and for the new one if it stays.
        if old_root_signer is not None and old_root_signer.public_key.keyid in previous.roles["root"].keyids:
            root.sign(old_root_signer, append=True)
        documents.append({"name": f"{channel}-root", "kind": f"root-{channel}", "tag": "", "data": _b64(md.to_bytes(root)), "source_hash": ""})
    production_root = roots[Channel.PRODUCTION].signed
    online_keyids = keyring.online_keyids()

    def still_valid(targets_md):
        result = md.targets_verification(production_root, targets_md)
        return result.verified and (production_threshold < 2 or any(k not in online_keyids for k in result.signed))

    baseline = md.parse(repository.baseline_targets, Targets, "the baseline targets")
    if not still_valid(baseline):
        documents.append(
            {"name": "baseline-targets", "kind": "baseline", "tag": "", "data": _b64(repository.baseline_targets),
             "source_hash": md.sha256(bytes(repository.baseline_targets))}
        )  # fmt: skip
    for view in TufView.objects.filter(factory=factory, kind=TufView.Kind.PRODUCTION, baseline=False).order_by("tag"):
        if not still_valid(md.parse(view.targets, Targets)):
            documents.append(
                {"name": f"production-targets:{view.tag}", "kind": "production", "tag": view.tag, "data": _b64(view.targets),
                 "source_hash": view.targets_hash}
            )  # fmt: skip
    for view in TufView.objects.filter(factory=factory, kind=TufView.Kind.WAVE).select_related("wave"):
        if not still_valid(md.parse(view.targets, Targets)):
            raise Conflict(f"wave {view.wave.name} is active with fewer signatures than the new root requires; complete or cancel it first")
    change = TufRootChange.objects.create(
        factory=factory,
        action=action,
        details={**(details or {}), "production_threshold": production_threshold, "retire_keyids": list(retire_keyids)},
        base_root_version=repository.root_version,
        documents=documents,
        new_key=new_key.to_dict() | {"keyid": new_key.keyid} if new_key is not None else None,
        created_by=actor,
    )
    audit_record(factory=factory, actor=actor, action=f"tuf.{action}", target=f"root v{version}", details=change.details)
    if _root_change_complete(change, repository):
        _root_change_apply(change, repository, actor)
    return change


def _document_md(document):
    return md.parse(_unb64(document["data"]), Root if document["kind"].startswith("root-") else Targets)


def _document_signers(change, document, repository):
    """Key id -> Key of the keys that may sign `document`."""
    if document["kind"].startswith("root-"):
        channel = document["kind"][len("root-"):]
        new_root = _document_md(document).signed
        previous = root_current(factory_id=change.factory_id, channel=channel).signed
        keyids = set(previous.roles["root"].keyids) | set(new_root.roles["root"].keyids)
        keys = {**previous.keys, **new_root.keys}
        return {k: keys[k] for k in keyids}
    production_root = _document_md(next(d for d in change.documents if d["kind"] == "root-production")).signed
    return {k: production_root.keys[k] for k in production_root.roles["targets"].keyids}


def _document_missing(change, document):
    """Plain words for what the document still needs, or '' if it is complete."""
    metadata = _document_md(document)
    if document["kind"].startswith("root-"):
        channel = document["kind"][len("root-"):]
        previous = root_current(factory_id=change.factory_id, channel=channel).signed
        result = md.root_verification(metadata, previous)
        if result.verified:
            return ""
        return "root keys " + ", ".join(sorted(k[:8] for k in result.unsigned))
    production_root = _document_md(next(d for d in change.documents if d["kind"] == "root-production")).signed
    result = md.targets_verification(production_root, metadata)
    if result.verified:
        return ""
    return f"{result.missing} more targets key signature(s)"


def _root_change_complete(change, repository):
    return all(not _document_missing(change, d) for d in change.documents)


def _root_change_apply(change, repository, actor):
    factory = repository.factory
    if repository.root_version != change.base_root_version:
        raise Conflict("the root changed since this key change began; abandon it and start again")
    now = timezone.now()
    targets_docs = [d for d in change.documents if d["kind"] in ("baseline", "production")]
    for document in targets_docs:
        if document["kind"] == "baseline":
            current = md.sha256(bytes(repository.baseline_targets))
        else:
            current = TufView.objects.filter(factory=factory, kind=TufView.Kind.PRODUCTION, tag=document["tag"]).values_list("targets_hash", flat=True).first()
        if current != document["source_hash"]:
            raise Conflict("production targets changed since this key change began; abandon it and start again")
    version = repository.root_version + 1
    for document in change.documents:
        if document["kind"].startswith("root-"):
            root = _document_md(document)
            TufRoot.objects.create(
                factory=factory, channel=document["kind"][len("root-"):], version=version, data=_unb64(document["data"]), expires_at=root.signed.expires
            )
    if change.new_key:
        key_data = dict(change.new_key)
        keyid = key_data.pop("keyid")
        TufKey.objects.create(factory=factory, role=change.details["role"], keyid=keyid, public=key_data, online=False, created_by=change.created_by)
    retire = change.details.get("retire_keyids", [])
    if retire:
        # The server forgets retired private keys: root signing is now the user's alone.
        TufKey.objects.filter(factory=factory, keyid__in=retire).update(retired_at=now, private_encrypted=None)
    production_root = _document_md(next(d for d in change.documents if d["kind"] == "root-production")).signed
    keyring = Keyring(factory.id)
    repository.root_version = version
    repository.root_expires_at = production_root.expires
    repository.root_online = bool(set(production_root.roles["root"].keyids) & keyring.online_keyids())
    repository.production_targets_threshold = production_root.roles["targets"].threshold
    for document in targets_docs:
        data = _unb64(document["data"])
        if document["kind"] == "baseline":
            repository.baseline_targets = data
            for view in TufView.objects.select_for_update().filter(factory=factory, kind=TufView.Kind.PRODUCTION, baseline=True):
                _view_set_targets(view, data)
                view.save(update_fields=VIEW_FIELDS)
        else:
            view = TufView.objects.select_for_update().get(factory=factory, kind=TufView.Kind.PRODUCTION, tag=document["tag"])
            _view_set_targets(view, data)
            view.save(update_fields=VIEW_FIELDS)
    repository.save()
    if targets_docs:
        for anchor in TufView.objects.select_for_update().filter(factory=factory, kind=TufView.Kind.PRODUCTION).order_by("tag"):
            _tag_resign(anchor, keyring, now)
    change.status = TufRootChange.Status.APPLIED
    change.finished_at = now
    change.save(update_fields=["status", "finished_at", "documents"])
    audit_record(factory=factory, actor=actor, action="tuf.root.apply", target=f"root v{version}", details={"change": change.action})


def offline_key_add(*, factory, actor, role, public_key, threshold=None):
    """Add a user-held public key: a targets signing key, or the new root key.

    "targets": new CI and production roots that add the key; the production targets threshold
    becomes `threshold` (at least 2), the CI one stays 1. "root": the key replaces the root
    key(s); both old and new root keys must sign the new root, as TUF requires.
    Returns the TufRootChange: applied at once when the server can sign everything, else
    pending until `root_change_sign` brings the missing offline signatures.
    """
    authorize(user=actor, factory=factory, action="keys.manage")
    if role not in tuf_keys.OFFLINE_ROLES:
        raise ApplicationError(f"role must be one of {', '.join(tuf_keys.OFFLINE_ROLES)}, not {str(role)[:20]!r}")
    key = tuf_keys.public_key_parse(public_key)
    with transaction.atomic():
        repository = _repository_locked(factory)
        if TufKey.objects.filter(factory=factory, keyid=key.keyid).exists():
            raise Conflict(f"key {key.keyid} is already known to this factory")
        keyring = Keyring(factory.id)
        keysets = keyring.keysets()
        offline_targets = len(_offline_targets_keyids(keyring))
        production_threshold = repository.production_targets_threshold
        retire = []
        if role == "targets":
            keysets["targets"] = keysets["targets"] + [key]
            wanted = threshold if threshold is not None else max(production_threshold, 2)
            try:
                wanted = int(wanted)
            except (TypeError, ValueError):
                raise ApplicationError(f"threshold {str(threshold)[:20]!r} is not a whole number") from None
            if not 2 <= wanted <= offline_targets + 2:
                raise ApplicationError(f"the production targets threshold must be between 2 and {offline_targets + 2} (the targets keys)")
            production_threshold = wanted
        else:
            if threshold is not None:
                raise ApplicationError("a threshold applies to targets keys only")
            retire = [k.keyid for k in keysets["root"]]
            keysets["root"] = [key]
        return _root_change_begin(
            repository=repository,
            actor=actor,
            action=f"key.add.{role}",
            keysets=keysets,
            production_threshold=production_threshold,
            new_key=key,
            retire_keyids=retire,
            details={"role": role, "keyid": key.keyid},
        )


def offline_key_retire(*, factory, actor, keyid):
    """Remove an offline targets key from both roots (a user leaves, a key is lost or rotated).

    `keyid` is the key id or a unique prefix of it (at least 8 characters, as `keys list` and the
    pending change's "still needs" show them). Production targets that relied on the key must
    first be re-signed by the remaining keys: the change lists them and waits for those
    signatures. The last offline targets key cannot go.
    """
    authorize(user=actor, factory=factory, action="keys.manage")
    keyid = str(keyid).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", keyid):
        raise ApplicationError(f"{keyid[:70]!r} is not a key id: give the key's id (hexadecimal) or its first 8 characters or more")
    with transaction.atomic():
        repository = _repository_locked(factory)
        rows = list(TufKey.objects.filter(factory=factory, keyid__startswith=keyid, retired_at__isnull=True, online=False)[:2])
        if not rows:
            raise NotFound(f"key {keyid} is not an offline key of this factory")
        if len(rows) > 1:
            raise ApplicationError(f"more than one offline key starts with {keyid}; give more of the key id")
        [row] = rows
        if row.role != "targets":
            raise ApplicationError("the root key is replaced, not removed: add the new root key instead")
        keyring = Keyring(factory.id)
        remaining = len(_offline_targets_keyids(keyring)) - 1
        if remaining < 1:
            raise ApplicationError("this is the factory's only offline targets key; add another one before removing it")
        keysets = keyring.keysets()
        keysets["targets"] = [key for key in keysets["targets"] if key.keyid != row.keyid]
        return _root_change_begin(
            repository=repository,
            actor=actor,
            action="key.retire.targets",
            keysets=keysets,
            production_threshold=min(repository.production_targets_threshold, remaining + 1),
            retire_keyids=[row.keyid],
            details={"role": "targets", "keyid": row.keyid},
        )


def root_renew(*, factory, actor):
    """A new root version with the same keys, pushing the root's expiry a year out."""
    authorize(user=actor, factory=factory, action="keys.manage")
    with transaction.atomic():
        repository = _repository_locked(factory)
        keyring = Keyring(factory.id)
        return _root_change_begin(
            repository=repository,
            actor=actor,
            action="root.renew",
            keysets=keyring.keysets(),
            production_threshold=repository.production_targets_threshold,
            details={"role": "root"},
        )


def root_change_sign(*, factory, actor, signatures):
    """Add offline signatures to the pending key change; it applies once every document verifies.

    `signatures`: [{"document", "keyid", "sig"}], made over the payloads of
    `selectors.root_change_payloads`. An unknown key or a bad signature refuses them all.
    """
    authorize(user=actor, factory=factory, action="keys.manage")
    if not isinstance(signatures, (list, tuple)) or not signatures:
        raise ApplicationError("give at least one signature")
    with transaction.atomic():
        repository = _repository_locked(factory)
        change = TufRootChange.objects.select_for_update().filter(factory=factory, status=TufRootChange.Status.PENDING).first()
        if change is None:
            raise NotFound("no key change is waiting for signatures")
        by_name = {d["name"]: d for d in change.documents}
        grouped = {}
        for value in signatures:
            name = value.get("document") if isinstance(value, dict) else None
            if name not in by_name:
                raise ApplicationError(f"signature for unknown document {str(name)[:80]!r}; expected one of {', '.join(by_name)}")
            grouped.setdefault(name, []).append(value)
        updated = {}
        for name, values in grouped.items():
            document = by_name[name]
            metadata = _document_md(document)
            allowed = _document_signers(change, document, repository)
            verified = _verified_signatures(key_for=allowed.get, payload=metadata.signed_bytes, signatures=values, what=name)
            md.signatures_merge(metadata, verified)
            updated[name] = _b64(md.to_bytes(metadata))
        for document in change.documents:
            if document["name"] in updated:
                document["data"] = updated[document["name"]]
        change.save(update_fields=["documents"])
        audit_record(
            factory=factory, actor=actor, action="tuf.root.sign", target=change.action,
            details={"keyids": sorted({v["keyid"] for vs in grouped.values() for v in vs})},
        )  # fmt: skip
        if _root_change_complete(change, repository):
            _root_change_apply(change, repository, actor)
    return change


def root_change_sign_with_archive(*, factory, actor, key_archive):
    """Sign the pending key change with the keys of an uploaded archive (the dashboard's way).

    The archive's root and targets keys sign, in memory, every document that still needs their
    signature; the keys are dropped after. An archive with no key the change needs is refused.
    """
    from .selectors import root_change_payloads

    authorize(user=actor, factory=factory, action="keys.manage")
    change = TufRootChange.objects.filter(factory=factory, status=TufRootChange.Status.PENDING).first()
    if change is None:
        raise NotFound("no key change is waiting for signatures")
    signers = [signer for role, signer in tuf_keys.key_archive_read(key_archive) if role in tuf_keys.OFFLINE_ROLES]
    signatures = []
    try:
        for document in root_change_payloads(change=change):
            payload = base64.b64decode(document["payload"])
            for signer in signers:
                keyid = signer.public_key.keyid
                if document["missing"] and keyid in document["keyids"] and keyid not in document["signed_by"]:
                    signatures.append({"document": document["document"], **tuf_keys.payload_sign(signer, payload)})
    finally:
        signers.clear()
    if not signatures:
        raise ApplicationError("none of the keys in this archive can add a signature the pending change still needs", code="key_archive")
    return root_change_sign(factory=factory, actor=actor, signatures=signatures)


def root_change_abandon(*, factory, actor):
    authorize(user=actor, factory=factory, action="keys.manage")
    with transaction.atomic():
        updated = TufRootChange.objects.filter(factory=factory, status=TufRootChange.Status.PENDING).update(
            status=TufRootChange.Status.ABANDONED, finished_at=timezone.now()
        )
        if not updated:
            raise NotFound("no key change is waiting for signatures")
        audit_record(factory=factory, actor=actor, action="tuf.root.abandon", target="")


def offline_key_generate(*, factory, actor, role="targets", threshold=None):
    """Generate an offline key here, register it, sign what it must sign, return its .tgz archive.

    The same steps the CLI takes on the user's machine, for the demo and for operators working
    on the server. The private key is only in the returned archive, never in the database.
    """
    signer = tuf_keys.key_generate()
    change = offline_key_add(factory=factory, actor=actor, role=role, public_key=signer.public_key.to_dict(), threshold=threshold)
    if change.status == TufRootChange.Status.PENDING:
        from .selectors import root_change_payloads

        signatures = []
        for payload in root_change_payloads(change=change):
            if signer.public_key.keyid in payload["keyids"]:
                signatures.append({"document": payload["document"], **tuf_keys.payload_sign(signer, _unb64(payload["payload"]))})
        if signatures:
            change = root_change_sign(factory=factory, actor=actor, signatures=signatures)
    return tuf_keys.key_archive_write([(role, signer)])


def demo_offline_key(*, factory, actor, path):
    """The demo's offline targets key archive at `path`: kept if it is still one of the factory's
    keys, else a new key is registered and written there (owner-only). Returns (path, created)."""
    path = Path(path)
    if not TufRepository.objects.filter(factory=factory).exists():
        repository_init(factory=factory)  # a demo database from before the TUF repository existed
    if path.exists():
        try:
            keyids = {signer.public_key.keyid for role, signer in tuf_keys.key_archive_read(path.read_bytes()) if role == "targets"}
        except ApplicationError:
            keyids = set()
        if TufKey.objects.filter(factory=factory, role="targets", online=False, retired_at__isnull=True, keyid__in=keyids).exists():
            return path, False
    archive = offline_key_generate(factory=factory, actor=actor, role="targets")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.touch(mode=0o600)
    temporary.chmod(0o600)
    temporary.write_bytes(archive)
    temporary.replace(path)
    return path, True
