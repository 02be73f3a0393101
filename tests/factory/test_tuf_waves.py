"""Waves end to end, as devices' TUF clients see them: through the wave services (and the
dashboard for key archives), with python-tuf's `ngclient.Updater` on every device.

Transactions really commit here, so the cache invalidation that runs on commit is exercised.
"""
import base64
import json
import logging
import uuid
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.urls import reverse
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata

from devices.models import DeviceGroup
from devices.services import device_create, device_group_create, devices_assign_group
from factory.errors import ApplicationError
from factory.tuf import keys as tuf_keys
from factory.tuf import selectors as tuf_selectors
from factory.tuf.models import TufView
from factory.tuf.services import refresh as tuf_refresh, root_changes, wave_targets
from factory.tuf.services.repository import ci_build_publish
from waves import expiry, served_views
from waves.models import Wave
from waves.services import wave_cancel, wave_complete, wave_init, wave_rollout, wave_sign

from .tuf_client import TufDevice, offline_targets_key

pytestmark = pytest.mark.django_db(transaction=True)

TAG = "production"
HWIDS = ["intel-corei7-64", "raspberrypi4-64"]


@pytest.fixture
def archive(factory, bob):
    for version in (40, 41, 42, 43, 44):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    return offline_targets_key(factory=factory, actor=bob)


@pytest.fixture
def fleet(factory, archive, tmp_path):
    """Production devices in canary (2) and beta (2), two without a group, two test devices."""
    groups = {name: device_group_create(factory=factory, name=name) for name in ("canary", "beta")}
    devices = {}
    plan = [("canary", True), ("canary", True), ("beta", True), ("beta", True), (None, True), (None, True), (None, False), (None, False)]
    for index, (group, production) in enumerate(plan):
        device = device_create(
            factory=factory, uuid=uuid.uuid4(), name=f"{'prod' if production else 'test'}-{index}", tag=TAG,
            is_production=production, group=groups.get(group), hardware_id=HWIDS[index % 2],
        )  # fmt: skip
        device.target_version = 40
        device.save(update_fields=["target_version"])
        devices[device.name] = TufDevice(device, tmp_path)
    return devices


def make_wave(factory, bob, archive, name, version, **kwargs):
    wave = wave_init(factory=factory, actor=bob, name=name, version=version, tag=TAG, **kwargs)
    return wave_sign(wave=wave, actor=bob, key_archive=archive)


def versions_of(client):
    return {name.rsplit("-lmp-", 1)[1] for name in client.targets()}


def test_production_devices_get_production_targets_and_staged_ones_the_wave(factory, bob, archive, fleet):
    complete_41 = make_wave(factory, bob, archive, "v41", 41)
    wave_complete(wave=complete_41, actor=bob)
    for client in fleet.values():
        client.refresh()
    production = [c for c in fleet.values() if c.device.is_production]
    assert all(versions_of(c) == {"41"} for c in production)
    assert all(versions_of(c) == {"40", "41", "42", "43", "44"} for c in fleet.values() if not c.device.is_production)

    wave = make_wave(factory, bob, archive, "v42", 42)
    canary = [c for c in production if c.device.group and c.device.group.name == "canary"]
    ungrouped = [c for c in production if c.device.group is None]
    wave_rollout(wave=wave, actor=bob, group="canary")  # a full-group rollout
    wave_rollout(wave=wave, actor=bob, uuids=str(ungrouped[0].device.uuid))
    staged = canary + ungrouped[:1]
    for client in fleet.values():
        client.refresh()
    for client in production:
        expected = {"41", "42"} if client in staged else {"41"}
        assert versions_of(client) == expected, client.device.name
        if client in staged:
            assert client.update() == 42
    # The staged view serves the wave's targets bytes exactly.
    served, _ = served_views.device_metadata(device=canary[0].device, filename="targets.json")
    assert served == bytes(Wave.objects.get(pk=wave.pk).targets)
    # A device that joins a fully staged group later gets the wave too.
    late = next(c for c in production if c.device.group and c.device.group.name == "beta")
    # No invalidation call needed: cached staging decisions are keyed by the device's group.
    devices_assign_group(factory=factory, uuids=[late.device.uuid], group=DeviceGroup.objects.get(name="canary"), actor=bob)
    late.device.refresh_from_db()
    late.refresh()
    assert versions_of(late) == {"41", "42"}

    # Complete: every production device on the tag gets the wave's targets, unchanged.
    wave_complete(wave=wave, actor=bob)
    for client in production:
        client.refresh()
        assert versions_of(client) == {"41", "42"}
    served, _ = served_views.device_metadata(device=ungrouped[1].device, filename="targets.json")
    assert served == bytes(Wave.objects.get(pk=wave.pk).targets)
    assert tuf_selectors.production_targets_version(factory=factory, tag=TAG) == 42
    assert tuf_selectors.production_targets_versions(factory=factory, tag=TAG) == [41, 42]
    assert not TufView.objects.filter(kind="wave").exists()


