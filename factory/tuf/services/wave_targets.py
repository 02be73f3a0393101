"""A wave's targets: built from the tag's production targets and a CI build, signed offline, then
served as the wave's view while it is active and promoted to production targets on completion.

Wave rows are passed in (their factory_id, tag, name, version and targets bytes); this module
imports nothing from waves."""
from django.db import transaction
from django.utils import timezone
from tuf.api.metadata import Targets

from factory.errors import ApplicationError, NotFound
from factory.models import CiTarget

from .. import aktualizr as ak
from .. import keys as tuf_keys
from .. import metadata as md
from ..models import Channel, TufView
from ..selectors import aktualizr_root_signed, production_targets_md, root_current
from . import siblings
from .keyring import Keyring, offline_targets_keyids, production_threshold_met, signatures_verified
from .signed_views import VIEW_FIELDS, next_version, production_anchor, token_new, view_set_targets, view_sign


def _keyring_with_offline_key(factory):
    keyring = Keyring(factory.id)
    if not offline_targets_keyids(keyring):
        raise ApplicationError(
            "This factory has no offline targets key yet; create one first (breakwater keys rotate-offline-key --role targets)"
        )
    return keyring


def _production_files(factory, tag):
    production = production_targets_md(factory.id, tag)
    return dict(production.signed.targets) if production is not None else {}


def _ci_build_files(factory, tag, version, source_tag):
    wanted = source_tag or tag
    build = [t for t in CiTarget.objects.filter(factory=factory, version=version).order_by("name") if wanted in t.tags]
    return [
        md.target_file(name=t.name, sha256_hex=t.sha256, length=t.length, custom={**t.custom, "tags": [tag]}) for t in build
    ]


def _targets_signed_online(keyring, files, version, prune, expires_at):
    pruned = {int(v) for v in prune}
    kept = [f for f in files.values() if md.target_version(f) not in pruned]
    targets = md.targets_build(target_files=kept, version=int(version), expires=expires_at)
    targets.sign(keyring.online_signer("targets"))
    return md.to_bytes(targets)


def wave_targets_build(*, factory, tag, version, prune=(), expires_at, source_tag=None):
    """The wave's targets: the tag's production targets plus CI build `version`, minus `prune`.

    Signed by the online targets key only: devices see nothing until offline signatures meet
    the production root's threshold (`wave_signatures_add`).
    """
    keyring = _keyring_with_offline_key(factory)
    files = _production_files(factory, tag)
    build = _ci_build_files(factory, tag, version, source_tag)
    if not build:
        raise ApplicationError(f"CI build {version} has no targets tagged {source_tag or tag}")
    files.update((target.path, target) for target in build)
    return _targets_signed_online(keyring, files, version, prune, expires_at)


def rerelease_targets_build(*, factory, tag, build_version, version, prune=(), expires_at, source_tag=None):
    """The targets of a re-release: the tag's production targets plus build `build_version`'s
    content (the same hashes and lengths, so the same OSTree commit) under new target names at
    `version`, which is higher than any the tag has served: devices only ever move up.

    The content comes from the tag's production targets when the build is in them, else from
    the CI build. Each new target says which build it re-releases in `custom.rerelease_of`.
    """
    keyring = _keyring_with_offline_key(factory)
    files = _production_files(factory, tag)
    originals = [f for f in files.values() if md.target_version(f) == int(build_version)]
    if not originals:
        originals = _ci_build_files(factory, tag, build_version, source_tag)
    if not originals:
        raise NotFound(f"Build {build_version} is neither in the production targets of tag {tag} nor a CI build tagged {source_tag or tag}")
    for original in originals:
        custom = dict(original.custom) if isinstance(original.custom, dict) else {}
        source_name, source_version = md.content_source(original.path, custom)
        base = custom.get("name") if isinstance(custom.get("name"), str) else original.path.rsplit("-", 1)[0]
        name = f"{base}-{version}"
        custom.update(version=str(version), tags=[tag], rerelease_of={"target": source_name, "version": source_version or int(build_version)})
        files[name] = md.target_file(name=name, sha256_hex=original.hashes["sha256"], length=original.length, custom=custom)
    return _targets_signed_online(keyring, files, version, prune, expires_at)


def wave_signing_payload(targets_bytes):
    """The canonical bytes of the wave's targets that offline keys sign."""
    return md.signing_payload(targets_bytes, Targets, "the wave's targets")


def wave_aktualizr_signing_payload(targets_bytes):
    """The canonical bytes of the wave's targets in the libaktualizr flavour, which the same
    offline keys sign in the same step."""
    return ak.payload(ak.sibling_signed(targets_bytes))


