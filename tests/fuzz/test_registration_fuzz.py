"""Fuzzing device registration (POST /devices/register/) through the Django test client: any
body, field types, token and CSR (hostile subjects, key types, garbage PEM and DER, CSRs damaged
and signed again) is a 201 or a JSON 400/403/409/413 that names the problem, never a server error;
a refused registration changes nothing (no device, no token use, no audit entry, no device CA);
an accepted one gets a certificate whose subject the server built (CN = UUID, OU = factory,
businessCategory only if asked and allowed), never copied from the CSR.

BREAKWATER_FUZZ_EXAMPLES sets the examples per property (default 25).
"""
import base64
import functools
import json
import uuid

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from django.test import Client
from hypothesis import example, given
from hypothesis import strategies as st

from devices import pki
from devices.models import Device, DeviceCA, RegistrationToken
from devices.services import registration_token_create, registration_token_revoke
from factory.models import AuditEntry

from . import strategies as s
from .harness import case, count, fuzz

DOCUMENTED = {201, 400, 403, 409, 413}


@functools.cache
def keys():
    """One private key of each kind, made once (RSA and DSA take a while)."""
    return {
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "p521": ec.generate_private_key(ec.SECP521R1()),
        "secp256k1": ec.generate_private_key(ec.SECP256K1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "ed448": ed448.Ed448PrivateKey.generate(),
        "rsa1024": rsa.generate_private_key(public_exponent=65537, key_size=1024),
        "rsa2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "dsa2048": dsa.generate_private_key(key_size=2048),
    }


@pytest.fixture
def tokens(factory):
    production = registration_token_create(factory=factory, actor=None, tag="production", production=True)[1]
    test_only = registration_token_create(factory=factory, actor=None, tag="main")[1]
    revoked_row, revoked = registration_token_create(factory=factory, actor=None, tag="main", production=True)
    registration_token_revoke(token=revoked_row, actor=None)
    used_row, used_up = registration_token_create(factory=factory, actor=None, tag="main", production=True, max_uses=1)
    RegistrationToken.objects.filter(pk=used_row.pk).update(uses=1)
    return {"production": production, "test only": test_only, "revoked": revoked, "used up": used_up}


def state():
    return (
        Device.objects.count(),
        sorted(RegistrationToken.objects.values_list("uses", flat=True)),
        AuditEntry.objects.count(),
        DeviceCA.objects.count(),
    )


def register(name, payload, **extra):
    """POST the raw payload; check the answer's family and what it changed."""
    case(name)
    before = state()
    # A server error is an answer here, counted and judged: the test client would raise it instead.
    response = Client(raise_request_exception=False).generic("POST", "/devices/register/", payload, content_type="application/json", **extra)
    count(name, status=response.status_code)
    repro = f"POST /devices/register/ {payload[:400]!r}{'...' if len(payload) > 400 else ''} {extra or ''}"
    assert response.status_code < 500, f"{response.status_code} for {repro}"
    assert response.status_code in DOCUMENTED, f"undocumented {response.status_code} for {repro}"
    assert response["Content-Type"] == "application/json", repro
    data = response.json()
    if response.status_code == 201:
        devices, uses, audit, cas = state()
        # One audit entry for the registration, one more for the factory's device CA if this made it.
        assert devices == before[0] + 1 and sum(uses) == sum(before[1]) + 1 and audit == before[2] + 1 + (cas - before[3]), repro
        _check_certificate(data)
    else:
        assert isinstance(data.get("error"), str) and data["error"] and len(data["error"]) < 500, f"{data} for {repro}"
        assert state() == before, f"a refused registration changed something: {repro}"
    return response.status_code, data


def _check_certificate(data):
    cert = pki.cert_load(data["certificate"])
    subject = [(a.oid, a.value) for a in cert.subject]
    wanted = [(NameOID.ORGANIZATION_NAME, "Breakwater"), (NameOID.ORGANIZATIONAL_UNIT_NAME, data["factory"]), (NameOID.COMMON_NAME, data["uuid"])]
    if data["production"]:
        wanted.append((NameOID.BUSINESS_CATEGORY, pki.PRODUCTION))
    assert subject == wanted, subject
    assert str(uuid.UUID(data["uuid"])) == data["uuid"]


# --- CSRs --------------------------------------------------------------------------------------------

_hostile_text = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["\x00", "\x1b[31mred", "\r\nSet-Cookie: x=1", "<script>alert(1)</script>", "\u202egnp.exe", "a" * 64, "a" * 65, "a" * 8000, ""]),
)


