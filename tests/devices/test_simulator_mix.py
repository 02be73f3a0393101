"""The simulator's mix of device kinds: python-tuf devices and aktualizr-lite-protocol devices,
chosen by --aktualizr-share and kept per device across restarts (no gateway needed)."""
from devices.aktualizr_device import AktualizrDevice
from devices.simulator import Identity, Keystore, SimDevice, Simulator


def identities(keystore, count):
    made = []
    for n in range(count):
        identity = Identity(uuid=f"00000000-0000-4000-8000-{n:012d}", name=f"d{n}", hardware_id="intel-corei7-64", production=True, tag="main", group=None, serial="01")
        keystore.save(identity, key_pem="", chain_pem="")
        made.append(identity)
    return made


def test_without_a_share_every_device_is_a_python_tuf_device(tmp_path):
    keystore = Keystore(tmp_path)
    sim = Simulator(identities=identities(keystore, 20), keystore=keystore, gateway_url="https://127.0.0.1:8443", seed=1)
    assert all(type(d) is SimDevice for d in sim.devices)
    assert sim.summary()["kinds"] == {"tuf": 20}


def test_a_share_makes_both_kinds_and_each_device_keeps_its_kind(tmp_path):
    keystore = Keystore(tmp_path)
    sim = Simulator(identities=identities(keystore, 100), keystore=keystore, gateway_url="https://127.0.0.1:8443", seed=1, aktualizr_share=0.3)
    kinds = {d.identity.uuid: type(d) for d in sim.devices}
    assert 15 <= sum(k is AktualizrDevice for k in kinds.values()) <= 45
    assert any(k is SimDevice for k in kinds.values())
    # A restart with another share keeps every device's kind (its folder says which it is).
    again = Simulator(identities=list(keystore.load().values()), keystore=keystore, gateway_url="https://127.0.0.1:8443", seed=2, aktualizr_share=0.9)
    assert {d.identity.uuid: type(d) for d in again.devices} == kinds


def test_the_share_does_not_change_which_devices_stay_offline(tmp_path):
    keystore = Keystore(tmp_path)
    plain = Simulator(identities=identities(keystore, 30), keystore=keystore, gateway_url="https://127.0.0.1:8443", seed=3, offline_ratio=0.2)
    offline = {d.identity.uuid for d in plain.devices if d.offline}
    other = Keystore(tmp_path / "other")
    mixed = Simulator(identities=identities(other, 30), keystore=other, gateway_url="https://127.0.0.1:8443", seed=3, offline_ratio=0.2, aktualizr_share=0.5)
    assert {d.identity.uuid for d in mixed.devices if d.offline} == offline


def test_both_kinds_of_simulated_device_are_free_of_django():
    import ast
    from pathlib import Path

    for module in ("devices/simulator.py", "devices/aktualizr_device.py"):
        tree = ast.parse(Path(module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    assert name.split(".")[0] not in ("django", "celery"), f"{module} imports {name}"
                    if isinstance(node, ast.ImportFrom) and node.level:
                        assert name in ("pki", "simulator", "aktualizr_device") or (name == "" and {a.name for a in node.names} <= {"pki"}), f"{module} imports .{name}"
