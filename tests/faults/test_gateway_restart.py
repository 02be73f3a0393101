"""The gateway restarted under a running fleet: the simulated devices (`manage.py simulate_fleet`:
python-tuf clients over mutual TLS, each with its own key) carry on by themselves.

The gateway is restarted twice while the fleet polls: gracefully (SIGTERM, as a deploy does) and
by a crash (kill -9). Devices see errors only while it is down, every device is seen again
afterwards, none gives up, and a rollout made after the restarts reaches its devices.
"""
import re
import signal
import time
from datetime import datetime, timezone

from devices.models import Device
from devices.gateway_identity import gateway_identity_get
from devices.simulator import Keystore
from factory.tuf.services.repository import ci_build_publish
from tests.processes import free_port
from tests.tuf_helpers import offline_targets_key
from tests.waves.conftest import HWIDS, TAG, make_wave, seed
from waves.services import wave_rollout

from .conftest import (
    child_env,
    device_pool,
    listening,
    poll_status,
    python,
    start_gateway,
    wait_until,
)

INTERVAL = 0.5  # seconds between a device's polls (a real fleet: minutes)
# The simulator logs each failed device step at DEBUG as "<device>: <error>" and carries on.
FAILED_STEP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) DEBUG breakwater\.simulator (\S+): ", re.M)
# "devices N (tuf N; offline N, gone N)": the kinds of device come first when the line has them.
PROGRESS = re.compile(r"devices (\d+) \((?:[^;)]*; )?offline (\d+), gone (\d+)\).*errors (\d+)")


def failed_steps(log):
    """(epoch, device name) of every failed step in the simulator's log (UTC timestamps)."""
    return [
        (datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=timezone.utc).timestamp(), name)
        for stamp, name in FAILED_STEP.findall(log)
    ]


def last_seen(factory):
    return {name: seen.timestamp() if seen else 0 for name, seen in Device.objects.filter(factory=factory).values_list("name", "last_seen")}


def test_devices_carry_on_through_a_graceful_and_a_crash_restart_of_the_gateway(transactional_db, factory, bob, processes, tmp_path):
    archive = offline_targets_key(factory=factory, actor=bob)
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    seed(factory, groups={"canary": 4}, ungrouped=12, test_devices=2)
    wave = make_wave(factory, bob, archive)
    gateway_identity_get(hosts=["127.0.0.1", "localhost"])
    names = set(last_seen(factory))
    port = free_port()
    env = child_env()
    gateway = start_gateway(processes, port=port, folder=tmp_path / "gateway-1", env=env)
    wait_until(lambda: listening(port), timeout=30, message=gateway.text()[-3000:])

    started = time.time()
    keystore = tmp_path / "fleet"
    fleet = processes.start(
        python(
            "manage.py", "simulate_fleet", "--factory", factory.name, "--gateway-url", f"https://127.0.0.1:{port}",
            "--keystore", str(keystore), "--interval", str(INTERVAL), "--threads", "6", "--reboot-delay", "0.2",
            "--progress", "1", "--seed", "7",
        ),
        env={**env, "LOG_LEVEL": "DEBUG"},
        log=tmp_path / "simulator.log",
    )

    def everyone_seen_since(moment):
        return lambda: all(seen > moment for seen in last_seen(factory).values())

    wait_until(everyone_seen_since(started), timeout=30, message=fleet.text()[-3000:])
    # A probe with one device's identity tells when a gateway answers.
    device = next(iter(Keystore(keystore).load().values()))
    probe = device_pool(port, Keystore(keystore).folder(device.uuid), Keystore(keystore).server_ca, timeout=2)
    assert poll_status(probe) == 200
    assert not failed_steps(fleet.text())
    windows = []

    def restart(stop, number):
        down = time.time()
        stop()
        gateway = start_gateway(processes, port=port, folder=tmp_path / f"gateway-{number}", env=env)
        wait_until(lambda: poll_status(probe) == 200, timeout=30, message=gateway.text()[-3000:])
        up = time.time()
        windows.append((down, up))
        # Every device polls again through the new process, by itself.
        wait_until(everyone_seen_since(up), timeout=15, message=fleet.text()[-3000:])
        return gateway

    # 1. A graceful restart (SIGTERM: gunicorn finishes its requests, flushes check-ins, exits).
    gateway = restart(gateway.stop, 2)
    # 2. A crash: kill -9 of the arbiter and its worker, then a start on the same port.
    gateway = restart(gateway.kill, 3)

    # 3. The fleet is whole: a rollout now reaches the canary devices through the new gateway.
    wave_rollout(wave=wave, actor=bob, group="canary")
    canary = Device.objects.filter(factory=factory, group__name="canary")
    wait_until(lambda: set(canary.values_list("target_version", flat=True)) == {42}, timeout=20, message=fleet.text()[-3000:])
    fleet.signal(signal.SIGINT)  # simulate_fleet stops on Ctrl-C
    fleet.proc.wait(timeout=30)

    log = fleet.text()
    devices, offline, gone, errors = map(int, PROGRESS.findall(log)[-1])
    assert (devices, offline, gone) == (len(names), 0, 0)
    assert set(last_seen(factory)) == names
    # Errors happened (the restarts did hit the fleet), and only while the gateway was down, give
    # or take a step a device had started just before (a step is a few requests).
    failures = failed_steps(log)
    assert errors > 0 and failures
    grace = 2.0
    outside = [(t, name) for t, name in failures if not any(down - grace <= t <= up + grace for down, up in windows)]
    assert not outside, (windows, outside)
    assert "rejected metadata" not in log
    # Test devices followed CI to 42 throughout; production devices outside canary stay on 41.
    versions = dict(Device.objects.filter(factory=factory).values_list("name", "target_version"))
    assert {v for n, v in versions.items() if n.startswith("test-")} == {42}
    assert {v for n, v in versions.items() if n.startswith("prod-")} == {41}
