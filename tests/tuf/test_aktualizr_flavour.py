"""Both device protocols, one repository: aktualizr-lite clients (User-Agent Aktualizr/...) get the
libaktualizr flavour of every root and view through the gateway, TUF clients keep TUF 1.0, with the
same keys and the same versions, which never go down across a wave's life in either flavour."""
import base64
import json
from importlib import import_module

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from django.apps import apps as django_apps
from tuf.api import exceptions as tuf_exceptions

from devices.fleet import fleet_seed
from devices.models import Device
from factory.project.gateway.handler import Gateway
from factory.project.gateway.http1 import PEER_CERTIFICATE
from factory.tuf import aktualizr as ak
from factory.tuf import keys as tuf_keys
from factory.tuf import selectors as tuf_selectors
from factory.tuf.flavours import AKTUALIZR, TUF, flavour_of
from factory.tuf.models import TufRoot, TufView
from factory.tuf.services import root_changes
from factory.tuf.services.repository import ci_build_publish
from waves.services import wave_cancel, wave_complete, wave_init, wave_rollout, wave_sign

from ..aktualizr_verify import AktualizrClient, AktualizrRefused, FetchFailed
from ..factory.tuf_client import TufDevice, offline_targets_key

pytestmark = pytest.mark.django_db(transaction=True)

TAG = "production"
HWID = "intel-corei7-64"
AKLITE = "Aktualizr/2024.12-breakwater-simulator"


def test_the_flavour_comes_from_the_user_agent():
    assert flavour_of("Aktualizr/2020.10") == AKTUALIZR
    assert flavour_of("aktualizr/1.0 (linux)") == AKTUALIZR
    assert flavour_of(b"AKTUALIZR/x") == AKTUALIZR
    for other in (None, "", "python-tuf/5.0", "Aktualizr", "my Aktualizr/1.0", "tuf-js/3"):
        assert flavour_of(other) == TUF


def test_canonical_json_is_what_libaktualizr_re_serialises():
    value = {"b": [1, True, None, {"z": "", "a": "é\n\t\x01/\"\\"}], "a": "😀", "_type": "Targets"}
    assert ak.canonical(value) == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert ak.canonical({"x": "\x7f"}) == b'{"x":"\x7f"}'  # jsoncpp escapes only below 0x20 and above 0x7f
    with pytest.raises(Exception):
        ak.canonical({"x": 1.5})


class Gatewayed:
    """Requests through the gateway's WSGI app as one device, with the User-Agent given."""

    def __init__(self, device, user_agent):
        self.gateway = Gateway(device_cache_seconds=0)
        self.der = x509.load_pem_x509_certificate(device.certificate.encode()).public_bytes(Encoding.DER)
        self.user_agent = user_agent

    def get(self, filename, **headers):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/repo/" + filename, PEER_CERTIFICATE: self.der, "HTTP_USER_AGENT": self.user_agent}
        environ.update(headers)
        answer = {}

        def start_response(status, response_headers):
            answer["status"], answer["headers"] = int(status.split()[0]), dict(response_headers)

        body = b"".join(self.gateway(environ, start_response))
        return answer["status"], answer["headers"], body

    def __call__(self, filename):
        status, _, body = self.get(filename)
        if status != 200:
            raise FetchFailed(f"{filename}: {status}")
        return body


@pytest.fixture
def builds(factory):
    for version in (40, 41, 42, 43):
        ci_build_publish(factory=factory, version=version, hardware_ids=[HWID], tags=[TAG])


def _device(factory, production, name):
    """A device with a real certificate (the gateway identifies it by that alone)."""
    fleet_seed(factory=factory, tag=TAG, ungrouped=1 if production else 0, test_devices=0 if production else 1, hardware_ids=[HWID])
    return Device.objects.select_related("factory", "group").filter(factory=factory, tag=TAG, is_production=production).latest("id")


