"""The simulated aktualizr-lite device's verifier of the libaktualizr flavour, against metadata built
here from the rules (ed25519 `method`, base64 `sig` over canonical `signed`, exact `_type`,
thresholds, the root chain, expiry, versions never down, hashes over canonical JSON)."""
import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from devices.aktualizr_device import AktualizrVerifier, FetchFailed, MetadataRefused, RollbackRefused, canonical, target_select

FUTURE = "2099-01-01T00:00:00Z"
PAST = "2001-01-01T00:00:00Z"
HWID = "intel-corei7-64"


class Key:
    def __init__(self):
        self.private = Ed25519PrivateKey.generate()
        public = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        self.entry = {"keytype": "ED25519", "keyval": {"public": public}}
        self.id = hashlib.sha256(canonical(self.entry)).hexdigest()

    def sign(self, signed, method="ed25519", encode=base64.b64encode):
        return {"keyid": self.id, "method": method, "sig": encode(self.private.sign(canonical(signed))).decode()}


def envelope(signed, *keys, **how):
    return {"signed": signed, "signatures": [k.sign(signed, **how) for k in keys]}


def root(version, root_keys, online, threshold=1, expires=FUTURE):
    keys = {k.id: k.entry for k in [*root_keys, online]}
    roles = {"root": {"keyids": [k.id for k in root_keys], "threshold": threshold}}
    roles.update({r: {"keyids": [online.id], "threshold": 1} for r in ("targets", "snapshot", "timestamp")})
    return {"_type": "Root", "version": version, "expires": expires, "keys": keys, "roles": roles, "consistent_snapshot": False}


def hashed(document):
    text = canonical(document)
    return {"hashes": {"sha256": hashlib.sha256(text).hexdigest()}, "length": len(text)}


TARGET = {"hashes": {"sha256": "ab" * 32}, "length": 0, "custom": {"targetFormat": "OSTREE", "version": "42", "hardwareIds": [HWID], "tags": ["main"]}}


class Repo:
    """What a server serves: files by name; `fetch` answers like the device's fetcher."""

    def __init__(self, root_key, online):
        self.root_key, self.online = root_key, online
        self.files = {"1.root.json": envelope(root(1, [root_key], online), root_key)}
        self.fetched = []

    def publish(self, version=1, *, targets_type="Targets", expires=FUTURE, targets=None, signer=None):
        signer = signer or self.online
        tdoc = envelope({"_type": targets_type, "version": version, "expires": expires, "targets": targets or {f"{HWID}-lmp-42": TARGET}}, signer)
        sdoc = envelope({"_type": "Snapshot", "version": version, "expires": FUTURE, "meta": {"targets.json": {"version": version, **hashed(tdoc)}}}, signer)
        ts = envelope({"_type": "Timestamp", "version": version, "expires": FUTURE, "meta": {"snapshot.json": {"version": version, **hashed(sdoc)}}}, signer)
        self.files.update({"targets.json": tdoc, "snapshot.json": sdoc, "timestamp.json": ts})

    def fetch(self, name, role):
        self.fetched.append(name)
        if name not in self.files:
            raise FetchFailed(name)
        return canonical(self.files[name])


@pytest.fixture
def repo():
    repo = Repo(Key(), Key())
    repo.publish()
    return repo


def test_well_formed_metadata_is_accepted_and_the_aktualizr_lite_target_chosen(repo):
    verifier = AktualizrVerifier()
    targets = verifier.refresh(repo.fetch)
    assert repo.fetched == ["1.root.json", "2.root.json", "timestamp.json", "snapshot.json", "targets.json"]
    assert target_select(targets, hardware_id=HWID, tags=["main"])[:2] == (f"{HWID}-lmp-42", 42)


def test_an_unchanged_timestamp_fetches_no_snapshot_or_targets_and_state_survives_a_restart(repo):
    verifier = AktualizrVerifier()
    verifier.refresh(repo.fetch)
    repo.fetched.clear()
    AktualizrVerifier(verifier.state()).refresh(repo.fetch)
    assert repo.fetched == ["2.root.json", "timestamp.json"]


def test_an_unsupported_sign_method_is_refused(repo):
    repo.publish(2)
    repo.files["timestamp.json"]["signatures"][0]["method"] = "ED25519-TUF"
    with pytest.raises(MetadataRefused, match="Unsupported sign method"):
        AktualizrVerifier().refresh(repo.fetch)


def test_a_missing_method_is_refused_even_for_an_unknown_key(repo):
    repo.files["1.root.json"]["signatures"].append({"keyid": "unknown", "sig": "x"})
    with pytest.raises(MetadataRefused, match="Unsupported sign method"):
        AktualizrVerifier().refresh(repo.fetch)


def test_a_hex_signature_is_refused(repo):
    repo.files["1.root.json"] = envelope(repo.files["1.root.json"]["signed"], repo.root_key, encode=lambda raw: raw.hex().encode())
    with pytest.raises(MetadataRefused, match="BadKeyId"):
        AktualizrVerifier().refresh(repo.fetch)


def test_lowercase_type_is_refused_for_targets(repo):
    repo.publish(targets_type="targets")
    with pytest.raises(MetadataRefused, match="_type must be exactly 'Targets'"):
        AktualizrVerifier().refresh(repo.fetch)


