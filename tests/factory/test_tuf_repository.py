"""The TUF repository as devices' TUF clients see it: roots, offline keys, CI and production views,
wave signing primitives, tampering, periodic re-signing and the expiry monitor.

Every device here runs python-tuf's `ngclient.Updater` (tests/factory/tuf_client.py).
"""
import base64
import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata

from devices.services import device_create
from factory.errors import ApplicationError, Conflict, NotFound
from factory.models import AuditEntry
from factory.tuf import keys as tuf_keys
from factory.tuf import selectors as tuf_selectors
from factory.tuf.models import EMPTY_TAG, TufKey, TufRepository, TufRoot, TufRootChange, TufView
from factory.tuf.services import keyring as tuf_keyring, refresh, root_changes, wave_targets
from factory.tuf.services.repository import ci_build_publish
from waves import expiry, served_views

from .tuf_client import TufDevice, offline_targets_key

TAG = "production"
HWIDS = ["intel-corei7-64", "raspberrypi4-64"]


def make_device(factory, *, production, tag=TAG, hardware_id=HWIDS[0], group=None, version=None):
    device = device_create(
        factory=factory, uuid=uuid.uuid4(), name=f"dev-{uuid.uuid4().hex[:6]}", tag=tag, is_production=production, group=group,
        hardware_id=hardware_id,
    )  # fmt: skip
    if version is not None:
        device.target_version = version
        device.save(update_fields=["target_version"])
    return device


def root_of(factory, channel, version=None):
    rows = TufRoot.objects.filter(factory=factory, channel=channel)
    row = rows.get(version=version) if version else rows.order_by("-version").first()
    return Metadata.from_bytes(bytes(row.data)).signed


@pytest.fixture
def builds(factory):
    for version in (40, 41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])


# --- roots and keys ------------------------------------------------------------------------------


def test_a_new_factory_has_ci_and_production_roots_v1_with_the_same_keys(factory):
    ci, production = root_of(factory, "ci", 1), root_of(factory, "production", 1)
    assert ci.keys == production.keys and len(ci.keys) == 4
    for role in ("root", "targets", "snapshot", "timestamp"):
        assert ci.roles[role].keyids == production.roles[role].keyids
    assert ci.roles["targets"].threshold == production.roles["targets"].threshold == 1
    assert not ci.consistent_snapshot
    assert abs((production.expires - timezone.now()).days - 365) <= 1
    repository = TufRepository.objects.get(factory=factory)
    assert repository.root_online and repository.root_version == 1
    # Signed by its own root key: a TUF client accepts it as its trust anchor.
    metadata = Metadata.from_bytes(bytes(TufRoot.objects.get(factory=factory, channel="production", version=1).data))
    production.verify_delegate("root", metadata.signed_bytes, metadata.signatures)


def test_adding_an_offline_targets_key_makes_the_production_threshold_two(factory, bob):
    archive = offline_targets_key(factory=factory, actor=bob)
    [(role, signer)] = tuf_keys.key_archive_read(archive)
    keyid = signer.public_key.keyid
    ci, production = root_of(factory, "ci"), root_of(factory, "production")
    assert ci.version == production.version == 2
    assert keyid in ci.roles["targets"].keyids and keyid in production.roles["targets"].keyids
    assert ci.roles["targets"].threshold == 1 and production.roles["targets"].threshold == 2
    # Only the public key reached the database.
    row = TufKey.objects.get(factory=factory, keyid=keyid)
    assert row.role == "targets" and not row.online and row.private_encrypted is None and row.created_by == bob
    assert AuditEntry.objects.filter(factory=factory, action="tuf.key.add.targets").exists()
    assert AuditEntry.objects.filter(factory=factory, action="tuf.root.apply").exists()

    # A second user's key joins at once (no more signatures needed); the roots stay in lockstep.
    offline_targets_key(factory=factory, actor=bob)
    assert root_of(factory, "ci").version == root_of(factory, "production").version == 3
    assert len(root_of(factory, "production").roles["targets"].keyids) == 3
    assert not TufRootChange.objects.filter(status="pending").exists()