def test_after_cancel_the_wave_is_gone_and_devices_that_fetched_it_hold(factory, bob, archive, fleet):
    production = [c for c in fleet.values() if c.device.is_production]
    fetched, installed, unstaged = production[0], production[1], production[2:]
    wave = make_wave(factory, bob, archive, "v42", 42)
    wave_rollout(wave=wave, actor=bob, uuids=[str(fetched.device.uuid), str(installed.device.uuid)])
    for client in fleet.values():
        client.refresh()
    assert all("42" not in versions_of(c) for c in unstaged)
    assert installed.update() == 42
    assert "42" in versions_of(fetched)  # fetched the metadata, did not install
    wave_cancel(wave=wave, actor=bob)

    for client in unstaged:
        client.refresh()
        assert "42" not in versions_of(client)
    # The device that fetched the wave refuses the lower production version: a TUF rollback.
    with pytest.raises(tuf_exceptions.BadVersionNumberError):
        fetched.refresh()
    assert fetched.update() == 40 and isinstance(fetched.last_error, tuf_exceptions.BadVersionNumberError)
    assert installed.update() == 42 and isinstance(installed.last_error, tuf_exceptions.BadVersionNumberError)  # stays on 42
    # Until a later wave completes: then both move on.
    wave_complete(wave=make_wave(factory, bob, archive, "v43", 43), actor=bob)
    assert fetched.update() == 43 and installed.update() == 43
    assert all(c.update() == 43 for c in unstaged)


def test_a_wave_below_the_threshold_is_invisible_to_every_device(factory, bob, archive, fleet, tmp_path):
    second = offline_targets_key(factory=factory, actor=bob, threshold=3)
    wave = wave_init(factory=factory, actor=bob, name="v42", version=42, tag=TAG)
    assert wave.status == "unsigned"  # the online key alone
    with pytest.raises(ApplicationError, match="not signed by enough offline targets keys"):
        wave_targets.wave_view_publish(wave=wave)
    wave = wave_sign(wave=wave, actor=bob, key_archive=archive)
    assert wave.status == "unsigned"  # two of three signatures
    assert not TufView.objects.filter(kind="wave").exists()
    for client in fleet.values():
        if client.device.is_production:
            client.refresh()
            assert versions_of(client) == set()
    wave = wave_sign(wave=wave, actor=bob, key_archive=second)
    assert wave.status == "active" and len(Metadata.from_bytes(bytes(wave.targets)).signatures) == 3
    client = next(c for c in fleet.values() if c.device.is_production)
    wave_rollout(wave=wave, actor=bob, uuids=str(client.device.uuid))
    assert client.update() == 42  # the client verified three signatures under threshold 3


def test_signatures_made_elsewhere_are_accepted_over_the_signing_payload(factory, bob, archive, fleet):
    wave = wave_init(factory=factory, actor=bob, name="v42", version=42, tag=TAG)
    payload = wave_targets.wave_signing_payload(bytes(wave.targets))
    ak_payload = wave_targets.wave_aktualizr_signing_payload(bytes(wave.targets))
    [(_, signer)] = tuf_keys.key_archive_read(archive)
    wave = wave_sign(
        wave=wave, actor=bob, signatures=[tuf_keys.payload_sign(signer, payload)], aktualizr_signatures=[tuf_keys.payload_sign(signer, ak_payload)]
    )
    assert wave.status == "active"


