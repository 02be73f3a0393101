"""TUF keys: the .tgz key archive, public keys, signatures and online keys encrypted at rest."""
import functools
import io
import json
import tarfile
import zlib

import pytest
from cryptography.fernet import Fernet

from factory.errors import ApplicationError
from factory.tuf import keys as tuf_keys
from factory.tuf.models import TufKey
from factory.tuf.services.keyring import Keyring
from factory.tuf.services.wave_targets import key_archive_signatures


def tgz(members):
    """A .tgz from [(name, bytes | None for a folder, kind)] with kind "file", "dir", "symlink"."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def secret_file(signer):
    """The .sec member of a freshly written archive for `signer`."""
    with tarfile.open(fileobj=io.BytesIO(tuf_keys.key_archive_write([("targets", signer)]))) as archive:
        member = next(m for m in archive if m.name.endswith(".sec"))
        return archive.extractfile(member).read()


def test_an_archive_round_trips_and_its_keys_sign_verifiably():
    targets, root = tuf_keys.key_generate(), tuf_keys.key_generate()
    archive = tuf_keys.key_archive_write([("targets", targets), ("root", root)])
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = sorted(m.name for m in tar if m.isfile())
    assert names == sorted(
        f"tufrepo/keys/{role}-{s.public_key.keyid}.{ext}" for role, s in (("targets", targets), ("root", root)) for ext in ("pub", "sec")
    )
    read = dict((signer.public_key.keyid, role) for role, signer in tuf_keys.key_archive_read(archive))
    assert read == {targets.public_key.keyid: "targets", root.public_key.keyid: "root"}

    signatures = key_archive_signatures(payload=b"payload", archive_bytes=archive)
    assert [s["keyid"] for s in signatures] == [targets.public_key.keyid]  # targets keys only
    parsed = tuf_keys.signature_parse(signatures[0])
    assert tuf_keys.signature_verify(targets.public_key, parsed, b"payload")
    assert not tuf_keys.signature_verify(targets.public_key, parsed, b"another payload")


def test_the_pub_file_is_the_public_key_the_server_accepts():
    signer = tuf_keys.key_generate()
    key = tuf_keys.public_key_parse(tuf_keys.public_key_json(signer.public_key))
    assert key.keyid == signer.public_key.keyid and key.keyval == signer.public_key.keyval


@pytest.mark.parametrize(
    "value, message",
    [
        (b"not json", "not JSON"),
        ("[1, 2]", "TUF key object"),
        ({"keytype": "rsa", "scheme": "rsassa-pss-sha256", "keyval": {"public": "ab"}}, "Only ed25519"),
        ({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "zz" * 32}}, "Only ed25519"),
        ({"keytype": "ed25519", "scheme": "ed25519"}, "TUF key object"),
    ],
)
def test_bad_public_keys_are_refused(value, message):
    with pytest.raises(ApplicationError, match=message):
        tuf_keys.public_key_parse(value)


def test_archives_accept_a_leading_dot_slash_and_64_or_32_byte_private_keys():
    signer = tuf_keys.key_generate()
    keyid = signer.public_key.keyid
    full = json.loads(secret_file(signer))
    seed_only = dict(full, keyval={**full["keyval"], "private": full["keyval"]["private"][:64]})
    for content in (json.dumps(full).encode(), json.dumps(seed_only).encode()):
        archive = tgz([("./tufrepo/keys/", None, "dir"), (f"./tufrepo/keys/targets-{keyid}.sec", content, "file")])
        [(role, read)] = tuf_keys.key_archive_read(archive)
        assert role == "targets" and read.public_key.keyid == keyid


@functools.cache
def _bad_archives():
    signer, other = tuf_keys.key_generate(), tuf_keys.key_generate()
    keyid = signer.public_key.keyid
    sec = secret_file(signer)
    name = f"tufrepo/keys/targets-{keyid}.sec"
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.size = 2 * tuf_keys.ARCHIVE_MAX_UNPACKED_BYTES
        archive.addfile(info, io.BytesIO(b"\0" * info.size))
    return [
        (b"", "empty"),
        (b"this is not gzip", "not a gzip"),
        (zlib.compress(b"x"), "not a gzip"),
        (tgz([("../../etc/cron.d/evil", b"x", "file")]), "outside tufrepo/keys"),
        (tgz([("/tufrepo/keys/x.sec", b"x", "file")]), "outside tufrepo/keys"),
        (tgz([(f"tufrepo/keys/../keys/targets-{keyid}.sec", sec, "file")]), "outside tufrepo/keys"),
        (tgz([(name, None, "symlink")]), "not a regular file"),
        (tgz([("tufrepo/other/", None, "dir")]), "Unexpected folder"),
        (tgz([("tufrepo/keys/readme.txt", b"hi", "file")]), "Unexpected file"),
        (tgz([(name, b"x" * (tuf_keys.MEMBER_MAX_BYTES + 1), "file")]), "larger than"),
        (tgz([(f"tufrepo/keys/targets-{keyid}.pub", tuf_keys.public_key_json(signer.public_key), "file")]), "no private key"),
        (tgz([(name, b"{}", "file")]), "not an ed25519 private key"),
        (tgz([(f"tufrepo/keys/targets-{other.public_key.keyid}.sec", sec, "file")]), "does not match its file name"),
        (tgz([(name, sec, "file"), (name, sec, "file")]), "twice"),
        (tgz([("tufrepo/keys/", None, "dir")] * (tuf_keys.ARCHIVE_MAX_MEMBERS + 1)), "more than"),
        (bomb.getvalue(), "unpacks to more than"),
        (b"\x1f\x8b" + b"\0" * (tuf_keys.ARCHIVE_MAX_BYTES + 1), "larger than"),
        (tgz([(name, sec, "file")])[:-20], "truncated|not a gzip|not a valid tar"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_archives())))
def test_malformed_or_hostile_archives_are_refused_with_a_clear_error(index):
    data, message = _bad_archives()[index]
    with pytest.raises(ApplicationError, match=message):
        tuf_keys.key_archive_read(data)


def test_an_archive_of_only_root_keys_cannot_sign_a_wave():
    archive = tuf_keys.key_archive_write([("root", tuf_keys.key_generate())])
    with pytest.raises(ApplicationError, match="no targets private key"):
        key_archive_signatures(payload=b"p", archive_bytes=archive)


def test_errors_never_echo_key_material():
    signer = tuf_keys.key_generate()
    sec = secret_file(signer)
    private_hex = json.loads(sec)["keyval"]["private"]
    wrong_name = tgz([(f"tufrepo/keys/targets-{'0' * 64}.sec", sec, "file")])
    with pytest.raises(ApplicationError) as error:
        tuf_keys.key_archive_read(wrong_name)
    assert private_hex not in str(error.value) and private_hex[:64] not in str(error.value)


@pytest.mark.parametrize(
    "value, message",
    [
        ("abc", "keyid and sig"),
        ({"keyid": "ab", "sig": "00"}, "64 lowercase hex"),
        ({"keyid": "a" * 64, "sig": "xyz"}, "not hex"),
        ({"keyid": "a" * 64, "sig": "0" * 2000}, "not hex"),
    ],
)
def test_malformed_signatures_are_refused(value, message):
    with pytest.raises(ApplicationError, match=message):
        tuf_keys.signature_parse(value)


def test_online_keys_are_encrypted_at_rest(factory, settings):
    rows = list(TufKey.objects.filter(factory=factory))
    assert {r.role for r in rows} == {"root", "targets", "snapshot", "timestamp"}
    keyring = Keyring(factory.id)
    for row in rows:
        signer = keyring.signer(row.role)
        pem = signer.private_bytes
        assert b"PRIVATE KEY" not in bytes(row.private_encrypted) and pem not in bytes(row.private_encrypted)
        assert signer.public_key.keyid == row.keyid
    # Another encryption key cannot read them; a new key in front of the old one (rotation) can.
    original = settings.TUF_KEY_ENCRYPTION_KEY
    settings.TUF_KEY_ENCRYPTION_KEY = Fernet.generate_key().decode()
    with pytest.raises(ApplicationError, match="Cannot decrypt"):
        Keyring(factory.id).signer("targets")
    settings.TUF_KEY_ENCRYPTION_KEY = settings.TUF_KEY_ENCRYPTION_KEY + "," + original
    assert Keyring(factory.id).signer("targets").public_key.keyid == next(r.keyid for r in rows if r.role == "targets")