@st.composite
def csr_subjects(draw, factory_name):
    device_uuid = uuid.uuid4()
    cn = st.one_of(st.just(str(device_uuid)), st.sampled_from([str(device_uuid).upper(), f"urn:uuid:{device_uuid}", device_uuid.hex, f"{device_uuid}\x00"]), _hostile_text)
    ou = st.one_of(st.just(factory_name), st.sampled_from(["globex", factory_name.upper(), f"{factory_name}\x00"]), _hostile_text)
    category = st.one_of(st.just(pki.PRODUCTION), st.sampled_from(["Production", "test", "production\x00"]), _hostile_text)
    others = st.sampled_from([NameOID.ORGANIZATION_NAME, NameOID.COUNTRY_NAME, NameOID.EMAIL_ADDRESS, NameOID.SERIAL_NUMBER, NameOID.USER_ID])
    attributes = []
    for oid, values, most in ((NameOID.COMMON_NAME, cn, 2), (NameOID.ORGANIZATIONAL_UNIT_NAME, ou, 2), (NameOID.BUSINESS_CATEGORY, category, 2)):
        # Mostly one value, as a real device sends; sometimes none or several.
        n = draw(st.sampled_from([1, 1, 1, 0, most]))
        attributes += [(oid, draw(values)) for _ in range(n)]
    attributes += [(draw(others), draw(_hostile_text)) for _ in range(draw(st.integers(0, 2)))]
    return draw(st.permutations(attributes))


def _csr_pem(attributes, key_kind, digest, encoding):
    key = keys()[key_kind]
    algorithm = None if key_kind in ("ed25519", "ed448") else {"sha256": hashes.SHA256(), "sha1": hashes.SHA1(), "sha512": hashes.SHA512()}[digest]
    try:
        name = x509.Name([x509.NameAttribute(oid, value, _type=encoding) if oid != NameOID.COUNTRY_NAME else x509.NameAttribute(oid, value) for oid, value in attributes])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, algorithm)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None  # cryptography will not build it (a country name of three letters, SHA-1 with DSA...)
    return csr


def _der(tag, content):
    n = len(content)
    length = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")


def resigned(csr, key, changes):
    """The CSR with bytes of its request info changed, signed again by its own key: it passes the
    signature check, so whatever the changed bytes say reaches the subject parsing."""
    info = bytearray(csr.tbs_certrequest_bytes)
    for position, value in changes:
        info[position % len(info)] = value
    signature = key.sign(bytes(info), ec.ECDSA(hashes.SHA256()))
    return _der(0x30, bytes(info) + ECDSA_SHA256 + _der(0x03, b"\x00" + signature))


def pem(der, label="CERTIFICATE REQUEST"):
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n"


@st.composite
def csrs(draw, factory_name):
    """A CSR in PEM as a device would send it, or damaged in one of many ways."""
    attributes = draw(csr_subjects(factory_name))
    key_kind = draw(st.sampled_from(["p256", "p256", "p384", "p521", "secp256k1", "ed25519", "ed448", "rsa1024", "rsa2048", "dsa2048"]))
    encoding = draw(st.sampled_from([_ASN1Type.UTF8String, _ASN1Type.PrintableString, _ASN1Type.BMPString, _ASN1Type.UniversalString, _ASN1Type.IA5String]))
    csr = _csr_pem(attributes, key_kind, draw(st.sampled_from(["sha256", "sha256", "sha1", "sha512"])), encoding)
    if csr is None:
        csr = _csr_pem([(NameOID.COMMON_NAME, str(uuid.uuid4())), (NameOID.ORGANIZATIONAL_UNIT_NAME, factory_name)], "p256", "sha256", _ASN1Type.UTF8String)
        key_kind = "p256"
    der = csr.public_bytes(serialization.Encoding.DER)
    damage = draw(st.sampled_from(["none", "none", "resigned", "der", "truncated", "garbage base64", "label", "bytes", "trailing"]))
    if damage == "resigned" and key_kind == "p256":
        changes = draw(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
        return pem(resigned(csr, keys()["p256"], changes))
    if damage == "der":
        return der.decode("latin-1")
    if damage == "truncated":
        # Where to cut, drawn as a share of the length: ECDSA signatures vary in length, and a draw
        # whose bounds depend on them would not replay.
        text = pem(der)
        return text[: len(text) * draw(st.integers(0, 1000)) // 1000]
    if damage == "garbage base64":
        return pem(draw(st.binary(max_size=600)))
    if damage == "label":
        return pem(der, draw(st.sampled_from(["CERTIFICATE", "NEW CERTIFICATE REQUEST", "PRIVATE KEY", ""])))
    if damage == "bytes":
        return draw(st.binary(max_size=400)).decode("latin-1")
    if damage == "trailing":
        return pem(der) + draw(_hostile_text)
    return pem(der)


def _payload(token, csr, name="", hardware_id=s.HWID):
    return json.dumps({"token": token, "csr": csr, "name": name, "hardware_id": hardware_id}, ensure_ascii=False).encode("utf-8", "surrogatepass")


# --- properties ------------------------------------------------------------------------------------


@pytest.mark.django_db
@fuzz()
@given(csr=csrs("acme"), token=st.sampled_from(["production", "production", "test only"]))
def test_any_csr_is_registered_with_a_built_subject_or_refused_clearly(factory, tokens, csr, token):
    status, data = register("registration: CSRs", _payload(tokens[token], csr))
    if status == 201:
        assert data["factory"] == "acme" and data["tag"] == ("production" if token == "production" else "main")
        assert not data["production"] or token == "production"


@pytest.mark.django_db
@pytest.mark.parametrize("version", [1, 2, 255])
def test_a_csr_of_another_version_is_refused_clearly(factory, tokens, version):
    # cryptography refuses a version other than 1 (0 in DER) with InvalidVersion, not ValueError:
    # the registration endpoint once answered that with a 500.
    csr = x509.load_pem_x509_csr(pki.device_csr_build(private_key=keys()["p256"], device_uuid=uuid.uuid4(), factory_name="acme", production=False).encode())
    position = csr.tbs_certrequest_bytes.index(b"\x02\x01\x00") + 2  # the version INTEGER's value
    status, data = register("registration: CSRs", _payload(tokens["test only"], pem(resigned(csr, keys()["p256"], [(position, version)]))))
    assert status == 400 and "not a valid PEM certificate signing request" in data["detail" if "detail" in data else "error"]


@pytest.mark.django_db
@fuzz()
@given(token=st.one_of(st.sampled_from([("revoked",), ("used up",)]), s.header_values, st.text(max_size=40).map(lambda t: "bwreg_" + t), st.sampled_from(["bwreg_", "bwreg_" + "a" * 300])))
def test_a_token_that_is_not_live_is_refused_and_registers_nothing(factory, tokens, token):
    csr = pki.device_csr_build(private_key=keys()["p256"], device_uuid=uuid.uuid4(), factory_name="acme", production=False)
    status, _ = register("registration: tokens", _payload(tokens[token[0]] if isinstance(token, tuple) else token, csr))
    assert status in (400, 403, 413)  # 413: a token of 100,000 characters makes the body too large


json_values = s.json_values


@pytest.mark.django_db
@fuzz()
@example(payload=b"[" * 15_000 + b"]" * 15_000, length=None)
@example(payload=b"{}", length="abc")
@given(
    payload=st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(["token", "csr", "name", "hardware_id", "extra"]), json_values, max_size=5).map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=300),
        s.deep_documents,
        st.integers(32 * 1024, 40 * 1024).map(lambda n: b'{"token": "' + b"a" * n + b'"}'),
    ),
    # (A Content-Length above the body's own length would make the test client itself fail.)
    length=st.one_of(st.none(), st.sampled_from(["abc", "", "0", " 0 ", "1e3", "0x10"])),
)
def test_any_body_is_answered_with_json_and_registers_nothing(factory, tokens, payload, length):
    extra = {"CONTENT_LENGTH": length} if length is not None else {}
    status, _ = register("registration: bodies", payload, **extra)
    assert status != 201


