"""Root changes: offline keys added or retired, roots renewed. Each is a new root version (and any
production targets it forces to re-sign) that waits for offline signatures, then applies."""
import base64
import re
from pathlib import Path

from django.db import transaction
from django.utils import timezone
from tuf.api.metadata import Targets

from factory.auth import authorize
from factory.errors import ApplicationError, Conflict, NotFound
from factory.services import audit_record

from .. import aktualizr as ak
from .. import keys as tuf_keys
from .. import metadata as md
from ..lifetimes import root_lifetime
from ..models import Channel, TufKey, TufRepository, TufRoot, TufRootChange, TufView
from ..signals import online_key_rotating
from ..selectors import (
    AKTUALIZR_SUFFIX, document_aktualizr_bytes, document_aktualizr_missing, document_bytes, document_md, document_missing,
    document_signers, root_change_payloads, root_current,
)  # fmt: skip
from . import siblings
from .keyring import Keyring, offline_targets_keyids, roots_build, signatures_verified
from .repository import repository_init
from .keyring import private_encrypt
from .signed_views import VIEW_FIELDS, ci_targets_sign, next_version, tag_resign, view_set_targets, view_sign


def _b64(data):
    return base64.b64encode(bytes(data)).decode()


def _repository_locked(factory):
    repository = TufRepository.objects.select_for_update().filter(factory=factory).first()
    if repository is None:
        raise NotFound(f"Factory {factory.name} has no TUF repository")
    return repository


def _resigned_targets(data, aktualizr_data, *, signer, dropped):
    """Targets bytes and their aktualizr sibling with the signatures of `dropped` key ids taken
    off and `signer`'s added: the same signed content (same version), trusted by the new root."""
    metadata = md.parse(bytes(data), Targets, "targets")
    for keyid in dropped:
        metadata.signatures.pop(keyid, None)
    metadata.sign(signer, append=True)
    signed, signatures = ak.parse(aktualizr_data)
    kept = [s for s in signatures if not (isinstance(s, dict) and s.get("keyid") in dropped)]
    return md.to_bytes(metadata), ak.document(signed, kept + [ak.sign(signer, signed)])


def _root_change_begin(
    *, repository, actor, action, keysets, production_threshold, new_key=None, retire_keyids=(), details=None, online_signer=None, new_private=None
):
    """Create the change: new roots signed online where possible, and targets to re-sign.

    `online_signer`: a new online targets key (an online key rotation), which re-signs at once
    every production targets document the new root would no longer trust."""
    factory = repository.factory
    if TufRootChange.objects.filter(factory=factory, status=TufRootChange.Status.PENDING).exists():
        raise Conflict("A key change is waiting for offline signatures; sign it or abandon it first")
    now = timezone.now()
    keyring = Keyring(factory.id)
    version = repository.root_version + 1
    expires = (now + root_lifetime()).replace(microsecond=0)
    roots = roots_build(keysets=keysets, production_threshold=production_threshold, version=version, expires=expires)
    old_root_signer = keyring.signer("root")
    documents = []
    for channel, root in roots.items():
        previous = root_current(factory_id=factory.id, channel=channel).signed
        # The old online root key signs for the previous root, and for the new one if it stays.
        if old_root_signer is not None and old_root_signer.public_key.keyid in previous.roles["root"].keyids:
            root.sign(old_root_signer, append=True)
        data = md.to_bytes(root)
        documents.append(
            {"name": f"{channel}-root", "kind": f"root-{channel}", "tag": "", "data": _b64(data), "source_hash": "",
             "aktualizr_data": _b64(siblings.root_sibling(keyring=keyring, tuf_bytes=data))}
        )  # fmt: skip
    production_root = roots[Channel.PRODUCTION].signed
    online_keyids = (keyring.online_keyids() - set(retire_keyids)) | ({online_signer.public_key.keyid} if online_signer else set())

    def still_valid(targets_md):
        result = md.targets_verification(production_root, targets_md)
        return result.verified and (production_threshold < 2 or any(k not in online_keyids for k in result.signed))

    baseline = md.parse(repository.baseline_targets, Targets, "the baseline targets")

    def targets_document(name, kind, tag, data):
        data = bytes(data)
        sibling = siblings.targets_sibling(factory_id=factory.id, keyring=keyring, tuf_bytes=data, required=True)
        signed = data
        if online_signer is not None:
            signed, sibling = _resigned_targets(data, sibling, signer=online_signer, dropped=set(retire_keyids))
        return {"name": name, "kind": kind, "tag": tag, "data": _b64(signed), "source_hash": md.sha256(data), "aktualizr_data": _b64(sibling)}

    if not still_valid(baseline):
        documents.append(targets_document("baseline-targets", "baseline", "", repository.baseline_targets))
    for view in TufView.objects.filter(factory=factory, kind=TufView.Kind.PRODUCTION, baseline=False).order_by("tag"):
        if not still_valid(md.parse(view.targets, Targets)):
            documents.append(targets_document(f"production-targets:{view.tag}", "production", view.tag, view.targets))
    for view in TufView.objects.filter(factory=factory, kind=TufView.Kind.WAVE).select_related("wave"):
        if not still_valid(md.parse(view.targets, Targets)):
            # A wave's targets were signed with its offline keys at init and are served as they
            # were signed; the server does not re-sign them behind their signers' backs.
            raise Conflict(f"Wave {view.wave.name} is active with fewer signatures than the new root requires; complete or cancel it first")
    change = TufRootChange.objects.create(
        factory=factory,
        action=action,
        details={**(details or {}), "production_threshold": production_threshold, "retire_keyids": list(retire_keyids)},
        base_root_version=repository.root_version,
        documents=documents,
        new_key=(new_key.to_dict() | {"keyid": new_key.keyid} | ({"private_encrypted": new_private} if new_private else {})) if new_key is not None else None,
        created_by=actor,
    )
    audit_record(factory=factory, actor=actor, action=f"tuf.{action}", target=f"root v{version}", details=change.details)
    if _root_change_complete(change, repository):
        _root_change_apply(change, repository, actor)
    return change