def test_a_key_change_is_for_managers_and_refuses_bad_input(factory, carol, bob):
    signer = tuf_keys.key_generate()
    with pytest.raises(ApplicationError, match="may not"):
        root_changes.offline_key_add(factory=factory, actor=carol, role="targets", public_key=signer.public_key.to_dict())
    with pytest.raises(ApplicationError, match="Role must be"):
        root_changes.offline_key_add(factory=factory, actor=bob, role="snapshot", public_key=signer.public_key.to_dict())
    with pytest.raises(ApplicationError, match="between 2 and 2"):
        root_changes.offline_key_add(factory=factory, actor=bob, role="targets", public_key=signer.public_key.to_dict(), threshold=3)
    online = TufKey.objects.get(factory=factory, role="targets")
    with pytest.raises(Conflict, match="already known"):
        root_changes.offline_key_add(factory=factory, actor=bob, role="targets", public_key=online.public)
    assert TufRoot.objects.filter(factory=factory).count() == 2 and TufKey.objects.filter(factory=factory).count() == 4


def test_taking_the_root_key_offline_needs_the_new_key_to_sign(factory, bob, tmp_path):
    device = make_device(factory, production=True)
    client = TufDevice(device, tmp_path)
    client.refresh()
    old_root_keyid = TufKey.objects.get(factory=factory, role="root").keyid
    root_key = tuf_keys.key_generate()
    change = root_changes.offline_key_add(factory=factory, actor=bob, role="root", public_key=root_key.public_key.to_dict())
    assert change.status == "pending"
    payloads = {p["document"]: p for p in tuf_selectors.root_change_payloads(change=change)}
    # Each document's libaktualizr sibling is signed in the same step, by the same keys.
    assert set(payloads) == {"ci-root", "production-root", "ci-root@aktualizr", "production-root@aktualizr"}
    for payload in payloads.values():
        # TUF: the old root key (online, the server signed) and the new one must both sign.
        assert set(payload["keyids"]) == {old_root_keyid, root_key.public_key.keyid}
        assert payload["signed_by"] == [old_root_keyid] and payload["missing"]
    # Nobody else's signature counts, a bad one is refused by key id, and nothing is stored.
    stranger = tuf_keys.key_generate()
    for signer, payload, message in (
        (stranger, payloads["ci-root"]["payload"], "may not sign"),
        (root_key, base64.b64encode(b"something else").decode(), "does not verify"),
    ):
        signature = {"document": "ci-root", **tuf_keys.payload_sign(signer, base64.b64decode(payload))}
        with pytest.raises(ApplicationError, match=signature["keyid"]):
            root_changes.root_change_sign(factory=factory, actor=bob, signatures=[signature])
    assert tuf_selectors.root_change_payloads(change=TufRootChange.objects.get(pk=change.pk))[0]["signed_by"] == [old_root_keyid]
    with pytest.raises(ApplicationError, match="unknown document"):
        root_changes.root_change_sign(factory=factory, actor=bob, signatures=[{"document": "x", "keyid": "a" * 64, "sig": "00"}])

    signatures = [{"document": name, **tuf_keys.payload_sign(root_key, base64.b64decode(p["payload"]))} for name, p in payloads.items()]
    change = root_changes.root_change_sign(factory=factory, actor=bob, signatures=signatures)
    assert change.status == "applied"
    repository = TufRepository.objects.get(factory=factory)
    assert not repository.root_online and repository.root_version == 2
    old = TufKey.objects.get(factory=factory, keyid=old_root_keyid)
    assert old.retired_at is not None and old.private_encrypted is None  # the server forgot it
    assert root_of(factory, "production").roles["root"].keyids == [root_key.public_key.keyid]
    client.refresh()
    assert client.versions()["root"] == 2

    # From now on every root change needs the user's root key, even adding a targets key.
    targets_key = tuf_keys.key_generate()
    change = root_changes.offline_key_add(factory=factory, actor=bob, role="targets", public_key=targets_key.public_key.to_dict())
    payloads = tuf_selectors.root_change_payloads(change=change)
    assert {p["document"].removesuffix("@aktualizr") for p in payloads} == {"ci-root", "production-root", "baseline-targets"}
    assert len(payloads) == 6
    assert all(p["signed_by"] == [] for p in payloads if p["kind"].startswith("root-"))
    archive = tuf_keys.key_archive_write([("targets", targets_key)])
    signatures = []
    for p in payloads:
        roles = ("root",) if p["kind"].startswith("root-") else ("targets",)
        signatures += [{"document": p["document"], **s} for s in tuf_keys.archive_signatures(
            payload=base64.b64decode(p["payload"]), archive_bytes=archive, roles=roles)] if roles == ("targets",) else [
            {"document": p["document"], **tuf_keys.payload_sign(root_key, base64.b64decode(p["payload"]))}]  # fmt: skip
    root_changes.root_change_sign(factory=factory, actor=bob, signatures=signatures[:1])
    assert TufRootChange.objects.get(pk=change.pk).status == "pending"
    assert root_changes.root_change_sign(factory=factory, actor=bob, signatures=signatures[1:]).status == "applied"
    assert root_of(factory, "production").roles["targets"].threshold == 2
    assert client.refresh() == {} and client.versions()["root"] == 3

    # Rotating the offline root key: old and new user keys both sign.
    new_root_key = tuf_keys.key_generate()
    change = root_changes.offline_key_add(factory=factory, actor=bob, role="root", public_key=new_root_key.public_key.to_dict())
    payloads = tuf_selectors.root_change_payloads(change=change)
    only_new = [{"document": p["document"], **tuf_keys.payload_sign(new_root_key, base64.b64decode(p["payload"]))} for p in payloads]
    assert root_changes.root_change_sign(factory=factory, actor=bob, signatures=only_new).status == "pending"
    old_too = [{"document": p["document"], **tuf_keys.payload_sign(root_key, base64.b64decode(p["payload"]))} for p in payloads]
    assert root_changes.root_change_sign(factory=factory, actor=bob, signatures=old_too).status == "applied"
    client.refresh()
    assert client.versions()["root"] == 4


