"""TUF keys: ed25519 generation, the .tgz key archive, signing payloads.

Pure functions, shared by the server and the CLI. The archive holds
`tufrepo/keys/<role>-<keyid>.pub` and `.sec` JSON files (the layout fioctl uses). Private key
material never enters an exception message or a log line from here.
"""
import hashlib
import io
import json
import re
import tarfile
import time
import zlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat, load_pem_private_key
from securesystemslib.exceptions import FormatError, UnverifiedSignatureError
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, Key, Signature, SSlibKey

from factory.errors import ApplicationError

ROLES = ("root", "targets", "snapshot", "timestamp")
OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("targets", "snapshot", "timestamp")  # keys only the server holds (the root key may be online too)
KEYID_RE = re.compile(r"^[0-9a-f]{64}$")
HEX_RE = re.compile(r"^[0-9a-f]+$")
MEMBER_RE = re.compile(r"^tufrepo/keys/(root|targets|snapshot|timestamp)-([0-9a-f]{64})\.(pub|sec)$")
DIRECTORIES = {"tufrepo", "tufrepo/keys"}

# A real archive holds a handful of tiny JSON files: anything much bigger is not one.
ARCHIVE_MAX_BYTES = 256 * 1024
ARCHIVE_MAX_UNPACKED_BYTES = 1024 * 1024
ARCHIVE_MAX_MEMBERS = 64
MEMBER_MAX_BYTES = 16 * 1024
# pax and GNU long-name headers: a few hundred bytes of long names or macOS extended attributes.
EXTENDED_HEADER_MAX_BYTES = 4 * 1024
EXTENDED_HEADERS_MAX_BYTES = 32 * 1024
EXTENDED_HEADERS_IN_A_ROW = 4
TAR_BLOCK = 512
PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
EXTENDED_TYPES = PAX_TYPES + (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


# --- keys ------------------------------------------------------------------------------------


def key_generate():
    """A new ed25519 signer; its `public_key` is the TUF key, with the default keyid."""
    return CryptoSigner.generate_ed25519()


def public_key_parse(value):
    """A TUF public key from a key dict, its JSON text or bytes (the .pub file's content).

    Only ed25519 keys are accepted: they are what `keys rotate-offline-key` generates.
    """
    if isinstance(value, Key):
        return _ed25519_only(value)
    if isinstance(value, (bytes, str)):
        try:
            value = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            raise ApplicationError("The public key is not JSON (expected the content of a .pub file)") from None
    if not isinstance(value, dict):
        raise ApplicationError("The public key must be a TUF key object with keytype, scheme and keyval")
    data = {k: value[k] for k in ("keytype", "scheme", "keyval") if k in value}
    try:
        key = SSlibKey.from_dict(_default_keyid(data), dict(data))
    except (KeyError, TypeError, ValueError):
        raise ApplicationError("The public key must be a TUF key object with keytype, scheme and keyval") from None
    return _ed25519_only(key)


def _ed25519_only(key):
    public = key.keyval.get("public", "") if isinstance(key.keyval, dict) else ""
    if key.keytype != "ed25519" or key.scheme != "ed25519" or not isinstance(public, str) or not HEX_RE.match(public) or len(public) != 64:
        raise ApplicationError("Only ed25519 public keys (64 hex characters) are accepted")
    if key.keyid != _default_keyid(key.to_dict()):
        raise ApplicationError("The key id does not match the key")
    return key


def _default_keyid(data):
    """TUF's default key id: SHA-256 of the canonical JSON of keytype, scheme and keyval."""
    try:
        canonical = encode_canonical({"keytype": data["keytype"], "scheme": data["scheme"], "keyval": data["keyval"]})
    except (KeyError, TypeError, ValueError, FormatError):
        raise ApplicationError("The public key must be a TUF key object with keytype, scheme and keyval") from None
    return hashlib.sha256(canonical.encode()).hexdigest()


def public_key_json(key):
    """The .pub file content: the key dict without its id (the id is derived from it)."""
    return json.dumps(key.to_dict(), sort_keys=True, indent=1).encode()


def signer_from_pem(pem, public_key=None):
    private = load_pem_private_key(pem, password=None)
    return CryptoSigner(private, public_key)


def signer_private_pem(signer):
    return signer.private_bytes


def _secret_json(signer):
    # go-tuf's layout: the 64-byte ed25519 private key (seed || public), hex encoded.
    private = load_pem_private_key(signer.private_bytes, password=None)
    seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    data = {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": public.hex(), "private": (seed + public).hex()}}
    return json.dumps(data, sort_keys=True, indent=1).encode()


def _signer_from_secret_json(raw, expected_keyid, name):
    try:
        data = json.loads(raw)
        keyval = data["keyval"]
        private_hex = keyval["private"]
        if data.get("keytype") != "ed25519" or not isinstance(private_hex, str) or not HEX_RE.match(private_hex):
            raise ValueError
        private_raw = bytes.fromhex(private_hex)
        if len(private_raw) not in (32, 64):
            raise ValueError
        private = Ed25519PrivateKey.from_private_bytes(private_raw[:32])
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested thousands deep
        raise ApplicationError(f"{name} is not an ed25519 private key file") from None
    public = SSlibKey.from_crypto(private.public_key(), scheme="ed25519")
    if public.keyid != expected_keyid:
        raise ApplicationError(f"{name} holds a key whose id does not match its file name")
    if len(private_raw) == 64 and private_raw[32:].hex() != public.keyval["public"]:
        raise ApplicationError(f"{name} holds a private key that does not match its public half")
    return CryptoSigner(private, public)


# --- signatures ------------------------------------------------------------------------------


def payload_sign(signer, payload):
    """{"keyid", "sig"} over `payload`, the form the server accepts."""
    signature = signer.sign(payload)
    return {"keyid": signature.keyid, "sig": signature.signature}


def signature_parse(value):
    """A securesystemslib Signature from {"keyid", "sig"}, checked for shape only."""
    if not isinstance(value, dict):
        raise ApplicationError("Each signature must be an object with keyid and sig")
    keyid, sig = value.get("keyid"), value.get("sig")
    if not isinstance(keyid, str) or not KEYID_RE.match(keyid):
        raise ApplicationError(f"Signature key id {str(keyid)[:70]!r} is not 64 lowercase hex characters")
    if not isinstance(sig, str) or not HEX_RE.match(sig) or len(sig) > 1024 or len(sig) % 2:
        raise ApplicationError(f"The signature by key {keyid} is not hex")
    return Signature(keyid, sig)


def signature_verify(key, signature, payload):
    try:
        key.verify_signature(signature, payload)
    except UnverifiedSignatureError:
        return False
    return True


# --- archives --------------------------------------------------------------------------------


def key_archive_write(signers_by_role):
    """The .tgz bytes holding each (role, signer) pair's .pub and .sec files."""
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for directory in ("tufrepo", "tufrepo/keys"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, now
            archive.addfile(info)
        for role, signer in signers_by_role:
            if role not in ROLES:
                raise ApplicationError(f"Unknown TUF role {role!r}")
            keyid = signer.public_key.keyid
            for suffix, content, mode in (("pub", public_key_json(signer.public_key), 0o644), ("sec", _secret_json(signer), 0o600)):
                info = tarfile.TarInfo(f"tufrepo/keys/{role}-{keyid}.{suffix}")
                info.size, info.mode, info.mtime = len(content), mode, now
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _gunzip_bounded(data):
    if len(data) > ARCHIVE_MAX_BYTES:
        raise ApplicationError(f"The key archive is larger than {ARCHIVE_MAX_BYTES // 1024} KiB; it is not a TUF key archive")
    out = bytearray()
    rest = data
    try:
        # A gzip file may hold several members; each one is inflated with a hard output cap.
        while rest:
            inflater = zlib.decompressobj(wbits=31)
            out += inflater.decompress(rest, ARCHIVE_MAX_UNPACKED_BYTES - len(out) + 1)
            if len(out) > ARCHIVE_MAX_UNPACKED_BYTES or inflater.unconsumed_tail:
                raise ApplicationError("The key archive unpacks to more than 1 MiB; it is not a TUF key archive")
            if not inflater.eof:
                raise ApplicationError("The key archive is truncated")
            rest = inflater.unused_data
    except zlib.error:
        raise ApplicationError("The key archive is not a gzip-compressed tar file (.tgz)") from None
    return bytes(out)


def _tar_headers_check(raw):
    """Walk the tar headers before tarfile parses them, refusing what a key archive never holds
    and tarfile handles badly on hostile input: it recurses once per pax or GNU long-name header
    (a chain of them is a RecursionError), spends time quadratic in a pax header's length (a
    200 KB header of digits takes about a minute), and lets malformed sparse-file records out as
    ValueError. Sizes that pax headers override or that are base-256 encoded are refused too, so
    the offsets walked here are the ones tarfile reads."""
    offset = members = extended_bytes = in_a_row = 0
    while offset + TAR_BLOCK <= len(raw):
        header = raw[offset:offset + TAR_BLOCK]
        if not header.strip(b"\0"):
            return  # the end-of-archive block, where tarfile stops too
        kind = header[156:157]
        size_field = header[124:136].split(b"\0", 1)[0].strip()
        if not re.fullmatch(rb"[0-7]*", size_field):
            raise ApplicationError("The key archive is not a valid tar file")
        size = int(size_field or b"0", 8)
        if kind == tarfile.GNUTYPE_SPARSE:
            raise ApplicationError("The key archive holds a sparse file; key files are regular files")
        if kind in EXTENDED_TYPES:
            in_a_row += 1
            extended_bytes += size
            if size > EXTENDED_HEADER_MAX_BYTES or extended_bytes > EXTENDED_HEADERS_MAX_BYTES or in_a_row > EXTENDED_HEADERS_IN_A_ROW:
                raise ApplicationError("The key archive's extended (pax or long-name) headers are too large or too many; it is not a TUF key archive")
            if kind in PAX_TYPES:
                records = raw[offset + TAR_BLOCK:offset + TAR_BLOCK + size]
                # Every record is "<length> <keyword>=<value>": whatever its framing, a size record holds " size=".
                if b" size=" in records or b"GNU.sparse" in records:
                    raise ApplicationError("The key archive's pax headers declare sizes or sparse files; key files are small regular files")
        else:
            in_a_row = 0
            members += 1
            if members > ARCHIVE_MAX_MEMBERS:
                raise ApplicationError(f"The key archive holds more than {ARCHIVE_MAX_MEMBERS} entries")
        # tarfile skips the data of files, extended headers and unknown types, not of folders,
        # links or devices.
        skips_data = kind in tarfile.REGULAR_TYPES or kind in EXTENDED_TYPES or kind not in tarfile.SUPPORTED_TYPES
        offset += TAR_BLOCK + (-(-size // TAR_BLOCK) * TAR_BLOCK if skips_data else 0)


def key_archive_read(archive_bytes):
    """[(role, signer)] from a .tgz key archive, read in memory.

    Refuses anything that is not a small archive of regular files named
    tufrepo/keys/<role>-<keyid>.pub|.sec: links, devices, absolute or '..' paths, huge members.
    A .pub without its .sec is ignored (it cannot sign).
    """
    if not isinstance(archive_bytes, (bytes, bytearray)) or not archive_bytes:
        raise ApplicationError("The key archive is empty")
    raw = _gunzip_bounded(bytes(archive_bytes))
    _tar_headers_check(raw)
    secrets_found = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
            members = 0
            for member in archive:
                members += 1
                if members > ARCHIVE_MAX_MEMBERS:
                    raise ApplicationError(f"The key archive holds more than {ARCHIVE_MAX_MEMBERS} entries")
                name = member.name.rstrip("/")
                if name.startswith("./"):
                    name = name[2:]
                shown = name[:100]
                if name.startswith("/") or ".." in name.split("/") or "\\" in name:
                    raise ApplicationError(f"The key archive entry {shown!r} points outside tufrepo/keys/")
                if member.isdir():
                    if name not in DIRECTORIES:
                        raise ApplicationError(f"Unexpected folder {shown!r} in the key archive")
                    continue
                if not member.isfile():
                    raise ApplicationError(f"The key archive entry {shown!r} is not a regular file")
                match = MEMBER_RE.match(name)
                if not match:
                    raise ApplicationError(f"Unexpected file {shown!r} in the key archive (expected tufrepo/keys/<role>-<keyid>.pub or .sec)")
                if member.size > MEMBER_MAX_BYTES:
                    raise ApplicationError(f"The key file {shown!r} is larger than {MEMBER_MAX_BYTES // 1024} KiB")
                role, keyid, suffix = match.groups()
                if suffix == "sec":
                    if (role, keyid) in secrets_found:
                        raise ApplicationError(f"The key archive holds {shown!r} twice")
                    secrets_found[(role, keyid)] = (archive.extractfile(member).read(), shown)
    except (tarfile.TarError, ValueError, OverflowError, RecursionError):
        # tarfile's own failures on hostile headers (fuzzing found each of these), should one get
        # past _tar_headers_check.
        raise ApplicationError("The key archive is not a valid tar file") from None
    signers = [(role, _signer_from_secret_json(content, keyid, shown)) for (role, keyid), (content, shown) in secrets_found.items()]
    if not signers:
        raise ApplicationError("The key archive holds no private key (tufrepo/keys/<role>-<keyid>.sec)")
    return signers


def archive_signatures(*, payload, archive_bytes, roles=("targets",)):
    """Sign `payload` with every key of `roles` in the archive; the keys are dropped after."""
    signers = [(role, signer) for role, signer in key_archive_read(archive_bytes) if role in roles]
    try:
        if not signers:
            raise ApplicationError(f"The key archive holds no {' or '.join(roles)} private key")
        return [payload_sign(signer, payload) for _, signer in signers]
    finally:
        signers.clear()


def archive_signatures_many(*, payloads, archive_bytes, roles=("targets",)):
    """[signatures over payloads[0], over payloads[1], ...] by every key of `roles` in the
    archive, read once; the keys are dropped after."""
    signers = [(role, signer) for role, signer in key_archive_read(archive_bytes) if role in roles]
    try:
        if not signers:
            raise ApplicationError(f"The key archive holds no {' or '.join(roles)} private key")
        return [[payload_sign(signer, payload) for _, signer in signers] for payload in payloads]
    finally:
        signers.clear()
