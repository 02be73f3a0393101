"""lmp-device-register's request to POST /ota/devices/ (its recorded body and headers in
tests/fixtures/aktualizr/): a 201 whose keys are the files it writes, with a sota.toml that
aktualizr-lite can use; refusals are JSON 4xx that change nothing."""
import base64
import json
import tomllib
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings
from django.test import Client

from devices.gateway_identity import gateway_endpoint
from devices.models import Device, RegistrationToken
from devices.services import device_group_create, registration_token_create

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "aktualizr"
URL = "/ota/devices/"


def lmp_csr(device_uuid, factory_name, *, production=False):
    """A CSR as lmp-device-register builds it: prime256v1 key, CN=uuid, OU=factory,
    businessCategory=production with --production, client-auth key usages."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, str(device_uuid)), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, factory_name)]
    if production:
        names.append(x509.NameAttribute(NameOID.BUSINESS_CATEGORY, "production"))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(names))
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def body_for(factory, *, production=False, device_uuid=None, **changes):
    device_uuid = device_uuid or uuid.uuid4()
    text = (FIXTURES / "lmp-register-body.json").read_text().replace("DEVICE_UUID", str(device_uuid))
    body = json.loads(text)
    body["csr"] = lmp_csr(device_uuid, factory.name, production=production)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def post(body, *, token=None, headers=None):
    if headers is None:
        headers = {"OSF-TOKEN": token}
    raw = body if isinstance(body, bytes) else json.dumps(body).replace("/", "\\/").encode()  # as boost's write_json
    return Client().post(URL, raw, content_type="application/json", headers=headers)


@pytest.fixture
def token(factory):
    return registration_token_create(factory=factory, actor=None, tag="main")[1]


def test_lmp_registration_answers_201_with_the_files_and_a_sota_toml_aktualizr_lite_can_use(factory, token):
    body = body_for(factory)
    response = post(body, token=token)
    assert response.status_code == 201, response.content
    files = response.json()
    assert set(files) == {"client.pem", "root.crt", "sota.toml"} and all(isinstance(v, str) for v in files.values())
    device = Device.objects.get(uuid=body["uuid"])
    assert (device.tag, device.hardware_id, device.is_production, device.name) == ("main", "intel-corei7-64", False, body["uuid"])
    chain = x509.load_pem_x509_certificates(files["client.pem"].encode())
    assert chain[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == body["uuid"]
    assert len(chain) == 2  # the device certificate, then the factory's device CA it chains through
    assert files["root.crt"] == gateway_endpoint()["ca_certificate"]

    config = tomllib.loads(files["sota.toml"])
    server = settings.BREAKWATER_GATEWAY_URL
    assert config["tls"] == {"server": server, "ca_source": "file", "pkey_source": "file", "cert_source": "file"}
    assert config["provision"] == {"server": server, "primary_ecu_hardware_id": "intel-corei7-64"}
    assert config["uptane"]["repo_server"] == f"{server}/repo"
    assert config["uptane"]["polling_sec"] == settings.BREAKWATER_DEVICE_POLLING_SECONDS
    assert config["pacman"] == {"type": "ostree", "ostree_server": f"{server}/treehub", "tags": "main"}
    assert config["import"]["tls_cacert_path"] == "/var/sota/root.crt"
    assert config["import"]["tls_clientcert_path"] == "/var/sota/client.pem"
    assert config["import"]["tls_pkey_path"] == "/var/sota/pkey.pem"


def test_the_import_paths_follow_sota_config_dir(factory, token):
    response = post(body_for(factory, **{"sota-config-dir": "/etc/sota/"}), token=token)
    assert response.status_code == 201, response.content
    assert tomllib.loads(response.json()["sota.toml"])["import"]["tls_pkey_path"] == "/etc/sota/pkey.pem"


def test_a_production_csr_with_a_production_token_registers_a_production_device(factory):
    _, plain = registration_token_create(factory=factory, actor=None, tag="production", production=True)
    body = body_for(factory, production=True)
    assert post(body, token=plain).status_code == 201
    assert Device.objects.get(uuid=body["uuid"]).is_production


@pytest.mark.parametrize("scheme", ["raw", "base64"])
def test_a_bearer_token_is_accepted(factory, token, scheme):
    value = token if scheme == "raw" else base64.b64encode(token.encode()).decode()
    body = body_for(factory)
    assert post(body, headers={"Authorization": f"Bearer {value}"}).status_code == 201


def test_values_with_quotes_stay_inside_their_toml_strings(factory, token):
    body = body_for(factory, **{"hardware-id": 'board"\\x', "name": 'dev "1" [tls]'})
    response = post(body, token=token)
    assert response.status_code == 201, response.content
    config = tomllib.loads(response.json()["sota.toml"])
    assert config["provision"]["primary_ecu_hardware_id"] == 'board"\\x'
    assert set(config) == {"tls", "provision", "uptane", "pacman", "storage", "import", "bootloader"}


def test_the_group_must_be_the_tokens(factory):
    group = device_group_create(factory=factory, name="canary")
    _, plain = registration_token_create(factory=factory, actor=None, tag="main", group=group)
    assert post(body_for(factory, group="canary"), token=plain).status_code == 201
    refused = post(body_for(factory, group="other"), token=plain)
    assert refused.status_code == 400 and "group" in refused.json()["error"]


def _refusals(factory):
    other_uuid = str(uuid.uuid4())
    return {
        "no token": (body_for(factory), {}, 401),
        "unknown token": (body_for(factory), {"OSF-TOKEN": "bwreg_nope_nope"}, 403),
        "wrong scheme": (body_for(factory), {"Authorization": "Basic abc"}, 401),
        "uuid differs from the CSR": (body_for(factory, uuid=other_uuid), None, 400),
        "no csr": (body_for(factory, csr=None), None, 400),
        "unreadable csr": (body_for(factory, csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), None, 400),
        "csr of another factory": (body_for(factory, csr=lmp_csr(uuid.uuid4(), "globex")), None, 400),
        "production csr, test token": (body_for(factory, production=True), None, 403),
        "no hardware id": (body_for(factory, **{"hardware-id": None}), None, 400),
        "hardware id with a space": (body_for(factory, **{"hardware-id": "a b"}), None, 400),
        "a boolean, not a string": (body_for(factory, **{"use-ostree-server": True}), None, 400),
        "name with a line break": (body_for(factory, name="a\n[tls]\nserver = \"evil\""), None, 400),
        "name with an escape sequence": (body_for(factory, name="\x1b[2Jdev"), None, 400),
        "relative config dir": (body_for(factory, **{"sota-config-dir": "var/sota"}), None, 400),
        "config dir with ..": (body_for(factory, **{"sota-config-dir": "/var/../etc"}), None, 400),
        "config dir with a quote": (body_for(factory, **{"sota-config-dir": '/var/so"ta'}), None, 400),
        "overrides not an object": (body_for(factory, overrides="tags=main"), None, 400),
        "overrides nested too deep": (body_for(factory, overrides={"pacman": {"tags": {"x": "y"}}}), None, 400),
        "not JSON": (b"uuid=1", None, 400),
        "a JSON list": (b"[]", None, 400),
        "oversize": (b"{" + b" " * (40 * 1024) + b"}", None, 413),
        "nested thousands deep": (b"[" * 5000 + b"]" * 5000, None, 400),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no token", "unknown token", "wrong scheme", "uuid differs from the CSR", "no csr", "unreadable csr", "csr of another factory",
        "production csr, test token", "no hardware id", "hardware id with a space", "a boolean, not a string", "name with a line break",
        "name with an escape sequence", "relative config dir", "config dir with ..", "config dir with a quote", "overrides not an object",
        "overrides nested too deep", "not JSON", "a JSON list", "oversize", "nested thousands deep",
    ],
)
def test_a_bad_registration_is_a_json_4xx_that_changes_nothing(factory, token, case):
    body, headers, status = _refusals(factory)[case]
    response = post(body, token=token, headers=headers if headers is not None else {"OSF-TOKEN": token})
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json") and response.json()["error"]
    assert not Device.objects.exists()
    assert RegistrationToken.objects.get().uses == 0


@pytest.mark.django_db
def test_the_tool_s_ping_is_answered_quietly_and_registers_nothing():
    # lmp-device-register sends HEAD to the URL first; anything below 500 lets it go on, and a
    # 405 would be logged as a warning for every device that registers.
    response = Client().head(URL)
    assert response.status_code == 204
    assert not Device.objects.exists()