def test_a_pending_key_change_blocks_another_until_abandoned(factory, bob):
    root_changes.offline_key_add(factory=factory, actor=bob, role="root", public_key=tuf_keys.key_generate().public_key.to_dict())
    with pytest.raises(Conflict, match="waiting for offline signatures"):
        root_changes.offline_key_add(factory=factory, actor=bob, role="targets", public_key=tuf_keys.key_generate().public_key.to_dict())
    root_changes.root_change_abandon(factory=factory, actor=bob)
    assert tuf_selectors.root_change_pending(factory=factory) is None
    assert TufRepository.objects.get(factory=factory).root_online
    offline_targets_key(factory=factory, actor=bob)
    with pytest.raises(NotFound):
        root_changes.root_change_abandon(factory=factory, actor=bob)


def test_an_online_root_is_renewed_before_it_expires(factory, settings):
    settings.BREAKWATER_TUF_ROOT_REFRESH_DAYS = 400  # everything is "about to expire"
    assert refresh.roots_renew_due() == 1
    assert root_of(factory, "production").version == 2 and root_of(factory, "ci").version == 2
    settings.BREAKWATER_TUF_ROOT_REFRESH_DAYS = 60
    assert refresh.roots_renew_due() == 0


# --- CI view ---------------------------------------------------------------------------------------


def test_a_test_device_gets_the_ci_targets_for_its_tag(factory, builds, tmp_path):
    ci_build_publish(factory=factory, version=43, hardware_ids=HWIDS, tags=["devel"])
    device = make_device(factory, production=False, tag="devel", version=40)
    client = TufDevice(device, tmp_path)
    targets = client.refresh()
    assert {t["version"] for t in targets.values()} == {40, 41, 42, 43}  # the CI view lists every build
    assert served_views.target_names_for(device=device) == {"intel-corei7-64-lmp-43", "raspberrypi4-64-lmp-43"}
    assert client.update() == 43  # the newest for its tag and hardware ID, downloaded and verified
    on_production_tag = make_device(factory, production=False, version=40)
    assert TufDevice(on_production_tag, tmp_path).update() == 42
    # A new CI build: a new CI targets version the device picks up.
    ci_build_publish(factory=factory, version=44, hardware_ids=HWIDS, tags=["devel"])
    assert client.update() == 44
    assert client.history[-1]["targets"] > client.history[0]["targets"]


