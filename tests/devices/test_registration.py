"""Registration: tokens, CSR checks, the certificate a device gets, and the registration endpoint."""
import json
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from devices import pki
from devices.gateway_identity import gateway_identity_get
from devices.models import Device, DeviceGroup, RegistrationToken
from devices.services import (
    device_ca_get,
    device_certificates_renew,
    device_delete,
    devices_register,
    registration_token_create,
    registration_token_revoke,
)
from factory.errors import ApplicationError, Forbidden
from factory.models import AuditEntry


def csr_for(factory_name, *, production=True, device_uuid=None, key=None):
    device_uuid = device_uuid or uuid.uuid4()
    key = key or pki.key_generate()
    return device_uuid, pki.device_csr_build(private_key=key, device_uuid=device_uuid, factory_name=factory_name, production=production)


def post(body):
    return Client().post("/devices/register/", json.dumps(body) if not isinstance(body, (bytes, str)) else body, content_type="application/json")


@pytest.fixture
def canary(factory):
    return DeviceGroup.objects.create(factory=factory, name="canary")


@pytest.fixture
def token(factory, canary):
    return registration_token_create(factory=factory, actor=None, tag="production", group=canary, production=True, name="line 1")[1]


def test_a_device_registers_with_a_token_and_gets_its_certificate_tag_and_group(factory, token, canary):
    device_uuid, csr = csr_for("acme")
    response = post({"token": token, "csr": csr, "name": "press-17", "hardware_id": "intel-corei7-64"})
    assert response.status_code == 201
    data = response.json()
    assert data["uuid"] == str(device_uuid) and data["tag"] == "production" and data["group"] == "canary" and data["production"] is True
    cert = pki.cert_load(data["certificate"])
    subject = cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == str(device_uuid)
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "acme"
    assert subject.get_attributes_for_oid(NameOID.BUSINESS_CATEGORY)[0].value == "production"
    # Issued by the factory's device CA, itself issued by the device root the gateway trusts.
    ca = pki.cert_load(data["ca_certificate"])
    assert pki.issued_by(cert, ca)
    assert pki.issued_by(ca, pki.cert_load(gateway_identity_get().device_root_certificate))
    assert data["gateway"]["url"].startswith("https://") and "BEGIN CERTIFICATE" in data["gateway"]["ca_certificate"]
    device = Device.objects.get(uuid=device_uuid)
    assert (device.name, device.tag, device.group, device.is_production, device.hardware_id) == ("press-17", "production", canary, True, "intel-corei7-64")
    assert device.certificate_serial == pki.serial_hex(cert)
    assert RegistrationToken.objects.get().uses == 1
    assert AuditEntry.objects.filter(action="device.register", target=str(device_uuid)).exists()


def test_a_csr_without_business_category_makes_a_test_device(factory, token):
    device_uuid, csr = csr_for("acme", production=False)
    data = post({"token": token, "csr": csr}).json()
    assert data["production"] is False
    assert pki.cert_load(data["certificate"]).subject.get_attributes_for_oid(NameOID.BUSINESS_CATEGORY) == []
    device = Device.objects.get(uuid=device_uuid)
    assert device.is_production is False and device.name == str(device_uuid)


def test_a_token_without_production_refuses_a_production_csr(factory):
    _, plain = registration_token_create(factory=factory, actor=None, tag="production", production=False)
    response = post({"token": plain, "csr": csr_for("acme", production=True)[1]})
    assert response.status_code == 403 and "production" in response.json()["error"]
    assert not Device.objects.exists()
    assert RegistrationToken.objects.get().uses == 0


