"""The libaktualizr-flavour siblings of stored TUF documents, made in the same step and signed by
the same keys: online keys sign a sibling whenever they sign its TUF document; offline signatures
of targets siblings are kept in TufTargetsSibling until the targets are served."""
import json

from .. import aktualizr as ak
from .. import metadata as md
from ..models import TufTargetsSibling


def _tuf_signers(tuf_bytes):
    try:
        return {s.get("keyid") for s in json.loads(bytes(tuf_bytes)).get("signatures", [])}
    except (ValueError, AttributeError, TypeError):
        return set()


def online_signatures(keyring, role, signed, tuf_bytes):
    """Signatures over `signed` by the online key(s) of `role` that signed the TUF document."""
    signer = keyring.signer(role)
    if signer is None or signer.public_key.keyid not in _tuf_signers(tuf_bytes):
        return []
    return [ak.sign(signer, signed)]


def targets_sibling(*, factory_id, keyring, tuf_bytes, required=False):
    """The aktualizr sibling of TUF targets `tuf_bytes`: the online targets key's signature (if
    it signed them) plus any offline signatures stored for the same content. b"" when nothing
    can sign it (and `required` is False)."""
    signed = ak.sibling_signed(tuf_bytes)
    signatures = online_signatures(keyring, "targets", signed, tuf_bytes)
    stored = TufTargetsSibling.objects.filter(factory_id=factory_id, payload_hash=ak.sha256(ak.payload(signed))).values_list("data", flat=True).first()
    if stored is not None:
        signatures += ak.parse(stored)[1]
    if not signatures and not required:
        return b""
    return ak.document(signed, signatures)


def targets_sibling_store(*, factory_id, data):
    """Keep the offline signatures of an aktualizr targets sibling (its latest bytes win)."""
    signed, _ = ak.parse(data)
    TufTargetsSibling.objects.update_or_create(
        factory_id=factory_id, payload_hash=ak.sha256(ak.payload(signed)), defaults={"data": bytes(data)}
    )


def root_sibling(*, keyring, tuf_bytes, signers=()):
    """The aktualizr sibling of a TUF root: signed by the online root key if it signed the TUF
    root, and by `signers` (the old online root key when a root rotates)."""
    signed = ak.sibling_signed(tuf_bytes)
    signatures = online_signatures(keyring, "root", signed, tuf_bytes)
    signatures += [ak.sign(s, signed) for s in signers]
    return ak.document(signed, signatures)


def view_sign(view, keyring):
    """Sign the view's aktualizr snapshot and timestamp over its aktualizr targets, at the TUF
    files' versions and expiries (view.snapshot and view.timestamp are already signed)."""
    if not view.aktualizr_targets:
        view.aktualizr_snapshot = view.aktualizr_timestamp = b""
        view.aktualizr_snapshot_hash = view.aktualizr_timestamp_hash = ""
        return
    snapshot = ak.sibling_signed(view.snapshot, described=bytes(view.aktualizr_targets))
    snapshot_bytes = ak.document_signed(snapshot, [keyring.online_signer("snapshot")])
    timestamp = ak.sibling_signed(view.timestamp, described=snapshot_bytes)
    timestamp_bytes = ak.document_signed(timestamp, [keyring.online_signer("timestamp")])
    view.aktualizr_snapshot, view.aktualizr_snapshot_hash = snapshot_bytes, md.sha256(snapshot_bytes)
    view.aktualizr_timestamp, view.aktualizr_timestamp_hash = timestamp_bytes, md.sha256(timestamp_bytes)


def view_set_targets(view, data):
    data = bytes(data or b"")
    view.aktualizr_targets = data
    view.aktualizr_targets_hash = md.sha256(data) if data else ""
