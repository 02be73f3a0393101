"""Building, parsing and checking TUF metadata with python-tuf's Metadata API (no database).

Everything here speaks standard TUF: the bytes these functions return are what devices'
TUF clients download and verify.
"""
import hashlib
import logging
from datetime import datetime, timezone

from securesystemslib.signer import Signature
from tuf.api.metadata import MetaFile, Metadata, Role, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from factory.errors import ApplicationError

# python-tuf logs every key that has not signed at INFO; a partly signed wave or root change is
# normal here, so those lines would only bury real messages.
logging.getLogger("tuf.api._payload").setLevel(logging.WARNING)

# Compact JSON keeps large targets files small; the signatures cover the canonical form anyway.
SERIALIZER = JSONSerializer(compact=True)
ROLE_NAMES = ("root", "targets", "snapshot", "timestamp")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def _expiry(value):
    # TUF expiry strings carry whole seconds in UTC.
    return value.astimezone(timezone.utc).replace(microsecond=0)


def to_bytes(metadata):
    return metadata.to_bytes(SERIALIZER)


def parse(data, expected_type, what="metadata"):
    """Metadata of `expected_type` (Root, Targets, ...) from bytes, or an ApplicationError."""
    try:
        metadata = Metadata.from_bytes(bytes(data))
    except (DeserializationError, ValueError, KeyError, TypeError):
        raise ApplicationError(f"Not valid TUF metadata: {what}") from None
    if not isinstance(metadata.signed, expected_type):
        raise ApplicationError(f"Not {expected_type.type} metadata: {what} is {metadata.signed.type} metadata")
    return metadata


def signing_payload(data, expected_type=Targets, what="metadata"):
    """The canonical bytes that signatures over this metadata are made on."""
    return parse(data, expected_type, what).signed_bytes


# --- roots -----------------------------------------------------------------------------------


def root_build(*, keys, targets_threshold, version, expires):
    """An unsigned root: `keys` maps each role to its list of Key; thresholds are 1 but targets'."""
    root = Root(version=version, expires=_expiry(expires), consistent_snapshot=False)
    for role in ROLE_NAMES:
        root.roles[role] = Role([], 1)
        for key in keys[role]:
            root.add_key(key, role)
    root.roles["targets"].threshold = targets_threshold
    return Metadata(root)


def root_verification(new_root_md, previous_root):
    """Is `new_root_md` signed by the threshold of both its own and the previous root's keys?"""
    return new_root_md.signed.get_root_verification_result(previous_root, new_root_md.signed_bytes, new_root_md.signatures)


# --- targets ---------------------------------------------------------------------------------


def target_file(*, name, sha256_hex, length, custom):
    return TargetFile(length=int(length), hashes={"sha256": sha256_hex}, path=name, unrecognized_fields={"custom": custom})


def targets_build(*, target_files, version, expires):
    targets = Targets(version=version, expires=_expiry(expires))
    for target in target_files:
        targets.targets[target.path] = target
    return Metadata(targets)



def target_version(target):
    """The build number of a target, from custom.version (a string, as CI writes it)."""
    custom = target.custom if isinstance(target.custom, dict) else {}
    try:
        return int(custom.get("version"))
    except (TypeError, ValueError):
        return None


def content_source(path, custom):
    """(target name, build version) whose content the target `path` with `custom` carries: its
    own, or for a re-release the original build's (a re-release of a re-release names the first)."""
    origin = custom.get("rerelease_of") if isinstance(custom, dict) else None
    if isinstance(origin, dict) and isinstance(origin.get("target"), str):
        try:
            return origin["target"], int(origin.get("version"))
        except (TypeError, ValueError):
            pass
    try:
        return path, int((custom or {}).get("version"))
    except (TypeError, ValueError, AttributeError):
        return path, None


def targets_verification(root, targets_md):
    return root.get_verification_result("targets", targets_md.signed_bytes, targets_md.signatures)


def signatures_merge(metadata, signatures):
    """Append Signature objects (Metadata.sign's append semantics: one per key id)."""
    for signature in signatures:
        metadata.signatures[signature.keyid] = Signature(signature.keyid, signature.signature)
    return metadata


# --- snapshot and timestamp ------------------------------------------------------------------


def snapshot_build(*, targets_bytes, targets_version, version, expires):
    # Hashes, not only versions: a device that cached other targets of the same version (a
    # canceled wave's, or ones re-signed by another key) must notice and download the new ones.
    meta = MetaFile(version=targets_version, length=len(targets_bytes), hashes={"sha256": sha256(targets_bytes)})
    return Metadata(Snapshot(version=version, expires=_expiry(expires), meta={"targets.json": meta}))


def timestamp_build(*, snapshot_bytes, version, expires):
    meta = MetaFile(version=version, length=len(snapshot_bytes), hashes={"sha256": sha256(snapshot_bytes)})
    return Metadata(Timestamp(version=version, expires=_expiry(expires), snapshot_meta=meta))


def expires_of(metadata):
    return metadata.signed.expires


def is_expired(metadata, now=None):
    return metadata.signed.is_expired(now or datetime.now(timezone.utc))

