"""A client-side verifier of the libaktualizr metadata flavour, written from libaktualizr's rules
(/work/notes/aklite-protocol.md, section a), independent of factory/tuf/aktualizr.py.

`AktualizrClient.refresh(fetch)` does what aktualizr-lite's image repository update does: root 1 on
trust on first use, then N+1.root.json until a fetch fails, then timestamp, snapshot, targets, each
checked for its exact `_type`, signatures (`method` ed25519, standard base64 `sig`, unique key ids,
threshold of the root's role), expiry format, the hashes of the canonical re-serialisation, the
versions the parent file names, and no rollback. Any violation raises AktualizrRefused.
"""
import base64
import binascii
import hashlib
import json
import re
from datetime import datetime, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TYPES = {"root": "Root", "targets": "Targets", "snapshot": "Snapshot", "timestamp": "Timestamp"}
METHODS = {"ed25519", "rsassa-pss", "rsassa-pss-sha256"}
EXPIRES_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


class AktualizrRefused(Exception):
    pass


class FetchFailed(Exception):
    """The fetch callable raises this for a non-2xx answer."""


def canonical(value):
    """jsoncpp's compact writer (as libaktualizr uses it), for ASCII-escaped, integer-only JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _parse(raw, role):
    try:
        document = json.loads(raw)
        signed, signatures = document["signed"], document["signatures"]
    except (ValueError, KeyError, TypeError):
        raise AktualizrRefused(f"{role}: not a signed document") from None
    if role == "root":
        if str(signed.get("_type", "")).lower() != "root":
            raise AktualizrRefused(f"root: _type {signed.get('_type')!r}")
    elif signed.get("_type") != TYPES[role]:
        raise AktualizrRefused(f"{role}: _type must be exactly {TYPES[role]!r}, not {signed.get('_type')!r}")
    if not isinstance(signed.get("version"), int):
        raise AktualizrRefused(f"{role}: version is not an integer")
    if not isinstance(signed.get("expires"), str) or not EXPIRES_RE.match(signed["expires"]):
        raise AktualizrRefused(f"{role}: invalid expires {signed.get('expires')!r}")
    return document, signed, signatures


def _verify(root_signed, role, signed, signatures, what):
    """Raise unless a threshold of `role`'s keys in `root_signed` signed `signed`."""
    keys, role_def = root_signed["keys"], root_signed["roles"].get(role)
    if role_def is None:
        raise AktualizrRefused(f"{what}: root has no {role} role")
    threshold = role_def["threshold"]
    if not isinstance(threshold, int) or not 1 <= threshold <= 1000:
        raise AktualizrRefused(f"{what}: illegal threshold {threshold!r}")
    message = canonical(signed)
    seen, valid = set(), 0
    for signature in signatures:
        method = str(signature.get("method", "")).lower()
        if method not in METHODS:
            raise AktualizrRefused(f"{what}: Unsupported sign method {signature.get('method')!r}")
        keyid = signature.get("keyid")
        if keyid in seen:
            raise AktualizrRefused(f"{what}: non-unique signatures")
        seen.add(keyid)
        if keyid not in keys or keyid not in role_def["keyids"]:
            continue
        key = keys[keyid]
        if str(key.get("keytype", "")).lower() != "ed25519":
            raise AktualizrRefused(f"{what}: unsupported key type {key.get('keytype')!r}")
        try:
            raw = base64.b64decode(signature["sig"], validate=True)
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key["keyval"]["public"])).verify(raw, message)
        except (binascii.Error, ValueError, KeyError, TypeError, InvalidSignature):
            continue
        valid += 1
    if valid < threshold:
        raise AktualizrRefused(f"{what}: {valid} valid signature(s), threshold {threshold}")


def _expired(signed, now):
    return signed["expires"] < now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _hashes_match(meta, raw, what, required):
    hashes = meta.get("hashes")
    if not hashes:
        if required:
            raise AktualizrRefused(f"{what}: no hash found")
        return
    # Over the canonical re-serialisation of the whole document, not the bytes received.
    text = canonical(json.loads(raw))
    if "sha256" in hashes and hashlib.sha256(text).hexdigest() != hashes["sha256"]:
        raise AktualizrRefused(f"{what}: sha256 does not match")