def test_bad_tokens_are_refused_and_register_nothing(factory):
    revoked_row, revoked = registration_token_create(factory=factory, actor=None, tag="t")
    registration_token_revoke(token=revoked_row, actor=None)
    expired_row, expired = registration_token_create(factory=factory, actor=None, tag="t")
    RegistrationToken.objects.filter(pk=expired_row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    _, once = registration_token_create(factory=factory, actor=None, tag="t", max_uses=1)
    assert post({"token": once, "csr": csr_for("acme", production=False)[1]}).status_code == 201
    for plain, why in [("bwreg_nope_nope", "not valid"), (revoked, "revoked"), (expired, "expired"), (once, "limit"), ("", "required")]:
        response = post({"token": plain, "csr": csr_for("acme", production=False)[1]})
        assert response.status_code in (400, 403), plain
        assert why in response.json()["error"]
    assert Device.objects.count() == 1


def _rsa_csr(bits, factory_name="acme"):
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, factory_name), x509.NameAttribute(NameOID.COMMON_NAME, str(uuid.uuid4()))])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _csr_with(attributes):
    key = pki.key_generate()
    return x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes)).sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _tampered_csr():
    _, csr = csr_for("acme")
    der = bytearray(x509.load_pem_x509_csr(csr.encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # flip a bit of the signature
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    "make_csr, message",
    [
        (lambda: csr_for("globex")[1], "OU must be the factory"),
        (lambda: _csr_with([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "acme"), x509.NameAttribute(NameOID.COMMON_NAME, "press-17")]), "not a UUID"),
        (
            lambda: _csr_with(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "acme"),
                    x509.NameAttribute(NameOID.COMMON_NAME, str(uuid.uuid4())),
                    x509.NameAttribute(NameOID.BUSINESS_CATEGORY, "prod"),
                ]
            ),
            "businessCategory",
        ),
        (_tampered_csr, "signature"),
        (lambda: _rsa_csr(1024), "at least 2048"),
        (lambda: "not a csr", "not a valid PEM"),
    ],
)
def test_bad_csrs_are_refused_with_a_reason(factory, token, make_csr, message):
    response = post({"token": token, "csr": make_csr()})
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert not Device.objects.exists()
    assert RegistrationToken.objects.get().uses == 0


def test_an_rsa_2048_csr_is_accepted(factory, token):
    assert post({"token": token, "csr": _rsa_csr(2048)}).status_code == 201


def test_a_uuid_registers_once(factory, token):
    device_uuid, csr = csr_for("acme")
    assert post({"token": token, "csr": csr}).status_code == 201
    again = post({"token": token, "csr": csr_for("acme", device_uuid=device_uuid)[1]})
    assert again.status_code == 409
    assert Device.objects.count() == 1 and RegistrationToken.objects.get().uses == 1


@pytest.mark.parametrize("body", [b"{", b"[]", {"token": 1, "csr": "x"}, {"csr": "x"}, {"token": "x"}])
def test_malformed_registration_requests_get_400(factory, body):
    assert post(body).status_code == 400


def test_registration_needs_post(factory):
    assert Client().get("/devices/register/").status_code == 405


def test_only_admins_create_registration_tokens(factory, alice, bob, carol):
    for user in (bob, carol):
        with pytest.raises(Forbidden):
            registration_token_create(factory=factory, actor=user, tag="production")
    row, plain = registration_token_create(factory=factory, actor=alice, tag="production", max_uses=3, expires_days=2)
    assert plain.startswith(f"bwreg_{row.prefix}_") and row.max_uses == 3 and row.expires_at > timezone.now()
    assert row.token_hash != plain and plain not in json.dumps(list(RegistrationToken.objects.values_list("token_hash", "prefix", "name")))
    entry = AuditEntry.objects.get(action="registration-token.create")
    assert entry.actor == alice and entry.target == row.prefix


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tag": ""}, "Tag"),
        ({"tag": "a b"}, "Tag"),
        ({"tag": "main\x00"}, "printable"),
        ({"tag": "main\x1b[2J"}, "printable"),
        ({"tag": "main\u202e"}, "printable"),
        ({"tag": "t", "max_uses": 0}, "number of uses"),
        ({"tag": "t", "expires_days": -1}, "expires"),
        ({"tag": "t", "expires_days": 1, "expires_at": timezone.now()}, "not both"),
    ],
)
def test_bad_registration_token_settings_are_refused(factory, kwargs, message):
    with pytest.raises(ApplicationError, match=message):
        registration_token_create(factory=factory, actor=None, **kwargs)
    assert not RegistrationToken.objects.exists()