def _root_change_complete(change, repository):
    return all(not document_missing(change, d) and not document_aktualizr_missing(change, d) for d in change.documents)


def _root_change_apply(change, repository, actor):
    factory = repository.factory
    if repository.root_version != change.base_root_version:
        raise Conflict("The root changed since this key change began; abandon it and start again")
    now = timezone.now()
    targets_docs = [d for d in change.documents if d["kind"] in ("baseline", "production")]
    for document in targets_docs:
        if document["kind"] == "baseline":
            current = md.sha256(bytes(repository.baseline_targets))
        else:
            current = TufView.objects.filter(factory=factory, kind=TufView.Kind.PRODUCTION, tag=document["tag"]).values_list("targets_hash", flat=True).first()
        if current != document["source_hash"]:
            raise Conflict("Production targets changed since this key change began; abandon it and start again")
    version = repository.root_version + 1
    for document in change.documents:
        if document["kind"].startswith("root-"):
            root = document_md(document)
            TufRoot.objects.create(
                factory=factory, channel=document["kind"][len("root-"):], version=version, data=document_bytes(document),
                aktualizr_data=document_aktualizr_bytes(document), expires_at=root.signed.expires,
            )
    if change.new_key:
        key_data = dict(change.new_key)
        keyid = key_data.pop("keyid")
        # An online key rotation carries the new key's encrypted private half until it applies;
        # from here the key's row holds it and the change keeps the public half only.
        private = key_data.pop("private_encrypted", None)
        TufKey.objects.create(
            factory=factory, role=change.details["role"], keyid=keyid, public=key_data, online=private is not None,
            private_encrypted=base64.b64decode(private) if private else None, created_by=change.created_by,
        )  # fmt: skip
        change.new_key = {"keyid": keyid, **key_data}
    retire = change.details.get("retire_keyids", [])
    if retire:
        # The server forgets retired private keys: root signing is now the user's alone.
        TufKey.objects.filter(factory=factory, keyid__in=retire).update(retired_at=now, private_encrypted=None)
    production_root = document_md(next(d for d in change.documents if d["kind"] == "root-production")).signed
    keyring = Keyring(factory.id)
    repository.root_version = version
    repository.root_expires_at = production_root.expires
    repository.root_online = bool(set(production_root.roles["root"].keyids) & keyring.online_keyids())
    repository.production_targets_threshold = production_root.roles["targets"].threshold
    for document in targets_docs:
        data = document_bytes(document)
        siblings.targets_sibling_store(factory_id=factory.id, data=document_aktualizr_bytes(document))
        if document["kind"] == "baseline":
            repository.baseline_targets = data
            for view in TufView.objects.select_for_update().filter(factory=factory, kind=TufView.Kind.PRODUCTION, baseline=True):
                view_set_targets(view, data, keyring=keyring)
                view.save(update_fields=VIEW_FIELDS)
        else:
            view = TufView.objects.select_for_update().get(factory=factory, kind=TufView.Kind.PRODUCTION, tag=document["tag"])
            view_set_targets(view, data, keyring=keyring)
            view.save(update_fields=VIEW_FIELDS)
    repository.save()
    rotated = change.details.get("online_role")
    if targets_docs or rotated:
        # New snapshots and timestamps, at higher versions, signed by today's online keys.
        for anchor in TufView.objects.select_for_update().filter(factory=factory, kind=TufView.Kind.PRODUCTION).order_by("tag"):
            tag_resign(anchor, keyring, now)
    if rotated:
        ci = TufView.objects.select_for_update().get(factory=factory, kind=TufView.Kind.CI)
        if rotated == "targets":
            ci_targets_sign(ci, keyring, now, version=ci.targets_version + 1)
        view_sign(ci, keyring, version=next_version(ci, now), now=now)
        ci.save(update_fields=VIEW_FIELDS)
    change.status = TufRootChange.Status.APPLIED
    change.finished_at = now
    change.save(update_fields=["status", "finished_at", "documents", "new_key"])
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
        raise ApplicationError(f"Role must be one of {', '.join(tuf_keys.OFFLINE_ROLES)}, not {str(role)[:20]!r}")
    key = tuf_keys.public_key_parse(public_key)
    with transaction.atomic():
        repository = _repository_locked(factory)
        if TufKey.objects.filter(factory=factory, keyid=key.keyid).exists():
            raise Conflict(f"Key {key.keyid} is already known to this factory")
        keyring = Keyring(factory.id)
        keysets = keyring.keysets()
        offline_targets = len(offline_targets_keyids(keyring))
        production_threshold = repository.production_targets_threshold
        retire = []
        if role == "targets":
            keysets["targets"] = keysets["targets"] + [key]
            wanted = threshold if threshold is not None else max(production_threshold, 2)
            try:
                wanted = int(wanted)
            except (TypeError, ValueError):
                raise ApplicationError(f"Threshold {str(threshold)[:20]!r} is not a whole number") from None
            if not 2 <= wanted <= offline_targets + 2:
                raise ApplicationError(f"The production targets threshold must be between 2 and {offline_targets + 2} (the targets keys)")
            production_threshold = wanted
        else:
            if threshold is not None:
                raise ApplicationError("A threshold applies to targets keys only")
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
            raise NotFound(f"Key {keyid} is not an offline key of this factory")
        if len(rows) > 1:
            raise ApplicationError(f"More than one offline key starts with {keyid}; give more of the key id")
        [row] = rows
        if row.role != "targets":
            raise ApplicationError("The root key is replaced, not removed: add the new root key instead")
        keyring = Keyring(factory.id)
        remaining = len(offline_targets_keyids(keyring)) - 1
        if remaining < 1:
            raise ApplicationError("This is the factory's only offline targets key; add another one before removing it")
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