def test_metadata_versions_never_go_down_for_any_device(factory, bob, archive, fleet):
    """init, rollout, complete, cancel and refresh, with every device polling after each step."""
    production = [c for c in fleet.values() if c.device.is_production]
    held = set()

    def poll_all(resigned=False):
        for client in fleet.values():
            before = client.versions()
            result = client.poll()
            after = client.versions()
            if result is None:
                # Only the designed case: a device that fetched a canceled wave.
                assert client.device.pk in held and isinstance(client.last_error, tuf_exceptions.BadVersionNumberError), client.device.name
            for role in ("root", "timestamp", "snapshot", "targets"):
                if before[role] is not None:
                    assert after[role] >= before[role], (client.device.name, role, before, after)
            if resigned and before["timestamp"] is not None:
                # Re-signed views are picked up: never an equal version that the client would ignore.
                assert after["timestamp"] > before["timestamp"], (client.device.name, before, after)

    def refresh_all_views(hours):
        from datetime import timedelta

        from django.utils import timezone

        moment = timezone.now() + timedelta(hours=hours)
        for anchor in TufView.objects.filter(kind__in=["ci", "production"]):
            tuf_refresh.tag_views_refresh(anchor_id=anchor.pk, now=moment)

    poll_all()
    w42 = make_wave(factory, bob, archive, "v42", 42)
    poll_all()
    wave_rollout(wave=w42, actor=bob, group="canary")
    poll_all()
    refresh_all_views(13)
    poll_all(resigned=True)
    wave_rollout(wave=w42, actor=bob, limit="1")
    poll_all()
    wave_complete(wave=w42, actor=bob)
    poll_all()
    w43 = make_wave(factory, bob, archive, "v43", 43)
    poll_all()
    wave_rollout(wave=w43, actor=bob, group="beta")
    poll_all()
    refresh_all_views(27)
    poll_all(resigned=True)
    held.update(c.device.pk for c in production if c.device.group and c.device.group.name == "beta")
    wave_cancel(wave=w43, actor=bob)
    poll_all()
    refresh_all_views(41)
    poll_all(resigned=True)
    w44 = make_wave(factory, bob, archive, "v44", 44)
    wave_rollout(wave=w44, actor=bob, limit="50%")
    poll_all()
    wave_complete(wave=w44, actor=bob)
    held.clear()
    poll_all()
    assert all(c.last_error is None and c.update() == 44 for c in production)


def _secret_strings(archive):
    """Every form the archive's private key could take in storage or a log line."""
    [(_, signer)] = tuf_keys.key_archive_read(archive)
    pem = signer.private_bytes
    raw = json.loads(next(iter(_sec_members(archive))))["keyval"]["private"]
    seed = bytes.fromhex(raw[:64])
    body = b"".join(line for line in pem.splitlines() if b"-----" not in line)
    return [raw.encode(), raw[:64].encode(), raw[:64].upper().encode(), seed, base64.b64encode(seed), body, pem]


def _sec_members(archive):
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar:
            if member.name.endswith(".sec"):
                yield tar.extractfile(member).read()


def _database_bytes():
    """All values of every row of every table, as bytes."""
    chunks = []
    for model in apps.get_models():
        for row in model.objects.all().values_list():
            for value in row:
                if isinstance(value, (bytes, bytearray, memoryview)):
                    chunks.append(bytes(value))
                elif value is not None:
                    chunks.append(json.dumps(value, default=str).encode() if isinstance(value, (dict, list)) else str(value).encode())
    return b"\n".join(chunks)


def test_signing_from_the_dashboard_leaves_no_key_material_anywhere(factory, bob, archive, fleet, client, caplog):
    caplog.set_level(logging.DEBUG)
    wave = wave_init(factory=factory, actor=bob, name="v42", version=42, tag=TAG)
    client.force_login(bob)
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client.post(reverse("wave-sign", args=[wave.name]), {"key_archive": SimpleUploadedFile("keys.tgz", archive)})
    assert response.status_code in (200, 302), response.content[:500]
    assert Wave.objects.get(pk=wave.pk).status == "active"
    # A device polls, so the views and caches are warm too.
    some = next(c for c in fleet.values() if c.device.is_production)
    wave_rollout(wave=wave, actor=bob, uuids=str(some.device.uuid))
    assert some.update() == 42
    # A bad archive upload is refused without echoing anything either.
    bad = archive[:-40]
    client.post(reverse("wave-sign", args=[wave.name]), {"key_archive": SimpleUploadedFile("keys.tgz", bad)})

    stored = _database_bytes()
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records).encode()
    cached = b""
    if "filebased" in settings.CACHES["default"]["BACKEND"].lower():
        cached = b"".join(p.read_bytes() for p in Path(settings.CACHES["default"]["LOCATION"]).glob("*.djcache"))
    for secret in _secret_strings(archive):
        assert secret not in stored
        assert secret not in logged
        assert secret not in cached
    # The archive's public key did reach the database: the scan can see key material at all.
    [(_, signer)] = tuf_keys.key_archive_read(archive)
    assert signer.public_key.keyval["public"].encode() in stored