def test_ci_targets_keep_the_newest_builds_of_each_tag(factory, settings):
    settings.BREAKWATER_TUF_CI_KEEP_BUILDS = 3
    ci_build_publish(factory=factory, version=1, hardware_ids=HWIDS, tags=["rare"])
    for version in range(10, 16):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=["busy"])
    device = make_device(factory, production=False, tag="busy")
    versions = {int(n.rsplit("-", 1)[1]) for n in Metadata.from_bytes(served_views.device_metadata(device=device, filename="targets.json")[0]).signed.targets}
    assert versions == {1, 13, 14, 15}  # the rare tag's only build survives the busy tag's
    # And the size limit wins over the count, dropping the oldest builds first.
    settings.BREAKWATER_TUF_CI_KEEP_BUILDS = 50
    settings.BREAKWATER_TUF_CI_TARGETS_MAX_BYTES = 3000
    ci_build_publish(factory=factory, version=16, hardware_ids=HWIDS, tags=["busy"])
    data, _ = served_views.device_metadata(device=device, filename="targets.json")
    versions = {int(n.rsplit("-", 1)[1]) for n in Metadata.from_bytes(data).signed.targets}
    assert len(data) <= 3000 and 16 in versions and 1 not in versions


# --- production view without waves -----------------------------------------------------------------


def test_a_production_tag_without_production_targets_serves_a_valid_empty_view(factory, builds, bob, tmp_path):
    device = make_device(factory, production=True, version=41)
    client = TufDevice(device, tmp_path)
    assert client.refresh() == {}  # CI builds are not production targets
    assert tuf_selectors.production_targets_version(factory=factory, tag=TAG) is None
    assert tuf_selectors.production_targets_versions(factory=factory, tag=TAG) == []
    # Still valid after the production root requires two targets signatures: the user signed it.
    offline_targets_key(factory=factory, actor=bob)
    assert client.refresh() == {} and client.versions()["root"] == 2
    assert client.update() == 41  # nothing to install
    # A tag first seen after the key change gets the same valid empty view.
    assert TufDevice(make_device(factory, production=True, tag="factory-floor"), tmp_path).refresh() == {}


def test_metadata_requests_name_only_known_files(factory):
    device = make_device(factory, production=True)
    for filename in ("2.root.json", "0.root.json", "root.json", "../targets.json", "1.targets.json", "", "mirrors.json"):
        with pytest.raises(NotFound):
            served_views.device_metadata(device=device, filename=filename)
    data, etag = served_views.device_metadata(device=device, filename="timestamp.json")
    assert json.loads(data)["signed"]["_type"] == "timestamp" and etag.startswith('"')


# --- wave signing primitives -------------------------------------------------------------------------


def test_wave_targets_need_an_offline_key_and_a_tagged_build(factory, builds, bob):
    expires = timezone.now() + timedelta(days=30)
    with pytest.raises(ApplicationError, match="no offline targets key"):
        wave_targets.wave_targets_build(factory=factory, tag=TAG, version=42, expires_at=expires)
    offline_targets_key(factory=factory, actor=bob)
    with pytest.raises(ApplicationError, match="no targets tagged devel"):
        wave_targets.wave_targets_build(factory=factory, tag=TAG, version=42, expires_at=expires, source_tag="devel")
    data = wave_targets.wave_targets_build(factory=factory, tag="other", version=42, expires_at=expires, source_tag=TAG)
    targets = Metadata.from_bytes(data)
    assert targets.signed.version == 42 and targets.signed.expires == expires.replace(microsecond=0)
    assert sorted(targets.signed.targets) == ["intel-corei7-64-lmp-42", "raspberrypi4-64-lmp-42"]
    assert all(t.custom["tags"] == ["other"] and t.custom["version"] == "42" for t in targets.signed.targets.values())
    online = TufKey.objects.get(factory=factory, role="targets", online=True).keyid
    assert list(targets.signatures) == [online]