def online_key_rotate(*, factory, actor, role):
    """Replace the online key of `role` (targets, snapshot or timestamp) with a new one the
    server generates: new CI and production roots that trust the new key instead of the old.

    The root key signs the new roots (TUF: the previous root's threshold and the new one's; the
    root keys stay, so one set of root signatures meets both). With the root key online the
    change applies at once; with it offline it waits for `root_change_sign`. On applying, the
    old key is retired (its private half forgotten) and every view is re-signed with the new
    key at higher versions; production targets are re-signed by the new targets key beside
    their offline signatures, so no offline targets key is needed. A targets rotation is refused
    while a wave is active (its offline-signed targets would lose the online signature); the waves
    layer refuses it too while a wave waits for its offline signatures or a rollback is armed.
    """
    authorize(user=actor, factory=factory, action="keys.manage")
    if role not in tuf_keys.ONLINE_ROLES:
        raise ApplicationError(f"Role must be one of {', '.join(tuf_keys.ONLINE_ROLES)}, not {str(role)[:20]!r}")
    with transaction.atomic():
        repository = _repository_locked(factory)
        # The layers above refuse here what they keep signed with the key (see factory.tuf.signals).
        online_key_rotating.send(sender=None, factory=factory, role=role)
        keyring = Keyring(factory.id)
        old = [row for row in keyring.rows if row.role == role and row.online]
        if not old:
            raise ApplicationError(f"The factory has no online {role} key to rotate")
        signer = tuf_keys.key_generate()
        keysets = keyring.keysets()
        old_keyids = {row.keyid for row in old}
        keysets[role] = [key for key in keysets[role] if key.keyid not in old_keyids] + [signer.public_key]
        change = _root_change_begin(
            repository=repository,
            actor=actor,
            action=f"key.rotate.{role}",
            keysets=keysets,
            production_threshold=repository.production_targets_threshold,
            new_key=signer.public_key,
            retire_keyids=sorted(old_keyids),
            details={"role": role, "online_role": role, "keyid": signer.public_key.keyid, "old_keyids": sorted(old_keyids)},
            online_signer=signer if role == "targets" else None,
            new_private=_b64(private_encrypt(signer)),
        )
        return change


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
        raise ApplicationError("Give at least one signature")
    with transaction.atomic():
        repository = _repository_locked(factory)
        change = TufRootChange.objects.select_for_update().filter(factory=factory, status=TufRootChange.Status.PENDING).first()
        if change is None:
            raise NotFound("No key change is waiting for signatures")
        by_name = {d["name"]: d for d in change.documents}
        names = [n for d in change.documents for n in (d["name"], d["name"] + AKTUALIZR_SUFFIX)]
        grouped = {}
        for value in signatures:
            name = value.get("document") if isinstance(value, dict) else None
            if name not in names:
                raise ApplicationError(f"Signature for unknown document {str(name)[:80]!r}; expected one of {', '.join(names)}")
            grouped.setdefault(name, []).append(value)
        updated, updated_aktualizr = {}, {}
        for name, values in grouped.items():
            base = name.removesuffix(AKTUALIZR_SUFFIX)
            document = by_name[base]
            allowed = document_signers(change, document, repository)
            if name != base:
                # The same keys sign the aktualizr sibling's own payload.
                data = document_aktualizr_bytes(document)
                payload = ak.payload(ak.parse(data)[0])
                verified = signatures_verified(key_for=allowed.get, payload=payload, signatures=values, what=name)
                signed = [ak.signature(s.keyid, bytes.fromhex(s.signature)) for s in verified]
                updated_aktualizr[base] = _b64(ak.signatures_add(data, signed))
                continue
            metadata = document_md(document)
            verified = signatures_verified(key_for=allowed.get, payload=metadata.signed_bytes, signatures=values, what=name)
            md.signatures_merge(metadata, verified)
            updated[name] = _b64(md.to_bytes(metadata))
        for document in change.documents:
            if document["name"] in updated:
                document["data"] = updated[document["name"]]
            if document["name"] in updated_aktualizr:
                document["aktualizr_data"] = updated_aktualizr[document["name"]]
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
    authorize(user=actor, factory=factory, action="keys.manage")
    change = TufRootChange.objects.filter(factory=factory, status=TufRootChange.Status.PENDING).first()
    if change is None:
        raise NotFound("No key change is waiting for signatures")
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
        raise ApplicationError("None of the keys in this archive can add a signature the pending change still needs", code="key_archive")
    return root_change_sign(factory=factory, actor=actor, signatures=signatures)


