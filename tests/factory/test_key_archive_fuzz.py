"""Fuzzing the key-archive reader: whatever bytes are uploaded, key_archive_read returns signers
that sign verifiably or raises ApplicationError with a short message, never unpacks or reads more
than its limits and answers in bounded time. archive_signatures signs with exactly the archive's
targets keys or raises ApplicationError. The table of named attacks is in test_tuf_keys.py.

BREAKWATER_FUZZ_EXAMPLES sets the examples per property (default 100; try 2000 for a long run)."""
import functools
import gzip
import io
import json
import os
import tarfile
import time
import zlib
from contextlib import contextmanager
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factory.errors import ApplicationError
from factory.tuf import keys as tuf_keys
from factory.tuf.services.wave_targets import key_archive_signatures
from tests.waves.conftest import TAG, builds, offline_key  # noqa: F401  (fixtures)

EXAMPLES = int(os.environ.get("BREAKWATER_FUZZ_EXAMPLES", "100"))
# Every answer takes milliseconds; this leaves room for a loaded CI machine and still catches the
# quadratic and runaway cases (a crafted pax header took about a minute before the reader refused it).
SECONDS = 2.0
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ROLES = ("root", "targets", "snapshot", "timestamp")
TYPES = [b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"L", b"K", b"S", b"x", b"g", b"X", b"V", b"M", b"Z"]


@functools.cache
def keys():
    """Two signers and their .sec files, made once."""
    made = {}
    for role in ("targets", "root"):
        signer = tuf_keys.key_generate()
        with tarfile.open(fileobj=io.BytesIO(tuf_keys.key_archive_write([(role, signer)]))) as archive:
            member = next(m for m in archive if m.name.endswith(".sec"))
            made[role] = (signer, archive.extractfile(member).read())
    return made


def key_name(role, keyid, suffix="sec"):
    return f"tufrepo/keys/{role}-{keyid}.{suffix}".encode()


@functools.cache
def valid_tar():
    """The uncompressed tar of a real archive with a targets and a root key."""
    archive = tuf_keys.key_archive_write([(role, signer) for role, (signer, _) in keys().items()])
    return gzip.decompress(archive)


# --- the property ----------------------------------------------------------------------------


@contextmanager
def watched():
    """Record how many bytes the reader unpacked and read from each member."""
    seen = {"unpacked": 0, "member_reads": []}
    gunzip, extract = tuf_keys._gunzip_bounded, tarfile.TarFile.extractfile

    def gunzip_watched(data):
        out = gunzip(data)
        seen["unpacked"] = len(out)
        return out

    def extract_watched(self, member):
        f = extract(self, member)
        read = f.read

        def read_watched(*args):
            out = read(*args)
            seen["member_reads"].append(len(out))
            return out

        f.read = read_watched
        return f

    with mock.patch.object(tuf_keys, "_gunzip_bounded", gunzip_watched), mock.patch.object(tarfile.TarFile, "extractfile", extract_watched):
        yield seen


def read(data):
    """key_archive_read(data), checked against the property; the signers, or the error message."""
    with watched() as seen:
        started = time.perf_counter()
        try:
            signers = tuf_keys.key_archive_read(data)
        except ApplicationError as error:
            signers, message = None, error.message
        elapsed = time.perf_counter() - started
    assert elapsed < SECONDS, f"{elapsed:.1f} s for {len(data)} bytes"
    assert seen["unpacked"] <= tuf_keys.ARCHIVE_MAX_UNPACKED_BYTES
    assert all(n <= tuf_keys.MEMBER_MAX_BYTES for n in seen["member_reads"])
    if signers is None:
        assert message and len(message) < 300 and message.isprintable(), message
        for _, sec in keys().values():
            assert json.loads(sec)["keyval"]["private"][:64] not in message
        return message
    assert signers
    for role, signer in signers:
        assert role in ROLES
        signature = tuf_keys.signature_parse(tuf_keys.payload_sign(signer, b"payload"))
        assert tuf_keys.signature_verify(signer.public_key, signature, b"payload")
    return signers


# --- tar building blocks -----------------------------------------------------------------------


def octal(n, width=12):
    return (b"%0*o" % (width - 1, n) + b"\0")[-width:]


