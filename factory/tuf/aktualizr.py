"""The libaktualizr flavour of each TUF document (what aktualizr-lite verifies), without Django.

Every TUF 1.0 document Breakwater signs has a sibling in this flavour with the same signed content
(version, expires, targets, meta, keys, roles), signed by the same keys at the same version:
`_type` capitalised, keys in libaktualizr's JSON form, signatures `{"keyid", "method", "sig"}`
with a base64 `sig`, snapshot and timestamp meta describing the siblings. A sibling is served as
its canonical JSON, so a hash over the served bytes equals the hash libaktualizr takes over the
canonical form of what it parsed.
"""
import base64
import binascii
import copy
import hashlib
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from factory.errors import ApplicationError

TYPES = {"root": "Root", "targets": "Targets", "snapshot": "Snapshot", "timestamp": "Timestamp"}
METHOD = "ed25519"
KEYTYPE = "ED25519"
MAX_SIGNATURES = 64


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# --- canonical JSON, as libaktualizr writes it (jsoncpp, no indentation, keys sorted) ---------


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(text):
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif code < 0x20:
            out.append(f"\\u{code:04x}")
        elif code < 0x80:
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    out.append('"')
    return "".join(out)


def _encode(value, out):
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        # jsoncpp orders members by their UTF-8 bytes, which is the order of their code points.
        for index, key in enumerate(sorted(value)):
            if not isinstance(key, str):
                raise ApplicationError("Canonical JSON object keys must be text")
            if index:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    else:
        raise ApplicationError(f"Canonical JSON has no {type(value).__name__} values (only text, integers, true/false, null)")


def canonical(value):
    """The canonical JSON bytes of `value` (ASCII: other characters are \\u escapes)."""
    out = []
    _encode(value, out)
    return "".join(out).encode("ascii")


# --- keys ------------------------------------------------------------------------------------


def key_json(tuf_key):
    """libaktualizr's form of a TUF ed25519 key dict ({"keytype", "scheme", "keyval": {"public"}})."""
    public = (tuf_key.get("keyval") or {}).get("public") if isinstance(tuf_key, dict) else None
    if not isinstance(tuf_key, dict) or tuf_key.get("keytype") != "ed25519" or not isinstance(public, str):
        raise ApplicationError("Only ed25519 keys have a libaktualizr form here")
    return {"keytype": KEYTYPE, "keyval": {"public": public}}


def keyid_of(tuf_keyid, tuf_key=None):
    """The key id a key has in this flavour: the TUF key id (the same key under the same id, so
    a signature's keyid names one key in both flavours)."""
    return tuf_keyid


# --- documents -------------------------------------------------------------------------------


def signed_from_tuf(tuf_signed):
    """The signed content of the sibling of a TUF document's `signed` dict (snapshot and
    timestamp still describe TUF files: see `meta_describe`)."""
    signed = copy.deepcopy(tuf_signed)
    kind = str(signed.get("_type", "")).lower()
    if kind not in TYPES:
        raise ApplicationError(f"{str(signed.get('_type'))[:20]!r} is not a TUF role")
    signed["_type"] = TYPES[kind]
    if kind == "root":
        signed["keys"] = {keyid_of(keyid, key): key_json(key) for keyid, key in (signed.get("keys") or {}).items()}
        for role in (signed.get("roles") or {}).values():
            role["keyids"] = [keyid_of(keyid) for keyid in role.get("keyids", [])]
    return signed


def meta_describe(signed, filename, data):
    """Point a snapshot's or timestamp's meta[`filename`] at the sibling bytes `data`."""
    entry = dict(signed["meta"][filename])
    entry["length"] = len(data)
    entry["hashes"] = {"sha256": sha256(data)}
    signed["meta"][filename] = entry
    return signed


def tuf_signed(tuf_bytes):
    """The `signed` dict of a TUF document's bytes."""
    try:
        return json.loads(bytes(tuf_bytes))["signed"]
    except (ValueError, KeyError, TypeError):
        raise ApplicationError("The TUF document is not valid JSON metadata") from None


def sibling_signed(tuf_bytes, *, described=None):
    """The sibling's signed content of TUF document `tuf_bytes`; for a snapshot `described` is
    the aktualizr targets bytes, for a timestamp the aktualizr snapshot bytes."""
    signed = signed_from_tuf(tuf_signed(tuf_bytes))
    if signed["_type"] == "Snapshot":
        meta_describe(signed, "targets.json", described)
    elif signed["_type"] == "Timestamp":
        meta_describe(signed, "snapshot.json", described)
    return signed


def payload(signed):
    """The bytes a signature in this flavour is made over: the canonical JSON of `signed`."""
    return canonical(signed)


def signature(keyid, raw):
    return {"keyid": keyid, "method": METHOD, "sig": base64.b64encode(raw).decode()}


def sign(signer, signed):
    """A signature over `signed` by a securesystemslib signer (its hex signature re-encoded)."""
    return signature(keyid_of(signer.public_key.keyid), bytes.fromhex(signer.sign(payload(signed)).signature))


def document(signed, signatures):
    """The served bytes: canonical JSON of {"signatures", "signed"}, one signature per key id."""
    by_keyid = {}
    for value in signatures:
        by_keyid[value["keyid"]] = value
    return canonical({"signatures": [by_keyid[k] for k in sorted(by_keyid)], "signed": signed})


def document_signed(signed, signers):
    return document(signed, [sign(signer, signed) for signer in signers])


def parse(data):
    """(signed, signatures) of a sibling's bytes."""
    try:
        value = json.loads(bytes(data))
        signed, signatures = value["signed"], value["signatures"]
    except (ValueError, KeyError, TypeError):
        raise ApplicationError("The aktualizr-flavour document is not valid JSON metadata") from None
    if not isinstance(signed, dict) or not isinstance(signatures, list):
        raise ApplicationError("The aktualizr-flavour document is not valid JSON metadata")
    return signed, signatures


def signatures_add(data, signatures):
    """`data` with `signatures` added (a key's new signature replaces its old one)."""
    signed, current = parse(data)
    return document(signed, list(current) + list(signatures))


# --- verification ----------------------------------------------------------------------------


def verify(key, message, value):
    """Does signature dict `value` by libaktualizr-form `key` verify over `message`?"""
    if not isinstance(value, dict) or value.get("method") != METHOD or not isinstance(value.get("sig"), str):
        return False
    try:
        raw = base64.b64decode(value["sig"], validate=True)
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key["keyval"]["public"]))
        public.verify(raw, message)
    except (binascii.Error, ValueError, KeyError, TypeError, InvalidSignature):
        return False
    return True


def signed_by(root_signed, role, data):
    """(key ids of `role` in `root_signed` whose signatures on `data` verify, the role's threshold)."""
    signed, signatures = parse(data)
    role_def = root_signed["roles"][role]
    message = payload(signed)
    good = set()
    for value in signatures[:MAX_SIGNATURES]:
        keyid = value.get("keyid") if isinstance(value, dict) else None
        if keyid in role_def["keyids"] and keyid in root_signed["keys"] and verify(root_signed["keys"][keyid], message, value):
            good.add(keyid)
    return good, int(role_def["threshold"])


def threshold_met(root_signed, role, data):
    good, threshold = signed_by(root_signed, role, data)
    return len(good) >= threshold
