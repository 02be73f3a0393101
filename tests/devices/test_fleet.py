"""Seeding registers real devices; the simulator's choices of who stays offline and who never returns."""
from io import StringIO

from cryptography.x509.oid import NameOID
from django.core.management import call_command

from devices import pki
from devices.fleet import fleet_load_for_benchmark, fleet_seed, take_over
from devices.models import Device
from devices.services import device_ca_get
from devices.simulator import Identity, Keystore, Simulator


def test_seeded_devices_have_real_certificates_that_say_what_they_are(factory):
    counts = fleet_seed(factory=factory, tag="production", groups={"canary": 2}, ungrouped=1, test_devices=2, version=41, hardware_ids=["hw"])
    assert counts == {"production": 3, "test": 2}
    ca = pki.cert_load(device_ca_get(factory=factory).certificate)
    for device in Device.objects.filter(factory=factory):
        cert = pki.cert_load(device.certificate)
        assert pki.issued_by(cert, ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == str(device.uuid)
        assert bool(cert.subject.get_attributes_for_oid(NameOID.BUSINESS_CATEGORY)) == device.is_production
        assert device.certificate_serial == pki.serial_hex(cert)
        assert (device.target_version, device.target_name) == (41, "hw-lmp-41") and device.last_seen is not None
    assert sorted(Device.objects.filter(group__name="canary").values_list("name", flat=True)) == ["canary-0001", "canary-0002"]


def test_seed_fleet_command_registers_and_the_benchmark_loader_does_not(factory):
    out = StringIO()
    call_command("seed_fleet", "--factory", "acme", "--tag", "production", "--group", "beta=3", "--test-devices", "1", stdout=out)
    assert "Registered 3 production and 1 test devices" in out.getvalue()
    fleet_load_for_benchmark(factory=factory, tag="production", ungrouped=5, version=40)
    assert Device.objects.filter(factory=factory, certificate_record__isnull=True).count() == 5
    assert Device.objects.filter(certificate_record__isnull=False).count() == 4


def test_take_over_issues_keys_once_and_reuses_them(factory, tmp_path):
    fleet_seed(factory=factory, tag="production", ungrouped=3, hardware_ids=["hw"])
    keystore = Keystore(tmp_path)
    first = {i.uuid: i.serial for i in take_over(factory=factory, keystore=keystore)}
    assert first == {str(u): s for u, s in Device.objects.values_list("uuid", "certificate_serial")}
    assert take_over(factory=factory, keystore=keystore) and {i.uuid: i.serial for i in take_over(factory=factory, keystore=keystore)} == first
    for device_uuid in first:
        chain = (tmp_path / device_uuid / "client.pem").read_text()
        assert chain.count("BEGIN CERTIFICATE") == 2  # the device's certificate and its factory CA


def _identity(n, last_seen, production=True):
    return Identity(uuid=f"00000000-0000-0000-0000-{n:012d}", name=f"d{n}", hardware_id="hw", production=production, tag="t", group=None, serial="1", last_seen=last_seen)


def test_the_devices_unseen_longest_are_the_ones_kept_offline(tmp_path):
    identities = [_identity(n, last_seen=1000.0 + n) for n in range(10)]
    sim = Simulator(identities=identities, keystore=Keystore(tmp_path), gateway_url="https://127.0.0.1:1", offline_ratio=0.3, never_return=2, seed=1)
    assert sorted(d.identity.name for d in sim.devices if d.offline) == ["d0", "d1", "d2"]
    never = [d for d in sim.devices if d.never_returns]
    assert len(never) == 2 and not any(d.offline for d in never)


def test_failure_rates_apply_by_group_with_a_default(tmp_path):
    sim = Simulator(identities=[], keystore=Keystore(tmp_path), gateway_url="https://127.0.0.1:1", fail_rates={"beta": 1.0, "*": 0.0, "-": 1.0}, seed=1)
    assert sim.fails("beta") and sim.fails(None) and not sim.fails("canary")