def root_change_abandon(*, factory, actor):
    authorize(user=actor, factory=factory, action="keys.manage")
    with transaction.atomic():
        change = TufRootChange.objects.select_for_update().filter(factory=factory, status=TufRootChange.Status.PENDING).first()
        if change is None:
            raise NotFound("No key change is waiting for signatures")
        change.status, change.finished_at = TufRootChange.Status.ABANDONED, timezone.now()
        if change.new_key:
            # An abandoned online key rotation's new private key is never needed again.
            change.new_key = {k: v for k, v in change.new_key.items() if k != "private_encrypted"}
        change.save(update_fields=["status", "finished_at", "new_key"])
        audit_record(factory=factory, actor=actor, action="tuf.root.abandon", target="")


def offline_key_generate(*, factory, actor, role="targets", threshold=None):
    """Generate an offline key here, register it, sign what it must sign, return its .tgz archive.

    The same steps the CLI takes on the user's machine, for the demo and for operators working
    on the server. The private key is only in the returned archive, never in the database.
    """
    signer = tuf_keys.key_generate()
    change = offline_key_add(factory=factory, actor=actor, role=role, public_key=signer.public_key.to_dict(), threshold=threshold)
    if change.status == TufRootChange.Status.PENDING:
        signatures = []
        for payload in root_change_payloads(change=change):
            if signer.public_key.keyid in payload["keyids"]:
                signatures.append({"document": payload["document"], **tuf_keys.payload_sign(signer, base64.b64decode(payload["payload"]))})
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
