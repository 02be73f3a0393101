"""Rotating an online key (targets, snapshot, timestamp): the new root version devices walk to,
and python-tuf devices (test and production, directly and through the gateway) that keep
verifying with versions that never go down; refusals that change nothing."""
import json

import pytest
from tuf.api.metadata import Metadata

from devices.fleet import fleet_seed
from devices.models import Device
from factory.errors import ApplicationError, Conflict, Forbidden
from factory.models import AuditEntry
from factory.tuf import keys as tuf_keys
from factory.tuf.models import TufKey, TufRepository, TufRoot, TufRootChange
from factory.tuf.services import root_changes
from factory.tuf.services.repository import ci_build_publish
from waves.services import wave_complete, wave_init, wave_rollout

from .test_tuf_repository import HWIDS, TAG, builds, make_device, root_of  # noqa: F401  (fixture)
from .tuf_client import TufDevice, offline_targets_key


def gateway_device(factory, *, production):
    """A registered device with its certificate, as the gateway authenticates it, on build 40."""
    fleet_seed(factory=factory, tag=TAG, ungrouped=1 if production else 0, test_devices=0 if production else 1, hardware_ids=HWIDS[:1])
    device = Device.objects.select_related("factory", "group").filter(factory=factory, is_production=production).latest("id")
    device.target_version = 40
    device.save(update_fields=["target_version"])
    return device


def online_keyid(factory, role):
    return TufKey.objects.get(factory=factory, role=role, online=True, retired_at__isnull=True).keyid


def signers_of(data):
    return {s["keyid"] for s in json.loads(bytes(data))["signatures"]}


def never_down(history):
    for before, after in zip(history, history[1:]):
        assert all(after[role] >= before[role] for role in before), (before, after)


@pytest.fixture
def released(factory, builds, bob):  # noqa: F811
    """Production targets of build 41 on TAG, signed by an offline key and the online targets key."""
    archive = offline_targets_key(factory=factory, actor=bob)
    wave = wave_init(factory=factory, actor=bob, name="v41", version=41, tag=TAG, key_archive=archive)
    wave_complete(wave=wave, actor=bob)
    return archive


@pytest.mark.parametrize("via_gateway", [False, True])
def test_devices_follow_each_online_key_rotation_and_keep_verifying(factory, bob, released, tmp_path, via_gateway):
    make = gateway_device if via_gateway else (lambda factory, production: make_device(factory, production=production, version=40))
    production = TufDevice(make(factory, production=True), tmp_path, via_gateway=via_gateway)
    test = TufDevice(make(factory, production=False), tmp_path, via_gateway=via_gateway)
    assert production.update() == 41 and test.update() == 42
    start_root = TufRepository.objects.get(factory=factory).root_version

    for step, role in enumerate(("targets", "snapshot", "timestamp"), start=1):
        old = online_keyid(factory, role)
        change = root_changes.online_key_rotate(factory=factory, actor=bob, role=role)
        assert change.status == TufRootChange.Status.APPLIED and change.action == f"key.rotate.{role}"
        new = online_keyid(factory, role)
        assert new != old and TufKey.objects.get(keyid=old).private_encrypted is None
        assert "private_encrypted" not in TufRootChange.objects.get(pk=change.pk).new_key
        for channel in ("ci", "production"):
            root = root_of(factory, channel)
            assert root.version == start_root + step
            assert new in root.roles[role].keyids and old not in root.roles[role].keyids
        # Every device walks root N -> N+1 and verifies what the new key signed.
        assert production.refresh() and test.refresh()
        for device in (production, test):
            assert device.versions()["root"] == start_root + step
            assert new in signers_of((device.metadata_dir / f"{role}.json").read_bytes())
        never_down(production.history)
        never_down(test.history)
        assert AuditEntry.objects.filter(factory=factory, action=f"tuf.key.rotate.{role}", actor=bob).exists()

    # The production targets kept their offline signature and version; devices stay on 41.
    assert production.update() == 41
    # New work is signed with the new keys: a CI build, and a wave of it for production.
    ci_build_publish(factory=factory, version=43, hardware_ids=HWIDS, tags=[TAG])
    assert test.update() == 43
    wave = wave_init(factory=factory, actor=bob, name="v43", version=43, tag=TAG, key_archive=released)
    wave_rollout(wave=wave, actor=bob, uuids=str(production.device.uuid))
    assert production.update() == 43
    assert online_keyid(factory, "targets") in signers_of((production.metadata_dir / "targets.json").read_bytes())
    never_down(production.history)


