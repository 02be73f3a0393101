"""The device gateway over real mutual TLS: who is refused, what a device is served, what it may
report. Each test talks to a gateway process sharing the test database."""
import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from devices import pki
from devices.models import Device, DeviceEvent
from devices.services import device_ca_get, device_certificates_renew, device_delete
from factory.tuf.services.repository import ci_build_publish

from .conftest import device_pool, wait_for, write_identity

HWID = "intel-corei7-64"


def get(pool, path, headers=None):
    return pool.request("GET", path, headers=headers or {})


def post_events(pool, events):
    return pool.request("POST", "/events", body=json.dumps(events), headers={"Content-Type": "application/json"})


def refused_at_handshake(pool, alert):
    """The server ends the TLS handshake with `alert`: no HTTP answer at all."""
    with pytest.raises(urllib3.exceptions.SSLError) as caught:
        get(pool, "/device")
    assert alert in str(caught.value).upper(), caught.value


def forge(tmp_path, device, *, ca_cert, ca_key, device_uuid=None, unit=None, production=True, server_ca=None):
    """A certificate for `device_uuid` (default: the device's) signed by an arbitrary CA."""
    key = pki.key_generate()
    cert = pki.device_certificate_issue(
        ca_cert=ca_cert,
        ca_key=ca_key,
        public_key=key.public_key(),
        device_uuid=device_uuid or uuid.UUID(device.uuid),
        factory_name=unit or device.response["factory"],
        production=production,
    )
    return write_identity(
        tmp_path / f"forged-{uuid.uuid4()}",
        key=key,
        chain_pem=pki.cert_pem(cert) + pki.cert_pem(ca_cert),
        server_ca_pem=server_ca or Path(device.server_ca).read_text(),
        device_uuid=device_uuid or device.uuid,
    )


# --- refused ------------------------------------------------------------------------------------


def test_a_client_without_a_certificate_is_refused_at_the_handshake(gateway, factory, register):
    device = register(factory)
    refused_at_handshake(device_pool(gateway, server_ca=device.server_ca), "CERTIFICATE_REQUIRED")


