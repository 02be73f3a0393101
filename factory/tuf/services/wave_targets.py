"""A wave's targets: built from the tag's production targets and a CI build, signed offline, then
served as the wave's view while it is active and promoted to production targets on completion.

Wave rows are passed in (their factory_id, tag, name, version and targets bytes); this module
imports nothing from waves."""
from django.db import transaction
from django.utils import timezone
from tuf.api.metadata import Targets

from factory.errors import ApplicationError
from factory.models import CiTarget

from .. import keys as tuf_keys
from .. import metadata as md
from ..models import Channel, TufView
from ..selectors import production_targets_md, root_current
from .keyring import Keyring, offline_targets_keyids, production_threshold_met, signatures_verified
from .signed_views import VIEW_FIELDS, next_version, production_anchor, token_new, view_set_targets, view_sign


def wave_targets_build(*, factory, tag, version, prune=(), expires_at, source_tag=None):
    """The wave's targets: the tag's production targets plus CI build `version`, minus `prune`.

    Signed by the online targets key only: devices see nothing until offline signatures meet
    the production root's threshold (`wave_signatures_add`).
    """
    keyring = Keyring(factory.id)
    if not offline_targets_keyids(keyring):
        raise ApplicationError(
            "this factory has no offline targets key yet; create one first (breakwater keys rotate-offline-key --role targets)"
        )
    wanted = source_tag or tag
    files = {}
    production = production_targets_md(factory.id, tag)
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


def wave_signatures_add(*, factory, targets_bytes, signatures):
    """Verify offline signatures against the production root and append them.

    Returns (new targets bytes, whether the production root's targets threshold is now met).
    """
    targets = md.parse(targets_bytes, Targets, "the wave's targets")
    root = root_current(factory_id=factory.id, channel=Channel.PRODUCTION).signed
    role = root.roles["targets"]

    def key_for(keyid):
        return root.keys[keyid] if keyid in role.keyids else None

    verified = signatures_verified(key_for=key_for, payload=targets.signed_bytes, signatures=signatures, what="this wave's targets")
    md.signatures_merge(targets, verified)
    met = production_threshold_met(root, targets, Keyring(factory.id).online_keyids())
    return md.to_bytes(targets), met


def key_archive_signatures(*, payload, archive_bytes):
    """Sign `payload` with each targets key of a .tgz key archive, in memory; keys are dropped."""
    return tuf_keys.archive_signatures(payload=payload, archive_bytes=archive_bytes, roles=("targets",))


def _servable_wave_targets(wave, keyring, now):
    """The wave's targets, checked as a device would: production root threshold, not expired."""
    targets = md.parse(wave.targets, Targets, f"wave {wave.name}'s targets")
    root = root_current(factory_id=wave.factory_id, channel=Channel.PRODUCTION).signed
    if not production_threshold_met(root, targets, keyring.online_keyids()):
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
        anchor = production_anchor(wave.factory_id, wave.tag, keyring=keyring, now=now)
        if TufView.objects.filter(kind=TufView.Kind.WAVE, wave=wave).exists():
            return
        view = TufView(factory_id=wave.factory_id, kind=TufView.Kind.WAVE, tag=wave.tag, wave=wave)
        view_set_targets(view, wave.targets, targets)
        # Signed after (so above) the production view: staged devices move up, never down.
        view_sign(view, keyring, version=next_version(anchor, now), now=now)
        view.save()
        anchor.staging_token = token_new()
        anchor.save(update_fields=["counter", "staging_token", "updated_at"])


def _wave_view_remove(anchor, wave, keyring, now):
    TufView.objects.filter(kind=TufView.Kind.WAVE, wave=wave).delete()
    # Re-sign above the wave view's versions so its devices move to production upwards.
    view_sign(anchor, keyring, version=next_version(anchor, now), now=now)
    anchor.staging_token = token_new()
    anchor.save(update_fields=VIEW_FIELDS)


def wave_view_drop(*, wave):
    """The wave was canceled: no device is served it any longer."""
    now = timezone.now()
    with transaction.atomic():
        keyring = Keyring(wave.factory_id)
        anchor = production_anchor(wave.factory_id, wave.tag, keyring=keyring, now=now)
        _wave_view_remove(anchor, wave, keyring, now)


def production_targets_promote(*, wave):
    """The wave is complete: its targets bytes, signatures unchanged, become the tag's production targets."""
    now = timezone.now()
    with transaction.atomic():
        keyring = Keyring(wave.factory_id)
        targets = _servable_wave_targets(wave, keyring, now)
        anchor = production_anchor(wave.factory_id, wave.tag, keyring=keyring, now=now)
        view_set_targets(anchor, wave.targets, targets)
        anchor.baseline = False
        _wave_view_remove(anchor, wave, keyring, now)