class AktualizrClient:
    """Trusted state across refreshes, as aktualizr-lite keeps it in its sqlite database."""

    def __init__(self):
        self.root = None  # signed dict of the trusted root
        self.timestamp = self.snapshot = self.targets = None
        self.raw = {}

    def versions(self):
        return {
            role: (getattr(self, role) or {}).get("version")
            for role in ("root", "timestamp", "snapshot", "targets")
        }

    def _root_update(self, fetch):
        if self.root is None:
            _, signed, signatures = _parse(fetch("1.root.json"), "root")
            _verify(signed, "root", signed, signatures, "1.root.json")
            self.root = signed
        while True:
            name = f"{self.root['version'] + 1}.root.json"
            try:
                raw = fetch(name)
            except FetchFailed:
                break
            _, signed, signatures = _parse(raw, "root")
            _verify(self.root, "root", signed, signatures, f"{name} (by the old root)")
            _verify(signed, "root", signed, signatures, f"{name} (by itself)")
            if signed["version"] != self.root["version"] + 1:
                raise AktualizrRefused(f"{name}: root rotation to version {signed['version']}")
            self.root = signed
            self.timestamp = self.snapshot = self.targets = None

    def refresh(self, fetch, now=None):
        """Update from `fetch(filename) -> bytes`; returns the trusted targets' `targets` dict."""
        now = now or datetime.now(timezone.utc)
        self._root_update(fetch)
        if _expired(self.root, now):
            raise AktualizrRefused("root expired")
        raw = fetch("timestamp.json")
        _, timestamp, signatures = _parse(raw, "timestamp")
        _verify(self.root, "timestamp", timestamp, signatures, "timestamp.json")
        meta = (timestamp.get("meta") or {}).get("snapshot.json")
        if not isinstance(meta, dict) or not isinstance(meta.get("hashes"), dict) or not isinstance(meta.get("length"), int) or not isinstance(meta.get("version"), int):
            raise AktualizrRefused("invalid timestamp.json: meta snapshot.json needs hashes, length and version")
        if self.timestamp is not None and self.timestamp["version"] > timestamp["version"]:
            raise AktualizrRefused("timestamp: Rollback attempt")
        self.timestamp = timestamp
        if _expired(timestamp, now):
            raise AktualizrRefused("timestamp expired")

        raw = fetch("snapshot.json")
        _hashes_match(meta, raw, "snapshot.json", required=True)
        _, snapshot, signatures = _parse(raw, "snapshot")
        _verify(self.root, "snapshot", snapshot, signatures, "snapshot.json")
        if snapshot["version"] != meta["version"]:
            raise AktualizrRefused("snapshot: VersionMismatch")
        if self.snapshot is not None and self.snapshot["version"] > snapshot["version"]:
            raise AktualizrRefused("snapshot: Rollback attempt")
        if not all(isinstance(m, dict) and isinstance(m.get("version"), int) for m in (snapshot.get("meta") or {}).values()):
            raise AktualizrRefused("snapshot: every meta entry needs an integer version")
        self.snapshot = snapshot
        if _expired(snapshot, now):
            raise AktualizrRefused("snapshot expired")

        raw = fetch("targets.json")
        targets_meta = (snapshot.get("meta") or {}).get("targets.json") or {}
        _hashes_match(targets_meta, raw, "targets.json", required=False)
        _, targets, signatures = _parse(raw, "targets")
        _verify(self.root, "targets", targets, signatures, "targets.json")
        if targets["version"] != targets_meta.get("version", -1):
            raise AktualizrRefused("targets: VersionMismatch")
        if self.targets is not None and self.targets["version"] > targets["version"]:
            raise AktualizrRefused("targets: Rollback attempt")
        self.targets = targets
        if _expired(targets, now):
            raise AktualizrRefused("targets expired")
        return targets["targets"]