def header(name, size_field, kind, linkname=b"", checksum_ok=True):
    """One 512-byte ustar header with any field values, even ones tarfile would never write."""
    block = bytearray(512)
    block[0:100] = name[:100].ljust(100, b"\0")
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = size_field[:12].ljust(12, b"\0")
    block[136:148] = octal(1_700_000_000)
    block[156:157] = kind[:1].ljust(1, b"\0")
    block[157:257] = linkname[:100].ljust(100, b"\0")
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    checksum = sum(block) if checksum_ok else sum(block) + 1
    block[148:156] = b"%06o\0 " % (checksum % 0o1000000)
    return bytes(block)


def padded(data):
    return data + b"\0" * (-len(data) % 512)


def pax_records(pairs):
    out = b""
    for keyword, value in pairs:
        body = b" " + keyword + b"=" + value + b"\n"
        length = len(body) + len(str(len(body)))
        length = len(body) + len(str(length))
        out += str(length).encode() + body
    return out


def tgz(raw):
    return gzip.compress(raw, compresslevel=6, mtime=0)


names = st.one_of(
    st.sampled_from(["targets", "root", "snapshot", "timestamp", "other"]).flatmap(
        lambda role: st.sampled_from([keys()["targets"][0].public_key.keyid, keys()["root"][0].public_key.keyid, "0" * 64, "g" * 64]).map(
            lambda keyid: key_name(role, keyid, "sec")
        )
    ),
    st.sampled_from(
        [
            b"tufrepo", b"tufrepo/", b"tufrepo/keys", b"./tufrepo/keys/", b"../../etc/passwd", b"/etc/shadow",
            b"tufrepo/keys/../../x.sec", b"tufrepo\\keys\\targets.sec", b"tufrepo/keys//targets.sec",
            b"./././tufrepo", b"\xff\xfe\xfd", b"tufrepo/keys/\xc3\x28.sec", b"", b"." * 100,
        ]
    ),
    st.binary(max_size=100),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)

size_fields = st.one_of(
    st.integers(0, 0o77777777777).map(octal),
    st.sampled_from([b"\x80" + b"\0" * 3 + b"\xff" * 8, b"\xff" * 12, b"\x80" + b"\x7f" * 11, b"77777777777\0", b"-1", b" 12 ", b"0o17", b"9" * 12]),
    st.binary(min_size=12, max_size=12),
)

pax_keywords = st.sampled_from([b"path", b"linkpath", b"size", b"uid", b"mtime", b"hdrcharset", b"GNU.sparse.map", b"GNU.sparse.major", b"LIBARCHIVE.xattr.com.apple.provenance", b"comment"])
pax_values = st.one_of(
    st.binary(max_size=64),
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.integers(1, 9000).map(lambda n: b"1" * n),  # long runs of digits: what made tarfile's pax parsing quadratic
    st.sampled_from([b"BINARY", b"tufrepo/keys/../../x", b"1,2,3", b"a,b"]),
)
payloads = st.one_of(
    st.sampled_from([keys()["targets"][1], keys()["root"][1], b"", b"{}", b"[" * 20_000]),
    st.lists(st.tuples(pax_keywords, pax_values), max_size=4).map(pax_records),
    st.binary(max_size=2048),
    st.integers(1, 12_000).map(lambda n: b"0" * n),
)


@st.composite
def entries(draw):
    """One tar entry: a header of any type, name and size field, then its data."""
    kind = draw(st.sampled_from(TYPES))
    payload = draw(payloads)
    exact = draw(st.booleans())
    size_field = octal(len(payload)) if exact else draw(size_fields)
    block = header(draw(names), size_field, kind, linkname=draw(names), checksum_ok=draw(st.integers(0, 9)) > 0)
    return block + padded(payload)


@st.composite
def tars(draw):
    raw = b"".join(draw(st.lists(entries(), min_size=1, max_size=8)))
    raw += b"\0" * 512 * draw(st.integers(0, 2))
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


# --- properties ----------------------------------------------------------------------------------


@fuzz
@given(st.binary(max_size=4096))
def test_random_bytes_are_refused_clearly(data):
    assert isinstance(read(data), str)


@fuzz
@given(st.binary(max_size=8192))
def test_random_bytes_in_valid_gzip_are_refused_clearly(data):
    assert isinstance(read(tgz(data)), str)