class Pair:
    """The same device as an aktualizr-lite client and as a python-tuf client, both via the gateway."""

    def __init__(self, device, tmp_path):
        self.aklite = AktualizrClient()
        self.fetch = Gatewayed(device, AKLITE)
        self.tuf = TufDevice(device, tmp_path / "tuf", via_gateway=True)
        self.seen = []

    def refresh(self):
        targets = self.aklite.refresh(self.fetch)
        self.tuf.refresh()
        assert self.tuf.last_error is None, self.tuf.last_error
        tuf_versions = self.tuf.versions()
        ak_versions = self.aklite.versions()
        # Versions in lockstep: the same numbers in both flavours.
        assert ak_versions == {role: tuf_versions[role] for role in ak_versions}, (ak_versions, tuf_versions)
        assert sorted(targets) == sorted(self.tuf.targets())
        if self.seen:
            assert all(ak_versions[r] >= self.seen[-1][r] for r in ak_versions), (self.seen[-1], ak_versions)
        self.seen.append(ak_versions)
        return sorted(targets)

    def holds(self):
        """A device that fetched a canceled wave refuses the lower production targets, in both
        flavours (the seed's rule: it holds until a later wave completes)."""
        with pytest.raises(AktualizrRefused, match="targets: Rollback attempt"):
            self.aklite.refresh(self.fetch)
        self.tuf.poll()
        assert isinstance(self.tuf.last_error, tuf_exceptions.BadVersionNumberError)
        self.tuf.last_error = None
        return True


def test_every_view_and_root_is_served_in_both_flavours_and_versions_never_go_down(factory, bob, builds, tmp_path):
    archive = offline_targets_key(factory=factory, actor=bob)
    test_device = Pair(_device(factory, False, "test-0"), tmp_path / "t")
    staged = Pair(_device(factory, True, "prod-0"), tmp_path / "p0")
    other = Pair(_device(factory, True, "prod-1"), tmp_path / "p1")
    pairs = (test_device, staged, other)
    assert test_device.refresh() == [f"{HWID}-lmp-{v}" for v in (40, 41, 42, 43)]
    assert staged.refresh() == [] and other.refresh() == []  # the shared empty view

    wave = wave_init(factory=factory, actor=bob, name="v41", version=41, tag=TAG)
    wave = wave_sign(wave=wave, actor=bob, key_archive=archive)
    assert wave.status == "active"
    wave_rollout(wave=wave, actor=bob, uuids=[str(staged.tuf.device.uuid)])
    assert staged.refresh() == [f"{HWID}-lmp-41"] and other.refresh() == []
    wave_complete(wave=wave, actor=bob)
    assert staged.refresh() == [f"{HWID}-lmp-41"] and other.refresh() == [f"{HWID}-lmp-41"]

    wave = wave_sign(wave=wave_init(factory=factory, actor=bob, name="v42", version=42, tag=TAG), actor=bob, key_archive=archive)
    wave_rollout(wave=wave, actor=bob, uuids=[str(staged.tuf.device.uuid)])
    assert staged.refresh() == [f"{HWID}-lmp-41", f"{HWID}-lmp-42"]
    wave_cancel(wave=wave, actor=bob)
    assert staged.holds() and other.refresh() == [f"{HWID}-lmp-41"]
    ci_build_publish(factory=factory, version=44, hardware_ids=[HWID], tags=[TAG])
    assert test_device.refresh()[-1] == f"{HWID}-lmp-44"
    wave_complete(wave=wave_sign(wave=wave_init(factory=factory, actor=bob, name="v43", version=43, tag=TAG), actor=bob, key_archive=archive), actor=bob)
    assert staged.refresh() == other.refresh() == [f"{HWID}-lmp-41", f"{HWID}-lmp-43"]

    # A root change (a second offline targets key, threshold 2): N -> N+1 in both flavours.
    offline_targets_key(factory=factory, actor=bob)
    for pair in pairs:
        pair.refresh()
        assert pair.aklite.versions()["root"] == 3
    # Every stored root and view has its sibling.
    assert not TufRoot.objects.filter(factory=factory, aktualizr_data=b"").exists()
    assert not TufView.objects.filter(factory=factory, aktualizr_timestamp=b"").exists()