def test_expiring_production_and_wave_targets_are_warned_about(factory, bob, archive, fleet):
    assert expiry.expiring_targets(factory=factory) == []
    wave = make_wave(factory, bob, archive, "v41", 41, expires_days=10)
    [warning] = expiry.expiring_targets(factory=factory)
    assert warning["kind"] == "wave-targets" and warning["wave"] == "v41" and warning["days_left"] in (9, 10)
    assert "wave v41" in warning["message"] and not warning["expired"]
    wave_complete(wave=wave, actor=bob)
    [warning] = expiry.expiring_targets(factory=factory)
    assert warning["kind"] == "production-targets" and warning["tag"] == TAG and warning["version"] == 41
    assert expiry.expiring_targets(factory=factory, within_days=5) == []
    # A newer wave with the default year of validity replaces them, and the warning goes away.
    wave_complete(wave=make_wave(factory, bob, archive, "v42", 42), actor=bob)
    assert expiry.expiring_targets(factory=factory) == []


def test_removing_an_offline_key_has_the_others_re_sign_production_targets(factory, bob, archive, fleet):
    second = offline_targets_key(factory=factory, actor=bob)
    wave_complete(wave=make_wave(factory, bob, archive, "v41", 41), actor=bob)  # signed by the first key only
    production = [c for c in fleet.values() if c.device.is_production]
    for client in production:
        client.refresh()
    [(_, first_signer)] = tuf_keys.key_archive_read(archive)
    change = root_changes.offline_key_retire(factory=factory, actor=bob, keyid=first_signer.public_key.keyid)
    assert change.status == "pending"
    payloads = {p["document"]: p for p in tuf_selectors.root_change_payloads(change=change)}
    # The tag's production targets and the empty baseline both relied on the key.
    assert payloads[f"production-targets:{TAG}"]["missing"] and payloads["baseline-targets"]["missing"]
    assert not payloads["production-root"]["missing"]  # the online root key signed the roots
    signatures = [
        {"document": name, **s}
        for name, p in payloads.items()
        if p["kind"] in ("production", "baseline")
        for s in wave_targets.key_archive_signatures(payload=base64.b64decode(p["payload"]), archive_bytes=second)
    ]
    assert root_changes.root_change_sign(factory=factory, actor=bob, signatures=signatures).status == "applied"
    for client in production:
        client.refresh()  # new root without the key, production targets re-signed: still valid
        assert versions_of(client) == {"41"}
    # The removed key can no longer sign a wave.
    wave = wave_init(factory=factory, actor=bob, name="v42", version=42, tag=TAG)
    with pytest.raises(ApplicationError, match="may not sign"):
        wave_sign(wave=wave, actor=bob, key_archive=archive)
    with pytest.raises(ApplicationError, match="only offline targets key"):
        [(_, second_signer)] = tuf_keys.key_archive_read(second)
        root_changes.offline_key_retire(factory=factory, actor=bob, keyid=second_signer.public_key.keyid)


def test_through_the_gateway_each_device_gets_its_own_view(factory, bob, archive, tmp_path):
    from devices.fleet import fleet_seed
    from devices.models import Device

    fleet_seed(factory=factory, tag=TAG, groups={"canary": 2}, ungrouped=2, test_devices=1, version=40, hardware_ids=HWIDS)
    clients = {d.name: TufDevice(d, tmp_path, via_gateway=True) for d in Device.objects.filter(factory=factory).select_related("group")}
    wave = make_wave(factory, bob, archive, "v42", 42)
    wave_rollout(wave=wave, actor=bob, group="canary")
    for name, client in clients.items():
        client.refresh()
        if name.startswith("test-"):
            assert versions_of(client) == {"40", "41", "42", "43", "44"}
        elif name.startswith("canary-"):
            assert versions_of(client) == {"42"} and client.update() == 42
        else:
            assert versions_of(client) == set() and client.update() == 40
    wave_complete(wave=wave, actor=bob)
    assert all(c.update() == 42 for n, c in clients.items() if not n.startswith("test-"))