def test_a_rotation_with_the_root_key_offline_waits_for_it(factory, bob, builds, tmp_path):  # noqa: F811
    device = TufDevice(make_device(factory, production=False, version=40), tmp_path)
    device.refresh()
    root_key = tuf_keys.key_generate()
    change = root_changes.offline_key_add(factory=factory, actor=bob, role="root", public_key=root_key.public_key.to_dict())
    archive = tuf_keys.key_archive_write([("root", root_key)])
    root_changes.root_change_sign_with_archive(factory=factory, actor=bob, key_archive=archive)
    old = online_keyid(factory, "timestamp")
    version = TufRepository.objects.get(factory=factory).root_version

    change = root_changes.online_key_rotate(factory=factory, actor=bob, role="timestamp")
    assert change.status == TufRootChange.Status.PENDING
    assert online_keyid(factory, "timestamp") == old and TufRoot.objects.filter(factory=factory, version=version + 1).count() == 0
    change = root_changes.root_change_sign_with_archive(factory=factory, actor=bob, key_archive=archive)
    assert change.status == TufRootChange.Status.APPLIED and online_keyid(factory, "timestamp") != old
    device.refresh()
    assert device.versions()["root"] == version + 1
    never_down(device.history)


def test_an_abandoned_rotation_forgets_its_new_key(factory, bob, builds):  # noqa: F811
    root_key = tuf_keys.key_generate()
    root_changes.offline_key_add(factory=factory, actor=bob, role="root", public_key=root_key.public_key.to_dict())
    root_changes.root_change_sign_with_archive(factory=factory, actor=bob, key_archive=tuf_keys.key_archive_write([("root", root_key)]))
    change = root_changes.online_key_rotate(factory=factory, actor=bob, role="snapshot")
    assert "private_encrypted" in TufRootChange.objects.get(pk=change.pk).new_key
    root_changes.root_change_abandon(factory=factory, actor=bob)
    assert "private_encrypted" not in TufRootChange.objects.get(pk=change.pk).new_key


def test_bad_rotations_change_nothing(factory, bob, carol, builds):  # noqa: F811
    def state():
        return (
            list(TufKey.objects.filter(factory=factory).values_list("keyid", "retired_at").order_by("keyid")),
            TufRoot.objects.filter(factory=factory).count(),
            TufRootChange.objects.filter(factory=factory).count(),
        )

    before = state()
    with pytest.raises(Forbidden):
        root_changes.online_key_rotate(factory=factory, actor=carol, role="targets")
    for role in ("root", "bogus", ""):
        with pytest.raises(ApplicationError, match="Role must be one of targets, snapshot, timestamp"):
            root_changes.online_key_rotate(factory=factory, actor=bob, role=role)
    assert state() == before
    # An open wave on a targets rotation: its offline-signed targets would lose their online signature.
    archive = offline_targets_key(factory=factory, actor=bob)
    wave_init(factory=factory, actor=bob, name="open", version=42, tag=TAG, key_archive=archive)
    before = state()
    with pytest.raises(Conflict, match="Wave open is active"):
        root_changes.online_key_rotate(factory=factory, actor=bob, role="targets")
    assert state() == before
    # Snapshot and timestamp rotations re-sign the open wave's view and go through.
    assert root_changes.online_key_rotate(factory=factory, actor=bob, role="snapshot").status == "applied"