@pytest.mark.django_db
@fuzz()
@given(name=st.one_of(_hostile_text, json_values), hardware_id=st.one_of(_hostile_text, json_values), production=st.booleans())
def test_any_name_and_hardware_id_is_kept_as_data_or_refused(factory, tokens, name, hardware_id, production):
    csr = pki.device_csr_build(private_key=pki.key_generate(), device_uuid=uuid.uuid4(), factory_name="acme", production=production)
    status, data = register("registration: names", _payload(tokens["production"], csr, name=name, hardware_id=hardware_id))
    if status == 201:
        # Absent, null, false, 0 and empty values are the defaults; any other non-text is refused.
        assert data["name"] == (name.strip() if isinstance(name, str) and name.strip() else data["uuid"])
        assert data["hardware_id"] == (hardware_id.strip() if isinstance(hardware_id, str) else "")


# --- what the fuzzing found, each once -----------------------------------------------------------


def _unreadable_subject_csr():
    """A CSR signed by its own key whose subject cryptography cannot parse (a name value's tag
    zeroed): the first byte that does it, found deterministically."""
    key = keys()["p256"]
    csr = x509.load_pem_x509_csr(pki.device_csr_build(private_key=key, device_uuid=uuid.uuid4(), factory_name="acme", production=False).encode())
    for position in range(len(csr.tbs_certrequest_bytes)):
        try:
            damaged = x509.load_der_x509_csr(resigned(csr, key, [(position, 0)]))
        except ValueError:
            continue  # not even a CSR: refused by the PEM loader already
        try:
            damaged.subject, damaged.public_key()
        except ValueError:
            assert damaged.is_signature_valid
            return pem(resigned(csr, key, [(position, 0)]))
    raise AssertionError("no byte makes the subject unreadable")


@pytest.mark.django_db
def test_a_csr_that_verifies_but_holds_an_unreadable_subject_is_a_400(factory, tokens):
    status, data = register("registration: found", _payload(tokens["production"], _unreadable_subject_csr()))
    assert status == 400 and "not valid DER" in data["error"]


@pytest.mark.django_db
@pytest.mark.parametrize("payload, length, message", [(b"[" * 15_000 + b"]" * 15_000, None, "JSON object"), (b"{}", "abc", "Content-Length")])
def test_deep_json_and_a_content_length_that_is_not_a_number_are_a_400(factory, tokens, payload, length, message):
    status, data = register("registration: found", payload, **({"CONTENT_LENGTH": length} if length else {}))
    assert status == 400 and message in data["error"]
