"""Fleet simulator at scale: N simulated devices (python-tuf clients, each with its own key, over
mutual TLS) polling a real gateway; prints the poll rate reached against the rate asked for,
errors, and the CPU the simulator and the gateway used.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bw_devices REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/simulator.py [--devices 10000] [--interval 300] [--seconds 600]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.gateway import django_setup, free_port, start_gateway, stop  # noqa: E402

FACTORY = "bench-simulator"
HWIDS = ["intel-corei7-64", "raspberrypi4-64"]
CLOCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU of a process and its children (gunicorn workers), from /proc."""
    total = 0.0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK
    return total


def _run(work):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=300.0, help="seconds between polls of a device")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--threads", type=int, default=32, help="simulator threads")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--aktualizr-share", type=float, default=0.3, help="share of devices speaking aktualizr-lite's protocol")
    args = parser.parse_args()

    django_setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    from devices.fleet import fleet_seed
    from devices.models import Device
    from factory.models import Factory
    from factory.tuf.services.repository import ci_build_publish, factory_create

    factory = Factory.objects.filter(name=FACTORY).first()
    if factory is None:
        factory = factory_create(name=FACTORY)
        for version in (41, 42):
            ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=["production"])
    have = Device.objects.filter(factory=factory).count()
    if have < args.devices:
        started = time.perf_counter()
        fleet_seed(factory=factory, tag="production", ungrouped=args.devices - have, version=41, hardware_ids=HWIDS)
        print(f"registered {args.devices - have} devices in {time.perf_counter() - started:.1f} s")
    connection.close()

    log = open(work / "gateway.log", "w")
    port = free_port()
    gateway, _ = start_gateway(port, args.workers, 8, work / "tls", log)
    keystore = work / "keystore"
    simulator = subprocess.Popen(
        [
            sys.executable, "manage.py", "simulate_fleet", "--factory", FACTORY, "--devices", str(args.devices),
            "--gateway-url", f"https://127.0.0.1:{port}", "--interval", str(args.interval), "--threads", str(args.threads),
            "--duration", str(args.seconds), "--progress", "60", "--keystore", str(keystore),
            "--aktualizr-share", str(args.aktualizr_share),
        ],
        cwd=ROOT,
    )
    # CPU from when devices start polling (the take-over before it is a one-off).
    while not any(keystore.glob("*/identity.json")) and simulator.poll() is None:
        time.sleep(0.5)
    while simulator.poll() is None and len(list(keystore.glob("*/identity.json"))) < args.devices:
        time.sleep(1)
    started = time.monotonic()
    sim_cpu0, gw_cpu0 = cpu_seconds(simulator.pid), cpu_seconds(gateway.pid)
    sim_cpu = gw_cpu = 0.0
    while True:
        time.sleep(1)
        sample = cpu_seconds(simulator.pid), cpu_seconds(gateway.pid)
        if simulator.poll() is not None:
            break
        sim_cpu, gw_cpu = sample[0] - sim_cpu0, sample[1] - gw_cpu0
    elapsed = time.monotonic() - started
    stop(gateway)
    log.close()
    print(
        f"\nSimulator: {args.devices} devices, poll interval {args.interval:.0f} s (asked: {args.devices / args.interval:.1f} polls/s), "
        f"{elapsed:.0f} s on {os.cpu_count()} cores\n"
        f"CPU used: simulator {100 * sim_cpu / elapsed:.0f}% of one core, gateway ({args.workers} workers) {100 * gw_cpu / elapsed:.0f}% of one core"
    )


def main():
    # The work folder holds the benchmark devices' private keys: never leave it behind.
    work = Path(tempfile.mkdtemp(prefix="bw-bench-simulator-"))
    try:
        _run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