def test_a_certificate_from_another_ca_is_refused_even_for_a_registered_uuid(gateway, factory, register, tmp_path):
    device = register(factory)
    # Same subject names as the real factory CA, different key: a forgery.
    real_ca = pki.cert_load(device_ca_get(factory=factory).certificate)
    forged_key = pki.key_generate()
    forged_ca = (
        x509.CertificateBuilder()
        .subject_name(real_ca.subject)
        .issuer_name(real_ca.subject)
        .public_key(forged_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(timezone.utc) - timedelta(minutes=1))
        .not_valid_after(datetime.now(timezone.utc) + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(forged_key, hashes.SHA256())
    )
    forged = forge(tmp_path, device, ca_cert=forged_ca, ca_key=forged_key)
    refused_at_handshake(device_pool(gateway, forged), "UNKNOWN_CA")


def test_a_certificate_from_another_factorys_ca_is_refused(gateway, factory, other_factory, register, tmp_path):
    device = register(factory)
    other_ca = device_ca_get(factory=other_factory)
    # It chains to the device root (so the handshake passes) but names a device of `factory`.
    forged = forge(tmp_path, device, ca_cert=pki.cert_load(other_ca.certificate), ca_key=pki.key_decrypt(other_ca.private_key))
    response = get(device_pool(gateway, forged), "/device")
    assert response.status == 403
    assert "factory CA" in response.json()["error"]


def test_a_certificate_for_another_devices_uuid_is_refused(gateway, factory, register, tmp_path):
    mine, victim = register(factory), register(factory)
    ca = device_ca_get(factory=factory)
    # Even signed by the right CA, a certificate that is not the victim's registered one is refused.
    forged = forge(tmp_path, mine, ca_cert=pki.cert_load(ca.certificate), ca_key=pki.key_decrypt(ca.private_key), device_uuid=uuid.UUID(victim.uuid))
    pool = device_pool(gateway, forged)
    assert get(pool, "/device").status == 403
    assert post_events(pool, [{"type": "install-completed", "target": f"{HWID}-lmp-42", "success": False}]).status == 403
    assert get(pool, "/repo/timestamp.json").status == 403


def test_an_unknown_or_deleted_device_is_refused(gateway, factory, register, alice):
    device = register(factory)
    pool = device_pool(gateway, device)
    assert get(pool, "/device").status == 200
    device_delete(device=Device.objects.get(uuid=device.uuid), actor=alice)
    response = get(device_pool(gateway, device), "/device")
    assert response.status == 403
    assert "not registered" in response.json()["error"]


def test_a_re_keyed_devices_old_certificate_is_refused(gateway, factory, register, alice):
    device = register(factory)
    assert get(device_pool(gateway, device), "/device").status == 200
    csr = pki.device_csr_build(private_key=pki.key_generate(), device_uuid=device.uuid, factory_name=factory.name, production=True)
    device_certificates_renew(factory=factory, actor=alice, csrs={device.uuid: csr})
    assert get(device_pool(gateway, device), "/device").status == 403


# --- production or test follows the certificate ----------------------------------------------


def test_production_or_test_follows_the_certificate(gateway, factory, register):
    from factory.tuf.selectors import root_get

    ci_build_publish(factory=factory, version=42, hardware_ids=[HWID], tags=["production"])
    production = register(factory, production=True)
    test = register(factory, production=False)
    prod_facts = get(device_pool(gateway, production), "/device").json()
    test_facts = get(device_pool(gateway, test), "/device").json()
    assert prod_facts["production"] is True and test_facts["production"] is False
    assert Device.objects.get(uuid=production.uuid).is_production is True
    assert Device.objects.get(uuid=test.uuid).is_production is False
    # Each is served the root of its own channel.
    prod_root = get(device_pool(gateway, production), "/repo/1.root.json")
    test_root = get(device_pool(gateway, test), "/repo/1.root.json")
    assert prod_root.status == test_root.status == 200
    assert prod_root.data == root_get(factory=factory, channel="production", version=1)
    assert test_root.data == root_get(factory=factory, channel="ci", version=1)
    # The test device sees CI build 42; the production device sees production targets (no wave yet).
    test_targets = json.loads(get(device_pool(gateway, test), "/repo/targets.json").data)["signed"]["targets"]
    prod_targets = json.loads(get(device_pool(gateway, production), "/repo/targets.json").data)["signed"]["targets"]
    assert f"{HWID}-lmp-42" in test_targets
    assert prod_targets == {}


# --- what a device is served ------------------------------------------------------------------


def test_timestamp_polls_answer_304_when_the_etag_matches(gateway, factory, register):
    device = register(factory)
    pool = device_pool(gateway, device)
    first = get(pool, "/repo/timestamp.json")
    assert first.status == 200 and first.headers["ETag"]
    json.loads(first.data)
    again = get(pool, "/repo/timestamp.json", {"If-None-Match": first.headers["ETag"]})
    assert again.status == 304 and again.data == b""
    assert again.headers["ETag"] == first.headers["ETag"]
    assert get(pool, "/repo/timestamp.json", {"If-None-Match": '"stale"'}).status == 200


def test_a_test_device_downloads_its_targets_with_the_stated_hash_and_length(gateway, factory, register):
    ci_build_publish(factory=factory, version=42, hardware_ids=[HWID], tags=["main"])
    device = register(factory, production=False, tag="main")
    pool = device_pool(gateway, device)
    targets = json.loads(get(pool, "/repo/targets.json", {"x-ats-tags": "main"}).data)["signed"]["targets"]
    name = f"{HWID}-lmp-42"
    blob = get(pool, f"/targets/{name}", {"x-ats-tags": "main"})
    assert blob.status == 200
    assert len(blob.data) == targets[name]["length"]
    assert hashlib.sha256(blob.data).hexdigest() == targets[name]["hashes"]["sha256"]
    # A production device is not served CI targets.
    production = register(factory, production=True, tag="main")
    assert get(device_pool(gateway, production), f"/targets/{name}", {"x-ats-tags": "main"}).status == 404


def test_check_ins_update_last_seen_target_tag_and_targets_version_seen(gateway, factory, register):
    ci_build_publish(factory=factory, version=42, hardware_ids=[HWID], tags=["main"])
    device = register(factory, production=False, tag="main")
    row = Device.objects.get(uuid=device.uuid)
    assert row.last_seen is None and row.targets_version_seen is None
    pool = device_pool(gateway, device)
    headers = {"x-ats-tags": "main", "x-ats-target": f"{HWID}-lmp-42"}
    served = json.loads(get(pool, "/repo/targets.json", headers).data)["signed"]["version"]
    for _ in range(20):
        assert get(pool, "/repo/timestamp.json", headers).status == 200

    def flushed():
        row.refresh_from_db()
        return row.last_seen is not None and row.target_version == 42

    assert wait_for(flushed)
    assert row.target_name == f"{HWID}-lmp-42" and row.tag == "main"
    assert row.targets_version_seen == served


def test_a_device_reports_its_own_events(gateway, factory, register):
    device = register(factory)
    pool = device_pool(gateway, device)
    # Times are accepted within a window around the server's clock (BREAKWATER_EVENT_TIME_WINDOW).
    reported = (datetime.now(timezone.utc) - timedelta(hours=1)).replace(microsecond=0)
    response = post_events(
        pool,
        [
            {"type": "download-started", "target": f"{HWID}-lmp-42"},
            {"type": "install-completed", "target": f"{HWID}-lmp-42", "success": False, "detail": "boot failed", "time": reported.strftime("%Y-%m-%dT%H:%M:%SZ")},
        ],
    )
    assert response.status == 202
    events = wait_for(lambda: list(DeviceEvent.objects.filter(device__uuid=device.uuid).order_by("event_type")))
    assert [(e.event_type, e.target_version, e.success) for e in events] == [("download-started", 42, None), ("install-completed", 42, False)]
    assert events[1].detail == "boot failed"
    assert events[1].reported_at == reported


def test_a_device_cannot_post_events_for_another(gateway, factory, register):
    mine, other = register(factory), register(factory)
    pool = device_pool(gateway, mine)
    response = post_events(
        pool,
        [
            {"type": "download-started", "target": f"{HWID}-lmp-42"},
            {"type": "install-completed", "target": f"{HWID}-lmp-42", "success": False, "device": other.uuid},
        ],
    )
    assert response.status == 403
    # A later report of its own goes through, so the refused one would have arrived by now too.
    assert post_events(pool, [{"type": "install-started", "target": f"{HWID}-lmp-42"}]).status == 202
    assert wait_for(lambda: DeviceEvent.objects.filter(device__uuid=mine.uuid).exists())
    assert list(DeviceEvent.objects.filter(device__uuid=mine.uuid).values_list("event_type", flat=True)) == ["install-started"]
    assert not DeviceEvent.objects.filter(device__uuid=other.uuid).exists()


@pytest.mark.parametrize(
    "body, status",
    [
        ([{"type": "exploded"}], 400),
        ([{"type": "install-completed", "success": "yes"}], 400),
        ([{"type": "install-completed", "version": -1}], 400),
        ([{"type": "install-completed", "time": "yesterday"}], 400),
        ({"events": []}, 400),
        ([{"type": "install-started"}] * 101, 413),
    ],
)
def test_bad_event_reports_are_refused_and_store_nothing(gateway, factory, register, body, status):
    device = register(factory)
    pool = device_pool(gateway, device)
    assert post_events(pool, body).status == status
    assert post_events(pool, [{"type": "install-started"}]).status == 202
    assert wait_for(lambda: DeviceEvent.objects.filter(device__uuid=device.uuid).exists())
    assert DeviceEvent.objects.filter(device__uuid=device.uuid).count() == 1


def test_only_known_resources_and_methods_are_served(gateway, factory, register):
    pool = device_pool(gateway, register(factory))
    assert get(pool, "/repo/../../etc/passwd").status == 404
    assert get(pool, "/repo/999.root.json").status == 404
    assert get(pool, "/nothing").status == 404
    assert pool.request("POST", "/repo/timestamp.json").status == 405
    assert get(pool, "/events").status == 405