def test_offline_signatures_are_verified_against_the_production_root(factory, builds, bob):
    archive = offline_targets_key(factory=factory, actor=bob)
    data = wave_targets.wave_targets_build(factory=factory, tag=TAG, version=42, expires_at=timezone.now() + timedelta(days=30))
    payload = wave_targets.wave_signing_payload(data)
    assert payload == Metadata.from_bytes(data).signed_bytes
    ak_payload = wave_targets.wave_aktualizr_signing_payload(data)
    stranger = tuf_keys.key_generate()
    online_keyid = TufKey.objects.get(factory=factory, role="targets", online=True).keyid
    [offline] = wave_targets.key_archive_signatures(payload=payload, archive_bytes=archive)
    [offline_ak] = wave_targets.key_archive_signatures(payload=ak_payload, archive_bytes=archive)
    bad = {"keyid": offline["keyid"], "sig": tuf_keys.payload_sign(tuf_keys.key_archive_read(archive)[0][1], b"other")["sig"]}
    for signatures, aktualizr, message in (
        ([tuf_keys.payload_sign(stranger, payload)], [tuf_keys.payload_sign(stranger, ak_payload)], f"Key {stranger.public_key.keyid} may not sign"),
        ([offline, bad], [offline_ak], f"signature by key {offline['keyid']} does not verify"),
        ([offline], [bad], f"signature by key {offline['keyid']} does not verify over this wave's targets \\(aktualizr"),
        ([offline], [offline], f"signature by key {offline['keyid']} does not verify over this wave's targets \\(aktualizr"),
        ([offline], [], f"Key {offline['keyid']} signed only one of the wave's two payloads"),
        ([], [offline_ak], f"Key {offline['keyid']} signed only one of the wave's two payloads"),
        ("not a list", [], "must be a list"),
    ):
        with pytest.raises(ApplicationError, match=message):
            wave_targets.wave_signatures_add(factory=factory, targets_bytes=data, signatures=signatures, aktualizr_signatures=aktualizr)
    same, met = wave_targets.wave_signatures_add(factory=factory, targets_bytes=data, signatures=[])
    assert not met and set(Metadata.from_bytes(same).signatures) == {online_keyid}
    signed, met = wave_targets.wave_signatures_add(factory=factory, targets_bytes=data, signatures=[offline], aktualizr_signatures=[offline_ak])
    assert met and set(Metadata.from_bytes(signed).signatures) == {online_keyid, offline["keyid"]}
    assert Metadata.from_bytes(signed).signed == Metadata.from_bytes(data).signed


def test_a_higher_threshold_needs_more_offline_signatures(factory, builds, bob):
    first = offline_targets_key(factory=factory, actor=bob)
    second = offline_targets_key(factory=factory, actor=bob, threshold=3)
    assert root_of(factory, "production").roles["targets"].threshold == 3
    data = wave_targets.wave_targets_build(factory=factory, tag=TAG, version=42, expires_at=timezone.now() + timedelta(days=30))
    tuf, aktualizr = wave_targets.key_archive_signatures_both(targets_bytes=data, archive_bytes=first)
    data, met = wave_targets.wave_signatures_add(factory=factory, targets_bytes=data, signatures=tuf, aktualizr_signatures=aktualizr)
    assert not met
    tuf, aktualizr = wave_targets.key_archive_signatures_both(targets_bytes=data, archive_bytes=second)
    data, met = wave_targets.wave_signatures_add(factory=factory, targets_bytes=data, signatures=tuf, aktualizr_signatures=aktualizr)
    assert met and len(Metadata.from_bytes(data).signatures) == 3


# --- tampering -----------------------------------------------------------------------------------------


def _forged(data, signer):
    metadata = Metadata.from_bytes(data)
    metadata.sign(signer)
    return metadata.to_bytes()