def test_a_snapshot_that_does_not_match_the_timestamp_hash_is_refused(repo):
    snapshot = repo.files["snapshot.json"]
    snapshot["signed"]["expires"] = "2098-01-01T00:00:00Z"
    snapshot["signatures"] = [repo.online.sign(snapshot["signed"])]  # validly signed, another hash
    with pytest.raises(MetadataRefused, match="sha256 hash mismatch"):
        AktualizrVerifier().refresh(repo.fetch)


def test_a_targets_file_that_does_not_match_the_snapshot_hash_is_refused(repo):
    targets = repo.files["targets.json"]
    targets["signed"]["targets"]["extra"] = TARGET
    targets["signatures"] = [repo.online.sign(targets["signed"])]
    with pytest.raises(MetadataRefused, match="targets.json: sha256 hash mismatch"):
        AktualizrVerifier().refresh(repo.fetch)


def test_a_version_going_down_is_a_rollback(repo):
    repo.publish(5)
    verifier = AktualizrVerifier()
    verifier.refresh(repo.fetch)
    repo.publish(4)
    with pytest.raises(RollbackRefused, match="Rollback attempt"):
        verifier.refresh(repo.fetch)


def test_the_root_chain_needs_the_old_keys_and_the_next_version(repo):
    verifier = AktualizrVerifier()
    verifier.refresh(repo.fetch)
    stranger = Key()
    repo.files["2.root.json"] = envelope(root(2, [stranger], repo.online), stranger)
    with pytest.raises(MetadataRefused, match=r"2.root.json \(old root keys\)"):
        AktualizrVerifier(verifier.state()).refresh(repo.fetch)
    repo.files["2.root.json"] = envelope(root(3, [repo.root_key], repo.online), repo.root_key)
    with pytest.raises(MetadataRefused, match="RootRotationError"):
        AktualizrVerifier(verifier.state()).refresh(repo.fetch)
    repo.files["2.root.json"] = envelope(root(2, [stranger], repo.online), repo.root_key, stranger)
    verifier.refresh(repo.fetch)
    assert verifier.root["version"] == 2


def test_a_threshold_counts_distinct_valid_keys(repo):
    second = Key()
    document = envelope(root(1, [repo.root_key, second], repo.online, threshold=2), repo.root_key)
    repo.files["1.root.json"] = document
    with pytest.raises(MetadataRefused, match="1 valid signature"):
        AktualizrVerifier().refresh(repo.fetch)
    document["signatures"].append(dict(document["signatures"][0]))
    with pytest.raises(MetadataRefused, match="NonUniqueSignatures"):
        AktualizrVerifier().refresh(repo.fetch)


def test_expired_metadata_is_refused(repo):
    repo.files["1.root.json"] = envelope(root(1, [repo.root_key], repo.online, expires=PAST), repo.root_key)
    with pytest.raises(MetadataRefused, match="root: ExpiredMetadata"):
        AktualizrVerifier().refresh(repo.fetch)
    repo.files["1.root.json"] = envelope(root(1, [repo.root_key], repo.online), repo.root_key)
    repo.publish(expires=PAST)
    with pytest.raises(MetadataRefused, match="targets: ExpiredMetadata"):
        AktualizrVerifier().refresh(repo.fetch)


def test_an_expiry_not_in_second_precision_z_is_refused(repo):
    repo.files["1.root.json"] = envelope(root(1, [repo.root_key], repo.online, expires="2099-01-01T00:00:00+00:00"), repo.root_key)
    with pytest.raises(MetadataRefused, match="invalid timestamp"):
        AktualizrVerifier().refresh(repo.fetch)


def test_metadata_signed_by_a_key_outside_the_role_is_refused(repo):
    repo.publish(2, signer=repo.root_key)
    with pytest.raises(MetadataRefused, match="timestamp.json: BadKeyId"):
        AktualizrVerifier().refresh(repo.fetch)


@pytest.mark.parametrize(
    "custom, chosen",
    [
        ({"hardwareIds": [HWID, "other"]}, None),  # exactly one hardware ID
        ({"hardwareIds": ["raspberrypi4-64"]}, None),
        ({"tags": ["beta"]}, None),
        ({"tags": "main"}, None),  # tags must be an array
        ({"version": "0x2b"}, 43),  # std::stoi with base 0
        ({}, 42),
    ],
)
def test_target_selection_follows_aktualizr_lite(custom, chosen):
    target = {**TARGET, "custom": {**TARGET["custom"], **custom}}
    result = target_select({"t": target}, hardware_id=HWID, tags=["main"])
    assert (result[1] if result else None) == chosen


def test_ostree_targets_win_over_blob_targets_and_blob_targets_count_without_them():
    blob = {"hashes": {"sha256": "cd" * 32}, "length": 3, "custom": {"version": "44", "hardwareIds": [HWID], "tags": ["main"]}}
    assert target_select({"a": TARGET, "b": blob}, hardware_id=HWID, tags=["main"])[:2] == ("a", 42)
    older = {**blob, "custom": {**blob["custom"], "version": "43"}}
    assert target_select({"b": blob, "c": older}, hardware_id=HWID, tags=["main"])[:2] == ("b", 44)