def _keyids(signatures):
    return {s.get("keyid") for s in signatures if isinstance(s, dict)}


def wave_signatures_add(*, factory, targets_bytes, signatures, aktualizr_signatures=()):
    """Verify offline signatures of both flavours against the production root and add them: the
    TUF ones to the targets, the aktualizr ones to the targets' aktualizr sibling (stored).

    Every key signs both payloads in the same call, or nothing is added. Returns (new targets
    bytes, whether the production root's targets threshold is now met in both flavours).
    """
    if not isinstance(signatures or [], (list, tuple)) or not isinstance(aktualizr_signatures or [], (list, tuple)):
        raise ApplicationError("Signatures must be a list of objects with keyid and sig")
    signatures, aktualizr_signatures = list(signatures or []), list(aktualizr_signatures or [])
    unpaired = _keyids(signatures) ^ _keyids(aktualizr_signatures)
    if unpaired:
        keyid = sorted(str(k) for k in unpaired)[0][:64]
        raise ApplicationError(
            f"Key {keyid} signed only one of the wave's two payloads: sign both signing_payload and aktualizr_signing_payload "
            "with every key (the aktualizr flavour is what aktualizr-lite devices verify)"
        )
    targets = md.parse(targets_bytes, Targets, "the wave's targets")
    root_md = root_current(factory_id=factory.id, channel=Channel.PRODUCTION)
    root = root_md.signed
    role = root.roles["targets"]

    def key_for(keyid):
        return root.keys[keyid] if keyid in role.keyids else None

    verified = signatures_verified(key_for=key_for, payload=targets.signed_bytes, signatures=signatures, what="this wave's targets")
    signed = ak.sibling_signed(targets_bytes)
    verified_ak = signatures_verified(
        key_for=key_for, payload=ak.payload(signed), signatures=aktualizr_signatures, what="this wave's targets (aktualizr flavour)"
    )
    keyring = Keyring(factory.id)
    md.signatures_merge(targets, verified)
    new_bytes = md.to_bytes(targets)
    sibling = siblings.targets_sibling(factory_id=factory.id, keyring=keyring, tuf_bytes=new_bytes, required=True)
    sibling = ak.signatures_add(sibling, [ak.signature(s.keyid, bytes.fromhex(s.signature)) for s in verified_ak])
    if verified_ak:
        siblings.targets_sibling_store(factory_id=factory.id, data=sibling)
    online = keyring.online_keyids()
    good, threshold = ak.signed_by(aktualizr_root_signed(root_md), "targets", sibling)
    met_ak = len(good) >= threshold and any(k not in online for k in good)
    return new_bytes, production_threshold_met(root, targets, online) and met_ak


def key_archive_signatures(*, payload, archive_bytes):
    """Sign `payload` with each targets key of a .tgz key archive, in memory; keys are dropped."""
    return tuf_keys.archive_signatures(payload=payload, archive_bytes=archive_bytes, roles=("targets",))


def key_archive_signatures_both(*, targets_bytes, archive_bytes):
    """(TUF signatures, aktualizr signatures) of the wave's targets by each targets key of the
    archive: both payloads in one step."""
    payloads = [wave_signing_payload(targets_bytes), wave_aktualizr_signing_payload(targets_bytes)]
    tuf, aktualizr = tuf_keys.archive_signatures_many(payloads=payloads, archive_bytes=archive_bytes, roles=("targets",))
    return tuf, aktualizr


def _servable_wave_targets(wave, keyring, now):
    """The wave's targets, checked as a device would: production root threshold, not expired."""
    targets = md.parse(wave.targets, Targets, f"wave {wave.name}'s targets")
    root = root_current(factory_id=wave.factory_id, channel=Channel.PRODUCTION).signed
    if not production_threshold_met(root, targets, keyring.online_keyids()):
        raise ApplicationError(f"Wave {wave.name} is not signed by enough offline targets keys; devices cannot be served it")
    if targets.signed.version != wave.version:
        raise ApplicationError(f"Wave {wave.name}'s targets are version {targets.signed.version}, not {wave.version}")
    if md.is_expired(targets, now):
        raise ApplicationError(f"Wave {wave.name}'s targets expired on {targets.signed.expires:%Y-%m-%d}; devices would refuse them")
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
        view_set_targets(view, wave.targets, targets, keyring=keyring)
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
        view_set_targets(anchor, wave.targets, targets, keyring=keyring)
        anchor.baseline = False
        _wave_view_remove(anchor, wave, keyring, now)