@pytest.mark.parametrize(
    "filename, tamper, error",
    [
        ("targets.json", lambda data: data.replace(b'"length":4096', b'"length":4097'), tuf_exceptions.RepositoryError),
        ("snapshot.json", lambda data: data[:-3] + b" }}", tuf_exceptions.RepositoryError),
        ("timestamp.json", lambda data: json.dumps(dict(json.loads(data), signatures=[])).encode(), tuf_exceptions.UnsignedMetadataError),
        ("timestamp.json", lambda data: _forged(data, tuf_keys.key_generate()), tuf_exceptions.UnsignedMetadataError),
        ("2.root.json", lambda data: _forged(data, tuf_keys.key_generate()), tuf_exceptions.UnsignedMetadataError),
    ],
    ids=["tampered-targets", "tampered-snapshot", "stripped-signature", "wrong-key", "forged-root"],
)
def test_tampered_bytes_stripped_signatures_and_wrong_keys_are_rejected(factory, builds, bob, tmp_path, filename, tamper, error):
    offline_targets_key(factory=factory, actor=bob)  # so there is a 2.root.json to forge
    device = make_device(factory, production=False, version=40)
    client = TufDevice(device, tmp_path)
    with pytest.raises(error):
        client.refresh(tamper=lambda name, data: tamper(data) if name == filename else data)
    assert client.update() == 42  # the honest repository still works


def test_online_keys_alone_cannot_publish_production_targets(factory, builds, bob, tmp_path):
    """Even with every online key, a server cannot make production devices accept new targets."""
    offline_targets_key(factory=factory, actor=bob)
    device = make_device(factory, production=True, version=41)
    client = TufDevice(device, tmp_path)
    client.refresh()
    keyring = tuf_keyring.Keyring(factory.id)
    forged_targets = wave_targets.wave_targets_build(factory=factory, tag=TAG, version=42, expires_at=timezone.now() + timedelta(days=30))
    from factory.tuf import metadata as md

    now = timezone.now()
    snapshot = md.snapshot_build(targets_bytes=forged_targets, targets_version=42, version=int(now.timestamp()) + 100, expires=now + timedelta(days=1))
    snapshot.sign(keyring.online_signer("snapshot"))
    snapshot_bytes = md.to_bytes(snapshot)
    timestamp = md.timestamp_build(snapshot_bytes=snapshot_bytes, version=int(now.timestamp()) + 100, expires=now + timedelta(days=1))
    timestamp.sign(keyring.online_signer("timestamp"))
    forged = {"targets.json": forged_targets, "snapshot.json": snapshot_bytes, "timestamp.json": md.to_bytes(timestamp)}
    with pytest.raises(tuf_exceptions.UnsignedMetadataError, match="targets was signed by 1/2 keys"):
        client.refresh(tamper=lambda name, data: forged.get(name, data))
    assert client.update() == 41


# --- periodic re-signing and caching -------------------------------------------------------------------


def test_timestamps_and_snapshots_are_re_signed_before_they_expire_once(factory, builds, tmp_path):
    from factory.tuf.tasks import tuf_views_refresh

    device = make_device(factory, production=True)
    client = TufDevice(device, tmp_path)
    client.refresh()
    ci = TufView.objects.get(factory=factory, kind="ci")
    # No wave on the tag yet: the device is served the factory's shared empty view.
    production = TufView.objects.get(factory=factory, kind="production", tag=EMPTY_TAG)
    assert tuf_views_refresh() == 0  # nothing is due yet
    later = timezone.now() + timedelta(hours=13)  # less than the margin left on 1-day timestamps
    assert tuf_views_refresh(now=later.isoformat()) == 2
    production.refresh_from_db()
    assert production.timestamp_expires_at >= later + timedelta(hours=23)
    assert tuf_views_refresh(now=later.isoformat()) == 0  # idempotent: already fresh
    before = client.versions()
    client.refresh()
    assert client.versions()["timestamp"] > before["timestamp"] and client.versions()["snapshot"] > before["snapshot"]
    # A second worker holding a claim on the tag keeps others off it.
    even_later = later + timedelta(hours=13)
    TufView.objects.filter(pk=ci.pk).update(refresh_claimed_until=even_later + timedelta(minutes=5))
    assert refresh.tag_views_refresh(anchor_id=ci.pk, now=even_later) is False
    assert refresh.tag_views_refresh(anchor_id=production.pk, now=even_later) is True


def test_ci_targets_are_re_signed_online_before_they_expire(factory, builds):
    ci = TufView.objects.get(factory=factory, kind="ci")
    later = timezone.now() + timedelta(days=61)
    assert refresh.tag_views_refresh(anchor_id=ci.pk, now=later)
    ci.refresh_from_db()
    assert ci.targets_version == 5 and ci.targets_expires_at > later + timedelta(days=89)