def test_a_token_cannot_name_another_factorys_group(factory, other_factory):
    group = DeviceGroup.objects.create(factory=other_factory, name="canary")
    with pytest.raises(ApplicationError):
        registration_token_create(factory=factory, actor=None, tag="t", group=group)


def test_create_registration_token_command_prints_a_working_token(factory, canary):
    out = StringIO()
    call_command("create_registration_token", "--factory", "acme", "--tag", "production", "--group", "canary", "--production", stdout=out)
    plain = out.getvalue().strip()
    assert post({"token": plain, "csr": csr_for("acme")[1]}).status_code == 201
    assert Device.objects.get().group == canary
    with pytest.raises(CommandError, match="does not exist"):
        call_command("create_registration_token", "--factory", "acme", "--tag", "production", "--group", "nope", stdout=StringIO())


def test_each_factory_has_its_own_device_ca(factory, other_factory):
    acme, globex = device_ca_get(factory=factory), device_ca_get(factory=other_factory)
    assert acme.certificate != globex.certificate
    assert device_ca_get(factory=factory).pk == acme.pk
    assert b"PRIVATE KEY" not in bytes(acme.private_key)  # encrypted at rest


def test_batch_registration_checks_each_csr(factory, canary):
    good = [{"csr": csr_for("acme")[1], "name": f"d{i}"} for i in range(3)]
    registered = devices_register(factory=factory, actor=None, tag="production", group=canary, requests=good, allow_production=True)
    assert [r.device.name for r in registered] == ["d0", "d1", "d2"] and all(r.device.pk for r in registered)
    with pytest.raises(Forbidden):
        devices_register(factory=factory, actor=None, tag="production", requests=[{"csr": csr_for("acme")[1]}], allow_production=False)
    with pytest.raises(ApplicationError, match="OU"):
        devices_register(factory=factory, actor=None, tag="production", requests=[{"csr": csr_for("acme")[1]}, {"csr": csr_for("globex")[1]}], allow_production=True)
    assert Device.objects.count() == 3


def test_a_new_certificate_cannot_change_production_status(factory, token, alice, carol):
    device_uuid, csr = csr_for("acme", production=True)
    post({"token": token, "csr": csr})
    with pytest.raises(ApplicationError, match="production"):
        device_certificates_renew(factory=factory, actor=alice, csrs={device_uuid: csr_for("acme", production=False, device_uuid=device_uuid)[1]})
    with pytest.raises(Forbidden):
        device_certificates_renew(factory=factory, actor=carol, csrs={device_uuid: csr_for("acme", device_uuid=device_uuid)[1]})
    old_serial = Device.objects.get().certificate_serial
    issued = device_certificates_renew(factory=factory, actor=alice, csrs={device_uuid: csr_for("acme", device_uuid=device_uuid)[1]})
    device = Device.objects.get()
    assert device.certificate == issued[device_uuid] and device.certificate_serial != old_serial and device.is_production


def test_deleting_a_device_needs_fleet_rights_and_is_audited(factory, token, bob, dave):
    post({"token": token, "csr": csr_for("acme")[1]})
    device = Device.objects.get()
    with pytest.raises(Forbidden):
        device_delete(device=device, actor=dave)
    device_delete(device=device, actor=bob)
    assert not Device.objects.exists()
    assert AuditEntry.objects.filter(action="device.delete", target=str(device.uuid), actor=bob).exists()


def test_device_keys_survive_a_rotation_of_the_key_encryption_key(settings):
    """README: to rotate BREAKWATER_KEY_ENCRYPTION_KEY, set "new,old" on every process."""
    from cryptography.fernet import Fernet

    key = pki.key_generate()
    stored = pki.key_encrypt(key)
    new = Fernet.generate_key().decode()
    settings.TUF_KEY_ENCRYPTION_KEY = f"{new},{settings.TUF_KEY_ENCRYPTION_KEY}"
    assert pki.key_pem(pki.key_decrypt(stored)) == pki.key_pem(key)
    restored = pki.key_encrypt(key)
    settings.TUF_KEY_ENCRYPTION_KEY = new
    assert pki.key_pem(pki.key_decrypt(restored)) == pki.key_pem(key)