@fuzz
@given(tars())
def test_tars_of_any_headers_sizes_types_and_names_are_read_or_refused_clearly(raw):
    read(tgz(raw))


@fuzz
@given(st.data())
def test_a_real_archive_with_bytes_flipped_inserted_or_cut_is_read_or_refused_clearly(data):
    raw = bytearray(valid_tar())
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "block"]))
        if action == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=600))
        elif action == "delete":
            del raw[at:at + data.draw(st.integers(1, 600))]
        else:  # repeat a 512-byte block: duplicate headers, shifted data
            start = at - at % 512
            raw[start:start] = raw[start:start + 512]
    read(tgz(bytes(raw)))


@fuzz
@given(st.data())
def test_a_real_archive_with_its_compressed_bytes_damaged_is_read_or_refused_clearly(data):
    archive = bytearray(tgz(valid_tar()))
    if data.draw(st.booleans()):
        del archive[data.draw(st.integers(0, len(archive) - 1)):]
    for _ in range(data.draw(st.integers(0, 4))):
        if archive:
            archive[data.draw(st.integers(0, len(archive) - 1))] = data.draw(st.integers(0, 255))
    archive += data.draw(st.binary(max_size=64))
    read(bytes(archive))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def secret_files(draw):
    """A .sec file for the targets key, damaged in one of many ways (or not at all)."""
    signer, sec = keys()["targets"]
    data = json.loads(sec)
    how = draw(st.sampled_from(["none", "private", "drop", "type", "keytype", "any", "bytes", "encoding", "nesting"]))
    if how == "private":
        data["keyval"]["private"] = draw(
            st.one_of(
                st.binary(max_size=70).map(bytes.hex),
                st.just(data["keyval"]["private"].upper()),
                st.just(data["keyval"]["private"][:64] + "00" * 32),  # right seed, wrong public half
                st.just(data["keyval"]["private"] + "0"),
                st.text(max_size=130),
                json_values,
            )
        )
    elif how == "drop":
        path = draw(st.sampled_from([("keyval",), ("keytype",), ("keyval", "private"), ("keyval", "public")]))
        target = data
        for step in path[:-1]:
            target = target[step]
        target.pop(path[-1])
    elif how == "type":
        data["keyval"] = draw(json_values)
    elif how == "keytype":
        data["keytype"] = draw(st.sampled_from(["rsa", "ecdsa", "ED25519", "", None, 1]))
    elif how == "any":
        data = draw(json_values)
    if how == "bytes":
        return draw(st.binary(max_size=2048))
    if how == "nesting":
        depth = draw(st.integers(1, 8000))
        return (b"[" * depth + b"]" * depth)[: tuf_keys.MEMBER_MAX_BYTES]
    text = json.dumps(data)
    if how == "encoding":
        return text.encode(draw(st.sampled_from(["utf-16", "utf-32", "utf-8-sig", "latin-1"])), "replace")
    return text.encode()