def test_after_warm_up_a_poll_costs_one_query(factory, builds, bob, django_assert_max_num_queries):
    offline_targets_key(factory=factory, actor=bob)
    devices = [make_device(factory, production=True) for _ in range(3)] + [make_device(factory, production=False)]
    for device in devices:
        for filename in ("timestamp.json", "snapshot.json", "targets.json"):
            served_views.device_metadata(device=device, filename=filename)
    for device in devices:
        for filename in ("timestamp.json", "snapshot.json", "targets.json"):
            with django_assert_max_num_queries(1):
                served_views.device_metadata(device=device, filename=filename)
        with django_assert_max_num_queries(1):
            served_views.target_names_for(device=device)


def test_stale_cache_entries_are_never_served(factory, builds, settings):
    """The cache may be shared and outlive a database (tests, restores): tokens make that safe."""
    device = make_device(factory, production=False)
    first, _ = served_views.device_metadata(device=device, filename="timestamp.json")
    ci_build_publish(factory=factory, version=43, hardware_ids=HWIDS, tags=[TAG])
    second, _ = served_views.device_metadata(device=device, filename="timestamp.json")
    assert first != second and Metadata.from_bytes(second).signed.version > Metadata.from_bytes(first).signed.version


# --- expiry monitor ------------------------------------------------------------------------------------


def test_the_expiry_monitor_warns_about_an_offline_root(factory, bob, settings):
    assert expiry.expiring_targets(factory=factory) == []
    root_key = tuf_keys.key_generate()
    change = root_changes.offline_key_add(factory=factory, actor=bob, role="root", public_key=root_key.public_key.to_dict())
    signatures = [
        {"document": p["document"], **tuf_keys.payload_sign(root_key, base64.b64decode(p["payload"]))}
        for p in tuf_selectors.root_change_payloads(change=change)
    ]
    root_changes.root_change_sign(factory=factory, actor=bob, signatures=signatures)
    assert expiry.expiring_targets(factory=factory) == []
    [warning] = expiry.expiring_targets(factory=factory, within_days=400)
    assert warning["kind"] == "root" and 360 <= warning["days_left"] <= 365 and "Root version 2 expires in" in warning["message"]
    # An offline root is never renewed by the server.
    settings.BREAKWATER_TUF_ROOT_REFRESH_DAYS = 400
    assert refresh.roots_renew_due() == 0


def test_the_demo_key_archive_is_written_once_and_signs_waves(factory, builds, bob, tmp_path):
    path = tmp_path / "keys" / "demo.tgz"
    written, created = root_changes.demo_offline_key(factory=factory, actor=bob, path=path)
    assert created and written == path and path.stat().st_mode & 0o777 == 0o600
    assert root_changes.demo_offline_key(factory=factory, actor=bob, path=path) == (path, False)
    assert root_of(factory, "production").version == 2  # registered once
    data = wave_targets.wave_targets_build(factory=factory, tag=TAG, version=42, expires_at=timezone.now() + timedelta(days=30))
    tuf, aktualizr = wave_targets.key_archive_signatures_both(targets_bytes=data, archive_bytes=path.read_bytes())
    assert wave_targets.wave_signatures_add(factory=factory, targets_bytes=data, signatures=tuf, aktualizr_signatures=aktualizr)[1]
    # An archive that is not one of the factory's keys (another database, a garbled file) is replaced.
    path.write_bytes(b"garbage")
    assert root_changes.demo_offline_key(factory=factory, actor=bob, path=path)[1]
    assert len(tuf_keys.key_archive_read(path.read_bytes())) == 1


def test_devices_naming_new_tags_share_one_empty_view_and_never_reach_the_tag_limit(factory, settings):
    settings.BREAKWATER_TUF_MAX_TAGS = 2
    served = set()
    for tag in ("a", "b", "c", "d"):
        data, _ = served_views.device_metadata(device=make_device(factory, production=True, tag=tag), filename="timestamp.json")
        served.add(data)
    assert len(served) == 1  # one shared view, signed once
    assert list(TufView.objects.filter(factory=factory, kind="production").values_list("tag", flat=True)) == [EMPTY_TAG]
    assert tuf_selectors.production_tags(factory=factory) == []