def test_the_flavours_have_their_own_bytes_and_etags(factory, builds):
    device = _device(factory, False, "test-0")
    tuf, aklite = Gatewayed(device, "python-tuf/5"), Gatewayed(device, AKLITE)
    for filename in ("1.root.json", "timestamp.json", "snapshot.json", "targets.json"):
        status_tuf, headers_tuf, body_tuf = tuf.get(filename)
        status_ak, headers_ak, body_ak = aklite.get(filename)
        assert status_tuf == status_ak == 200
        assert headers_tuf["ETag"] != headers_ak["ETag"]
        signed_tuf, signed_ak = json.loads(body_tuf)["signed"], json.loads(body_ak)["signed"]
        assert signed_ak["_type"] == signed_tuf["_type"].capitalize()
        assert signed_ak["version"] == signed_tuf["version"] and signed_ak["expires"] == signed_tuf["expires"]
        # Served canonical: the hash over the bytes is the hash over the canonical form.
        assert body_ak == ak.canonical(json.loads(body_ak))
        assert all(s["method"] == "ed25519" and base64.b64decode(s["sig"], validate=True) for s in json.loads(body_ak)["signatures"])
        # Asked again with its ETag, each flavour answers 304 to its own and 200 to the other's.
        assert aklite.get(filename, HTTP_IF_NONE_MATCH=headers_ak["ETag"])[0] == 304
        assert aklite.get(filename, HTTP_IF_NONE_MATCH=headers_tuf["ETag"])[0] == 200
    root = json.loads(aklite.get("1.root.json")[2])["signed"]
    assert all(key["keytype"] == "ED25519" and set(key) == {"keytype", "keyval"} for key in root["keys"].values())
    assert aklite.get("2.root.json")[0] == 404


def test_a_tampered_aktualizr_file_is_refused_by_the_verifier(factory, builds):
    device = _device(factory, False, "test-0")
    fetch = Gatewayed(device, AKLITE)
    client = AktualizrClient()
    client.refresh(fetch)

    def tampered(change):
        def inner(filename):
            data = fetch(filename)
            return change(filename, data)
        return inner

    # The timestamp, which no other file hashes: each change meets its own rule.
    def retype(filename, data):
        if filename != "timestamp.json":
            return data
        value = json.loads(data)
        value["signed"]["_type"] = "timestamp"
        return ak.canonical(value)

    def hex_signatures(filename, data):
        if filename != "timestamp.json":
            return data
        value = json.loads(data)
        for signature in value["signatures"]:
            signature["sig"] = base64.b64decode(signature["sig"]).hex()
        return ak.canonical(value)

    def tuf_method(filename, data):
        if filename != "timestamp.json":
            return data
        value = json.loads(data)
        for signature in value["signatures"]:
            signature.pop("method")
        return ak.canonical(value)

    for change, message in ((retype, "exactly 'Timestamp'"), (hex_signatures, "valid signature"), (tuf_method, "Unsupported sign method")):
        with pytest.raises(AktualizrRefused, match=message):
            AktualizrClient().refresh(tampered(change))
    # And TUF 1.0 bytes are refused outright, as the real client refuses them.
    with pytest.raises(AktualizrRefused):
        AktualizrClient().refresh(Gatewayed(device, "python-tuf/5"))


def test_an_offline_root_change_signs_both_flavours_in_one_step(factory, bob, builds):
    device = _device(factory, True, "prod-0")
    fetch = Gatewayed(device, AKLITE)
    client = AktualizrClient()
    client.refresh(fetch)
    root_key = tuf_keys.key_generate()
    change = root_changes.offline_key_add(factory=factory, actor=bob, role="root", public_key=root_key.public_key.to_dict())
    payloads = tuf_selectors.root_change_payloads(change=change)
    tuf_only = [{"document": p["document"], **tuf_keys.payload_sign(root_key, base64.b64decode(p["payload"]))} for p in payloads if "@" not in p["document"]]
    change = root_changes.root_change_sign(factory=factory, actor=bob, signatures=tuf_only)
    assert change.status == "pending"  # the aktualizr roots are not signed yet
    with pytest.raises(Exception, match="does not verify"):
        bad = [{"document": "ci-root@aktualizr", **tuf_keys.payload_sign(root_key, b"other")}]
        root_changes.root_change_sign(factory=factory, actor=bob, signatures=bad)
    payloads = tuf_selectors.root_change_payloads(change=change)
    rest = [{"document": p["document"], **tuf_keys.payload_sign(root_key, base64.b64decode(p["payload"]))} for p in payloads if p["missing"]]
    assert {s["document"] for s in rest} == {"ci-root@aktualizr", "production-root@aktualizr"}
    assert root_changes.root_change_sign(factory=factory, actor=bob, signatures=rest).status == "applied"
    client.refresh(fetch)
    assert client.versions()["root"] == 2