def archive_of(members):
    """A .tgz of (name, content) regular files written by tarfile itself (pax format)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@fuzz
@given(secret_files())
def test_a_well_formed_archive_with_a_damaged_key_file_is_read_or_refused_clearly(content):
    signer, sec = keys()["targets"]
    result = read(archive_of([(key_name("targets", signer.public_key.keyid).decode(), content)]))
    if not isinstance(result, str):
        # Accepted only if it is that very key, whatever else changed around it.
        [(role, read_signer)] = result
        assert role == "targets" and read_signer.public_key.keyid == signer.public_key.keyid


@fuzz
@given(st.binary(min_size=32, max_size=32), st.sampled_from(ROLES), st.booleans())
def test_any_ed25519_key_named_by_its_own_id_is_accepted(seed, role, full):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from securesystemslib.signer import SSlibKey

    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    keyid = SSlibKey.from_crypto(public, scheme="ed25519").keyid
    private = seed + public.public_bytes(Encoding.Raw, PublicFormat.Raw) if full else seed
    sec = json.dumps({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"private": private.hex()}}).encode()
    [(read_role, signer)] = read(archive_of([(key_name(role, keyid).decode(), sec)]))
    assert read_role == role and signer.public_key.keyid == keyid


@fuzz
@given(
    st.lists(st.sampled_from(["targets", "root"]), max_size=3),
    st.dictionaries(st.sampled_from([b"LIBARCHIVE.xattr.com.apple.provenance", b"SCHILY.xattr.user.note", b"comment", b"mtime"]), st.binary(max_size=200).map(bytes.hex).map(str.encode), max_size=3),
)
def test_signatures_come_from_exactly_the_archives_targets_keys(roles, extra_headers):
    members = [(key_name(role, keys()[role][0].public_key.keyid).decode(), keys()[role][1]) for role in dict.fromkeys(roles)]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.pax_headers = {k.decode(): v.decode() for k, v in extra_headers.items()}  # as macOS tar adds
            archive.addfile(info, io.BytesIO(content))
    started = time.perf_counter()
    try:
        signatures = key_archive_signatures(payload=b"wave targets", archive_bytes=buffer.getvalue())
    except ApplicationError as error:
        assert "targets" not in roles and ("no targets private key" in error.message or "no private key" in error.message)
    else:
        targets = keys()["targets"][0].public_key
        assert [s["keyid"] for s in signatures] == [targets.keyid]
        assert tuf_keys.signature_verify(targets, tuf_keys.signature_parse(signatures[0]), b"wave targets")
    assert time.perf_counter() - started < SECONDS


@fuzz
@given(tars())
def test_archive_signatures_either_signs_or_refuses_clearly(raw):
    try:
        signatures = tuf_keys.archive_signatures(payload=b"p", archive_bytes=tgz(raw))
    except ApplicationError as error:
        assert error.message
    else:
        assert signatures and all(set(s) == {"keyid", "sig"} for s in signatures)


# --- the extremes, each once ----------------------------------------------------------------------


def zeros_gzip(n):
    """n zero bytes, gzip-compressed in pieces (a 250 MB bomb fits the 256 KiB upload limit)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1024 * 1024)
    out = [compressor.compress(chunk) for _ in range(n // len(chunk))]
    out.append(compressor.compress(bytes(n % len(chunk))))
    return b"".join(out) + compressor.flush()


@pytest.mark.parametrize("unpacked", [tuf_keys.ARCHIVE_MAX_UNPACKED_BYTES + 1, 250 * 1024 * 1024])
def test_gzip_bombs_stop_at_the_unpack_limit(unpacked):
    bomb = zeros_gzip(unpacked)
    assert len(bomb) <= tuf_keys.ARCHIVE_MAX_BYTES
    assert "unpacks to more than 1 MiB" in read(bomb)


def test_many_small_gzip_members_count_together():
    member = gzip.compress(bytes(512 * 1024))
    assert "unpacks to more than 1 MiB" in read(member * 3)


def test_a_gzip_member_followed_by_garbage_is_refused():
    assert "not a gzip" in read(tgz(valid_tar()) + b"garbage")


def _chain(kind, count, size=1):
    return b"".join(header(b"././@LongLink" if kind in (b"L", b"K") else b"pax", octal(size), kind) + padded(b"a" * size) for _ in range(count))


@pytest.mark.parametrize(
    "raw, message",
    [
        # A chain of extended headers: tarfile recursed once per header (RecursionError).
        (_chain(b"L", 1000) + b"\0" * 1024, "too large or too many"),
        (_chain(b"x", 1000) + b"\0" * 1024, "too large or too many"),
        (_chain(b"g", 5) + b"\0" * 1024, "too large or too many"),
        # A pax header of digits: tarfile's parsing took time quadratic in its length.
        (header(b"pax", octal(200_000), b"x") + padded(b"0" * 200_000) + b"\0" * 1024, "too large or too many"),
        (header(b"pax", octal(900_000), b"x") + padded(b"1 " * 450_000) + b"\0" * 1024, "too large or too many"),
        # Sparse files: tarfile let malformed maps out as ValueError.
        (header(b"pax", octal(46), b"x") + padded(pax_records([(b"GNU.sparse.map", b"x,y")])) + header(key_name("targets", "a" * 64), octal(0), b"0") + b"\0" * 1024, "sparse"),
        (header(key_name("targets", "a" * 64), octal(0), b"S") + b"\0" * 1024, "sparse file"),
        # pax sizes would make tarfile read elsewhere than the header walk.
        (header(b"pax", octal(12), b"x") + padded(pax_records([(b"size", b"5")])) + header(key_name("targets", "a" * 64), octal(0), b"0") + b"\0" * 1024, "declare sizes"),
        # Negative or base-256 sizes.
        (header(key_name("targets", "a" * 64), b"\xff" * 12, b"0") + b"\0" * 1024, "not a valid tar"),
        (header(b"././@LongLink", b"\xff" * 12, b"L") + b"\0" * 1024, "not a valid tar"),
        # A huge declared size.
        (header(key_name("targets", "a" * 64), octal(0o77777777777), b"0") + b"\0" * 1024, "larger than 16 KiB"),
        # Hard and symbolic links, devices, FIFOs.
        *[(header(key_name("targets", "a" * 64), octal(0), kind, linkname=b"/etc/passwd") + b"\0" * 1024, "not a regular file") for kind in (b"1", b"2", b"3", b"4", b"6")],
    ],
)
def test_crafted_headers_are_refused_quickly(raw, message):
    assert message in read(tgz(raw))


def test_a_pax_header_just_under_the_limit_is_quick():
    raw = header(b"pax", octal(tuf_keys.EXTENDED_HEADER_MAX_BYTES), b"x") + padded(b"0" * tuf_keys.EXTENDED_HEADER_MAX_BYTES) + b"\0" * 1024
    read(tgz(raw))


def test_the_entry_limit_counts_entries_however_they_are_framed():
    signer, sec = keys()["targets"]
    folders = [(b"tufrepo/keys/", b"5")] * (tuf_keys.ARCHIVE_MAX_MEMBERS - 1)
    raw = b"".join(header(name, octal(0), kind) for name, kind in folders)
    raw += header(key_name("targets", signer.public_key.keyid), octal(len(sec)), b"0") + padded(sec)
    assert len(read(tgz(raw + b"\0" * 1024))) == 1  # 64 entries: still a key archive
    raw = header(b"tufrepo/", octal(0), b"5") + raw
    assert "more than 64 entries" in read(tgz(raw + b"\0" * 1024))


def test_non_utf8_and_control_character_names_are_shown_escaped():
    raw = header(b"tufrepo/keys/\xff\x1b[31m.sec", octal(2), b"0") + padded(b"{}") + b"\0" * 1024
    message = read(tgz(raw))
    assert "Unexpected file" in message and "\x1b" not in message


# --- through the doors: the dashboard's sign form and the API -------------------------------------


@functools.cache
def hostile_archives():
    signer, _ = keys()["targets"]
    deep = b"[" * 8000 + b"]" * 8000
    return [
        tgz(_chain(b"L", 1000) + b"\0" * 1024),
        tgz(header(b"pax", octal(200_000), b"x") + padded(b"0" * 200_000) + b"\0" * 1024),
        tgz(header(key_name("targets", signer.public_key.keyid), octal(len(deep)), b"0") + padded(deep) + b"\0" * 1024),
        os.urandom(3000),
    ]


@pytest.fixture
def unsigned_wave(factory, bob, builds):  # noqa: F811
    from waves.services import wave_init

    return wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag=TAG)


@pytest.mark.django_db
@pytest.mark.parametrize("index", range(4))
def test_hostile_archives_are_a_form_error_or_a_json_400_and_sign_nothing(client, bob, unsigned_wave, index):
    import base64

    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.urls import reverse
    from django.utils.html import escape

    from factory.services import api_token_create
    from waves.models import Wave

    archive = hostile_archives()[index]
    client.force_login(bob)
    started = time.perf_counter()
    page = client.post(reverse("wave-sign", args=[unsigned_wave.name]), {"key_archive": SimpleUploadedFile("keys.tgz", archive)})
    assert page.status_code in (200, 400), page.status_code
    assert escape(read(archive)).encode() in page.content  # the reader's own message, shown on the form
    token = api_token_create(user=bob, factory=unsigned_wave.factory)[1]
    response = client.post(
        f"/api/v1/factories/acme/waves/{unsigned_wave.name}/sign",
        json.dumps({"key_archive": base64.b64encode(archive).decode()}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {token}",
    )
    assert response.status_code == 400 and response.json()["detail"] == read(archive), response.content[:300]
    assert time.perf_counter() - started < 2 * SECONDS
    unsigned_wave.refresh_from_db()
    assert unsigned_wave.status == Wave.Status.UNSIGNED