def test_the_migration_fills_siblings_the_online_keys_can_sign_and_leaves_offline_ones_for_the_next_signing(factory, bob, builds):
    migration = import_module("factory.tuf.migrations.0002_aktualizr_flavour")
    archive = offline_targets_key(factory=factory, actor=bob)
    wave_complete(wave=wave_sign(wave=wave_init(factory=factory, actor=bob, name="v41", version=41, tag=TAG), actor=bob, key_archive=archive), actor=bob)
    test_device, production = _device(factory, False, "test-0"), _device(factory, True, "prod-0")
    before = {v.pk: (v.version, v.targets_version) for v in TufView.objects.filter(factory=factory)}
    # As a database from before the flavour existed: no siblings anywhere.
    TufView.objects.filter(factory=factory).update(
        aktualizr_targets=b"", aktualizr_snapshot=b"", aktualizr_timestamp=b"", aktualizr_targets_hash="", aktualizr_snapshot_hash="",
        aktualizr_timestamp_hash="",
    )  # fmt: skip
    TufRoot.objects.filter(factory=factory).update(aktualizr_data=b"")
    migration.siblings_fill(django_apps, None)

    # Online-signed: the CI view and every root (the root key is still online here).
    assert not TufRoot.objects.filter(factory=factory, aktualizr_data=b"").exists()
    client = AktualizrClient()
    client.refresh(Gatewayed(test_device, AKLITE))
    assert client.versions()["root"] == 2
    assert {v.pk: (v.version, v.targets_version) for v in TufView.objects.filter(factory=factory)} == before  # no version moved
    # The production targets were signed offline: their sibling comes with the next signing.
    status, _, body = Gatewayed(production, AKLITE).get("timestamp.json")
    assert status == 404 and b"next signing" in body
    assert Gatewayed(production, "python-tuf/5").get("timestamp.json")[0] == 200
    wave_complete(wave=wave_sign(wave=wave_init(factory=factory, actor=bob, name="v42", version=42, tag=TAG), actor=bob, key_archive=archive), actor=bob)
    assert sorted(AktualizrClient().refresh(Gatewayed(production, AKLITE))) == [f"{HWID}-lmp-41", f"{HWID}-lmp-42"]


def test_an_online_key_rotation_is_followed_in_both_flavours(factory, bob, builds, tmp_path):
    """Each online key replaced in turn: aktualizr-lite and python-tuf devices walk to the new
    root, verify what the new key signed, and keep their production targets (offline-signed)."""
    archive = offline_targets_key(factory=factory, actor=bob)
    wave = wave_sign(wave=wave_init(factory=factory, actor=bob, name="v41", version=41, tag=TAG), actor=bob, key_archive=archive)
    wave_complete(wave=wave, actor=bob)
    test_device = Pair(_device(factory, False, "test-0"), tmp_path / "t")
    production = Pair(_device(factory, True, "prod-0"), tmp_path / "p")
    assert production.refresh() == [f"{HWID}-lmp-41"] and len(test_device.refresh()) == 4
    for role in ("targets", "snapshot", "timestamp"):
        assert root_changes.online_key_rotate(factory=factory, actor=bob, role=role).status == "applied"
        assert production.refresh() == [f"{HWID}-lmp-41"] and len(test_device.refresh()) == 4
    assert production.seen[-1]["root"] == production.seen[0]["root"] + 3
    ci_build_publish(factory=factory, version=44, hardware_ids=[HWID], tags=[TAG])
    assert test_device.refresh()[-1] == f"{HWID}-lmp-44"
