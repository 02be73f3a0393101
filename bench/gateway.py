"""Device gateway benchmark: polls per second for timestamp.json over mutual TLS.

50 devices (real registered devices, each with its own key and certificate; half of them staged in
an active wave, so both view resolutions are exercised) poll /repo/timestamp.json as fast as they
can over kept-alive mutual-TLS connections, answered 200 (full body) or 304 (If-None-Match), and
once more opening a new TLS connection per poll (what a device polling every few minutes does).
A static handler under the same server and TLS settings (factory.project.gateway.server), answering the
same bytes without Django, gives the ceiling of this stack. Load generator and servers share the machine's cores.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bw_devices REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/gateway.py [--devices 50] [--seconds 15] [--workers 2] [--threads 8]
"""
import argparse
import http.client
import multiprocessing
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/gateway.py`, this folder comes first on sys.path and bench/tuf.py would
# shadow the tuf package: put the project root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from factory.project.gateway import server as gateway_server  # noqa: E402

FACTORY = "bench-gateway"
TAG = "production"
HWID = "intel-corei7-64"


# --- the static ceiling: same TLS, same bytes, no Django --------------------------------------


class StaticService:
    """Serve one file's bytes with an ETag, 304 on If-None-Match; the server does the mutual TLS."""

    def respond(self, environ):
        body, etag = _static()
        if environ.get("HTTP_IF_NONE_MATCH") == etag:
            return 304, [("ETag", etag), ("Content-Length", "0")], b""
        return 200, [("Content-Type", "application/json"), ("ETag", etag), ("Content-Length", str(len(body)))], body


static_service = StaticService()


_static_cache = []


def _static():
    if not _static_cache:
        import hashlib

        body = Path(os.environ["BENCH_STATIC_FILE"]).read_bytes()
        _static_cache.append((body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'))
    return _static_cache[0]


# --- setup ------------------------------------------------------------------------------------


def django_setup():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.project.settings")
    import django

    django.setup()
    from django.db import connection

    if connection.vendor == "postgresql":
        _database_ensure(connection.settings_dict)


def _database_ensure(db):
    """Create the benchmark's PostgreSQL database on first use."""
    import psycopg

    params = {"host": db.get("HOST") or "127.0.0.1", "port": db.get("PORT") or 5432, "user": db.get("USER") or None, "password": db.get("PASSWORD") or None}
    try:
        psycopg.connect(dbname=db["NAME"], **params).close()
    except psycopg.OperationalError:
        with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
            admin.execute(f'CREATE DATABASE "{db["NAME"]}"')


def fleet_setup(count, folder):
    """A factory with CI builds 41 and 42, an active wave of 42 staged on half the devices, and
    `count` freshly registered production devices; returns their identity folders."""
    from devices import pki
    from devices.models import Device, DeviceGroup
    from devices.gateway_identity import gateway_endpoint
    from devices.selectors import device_ca_certificate
    from devices.services import device_group_create, devices_register
    from factory.models import Factory
    from factory.tuf.services.repository import ci_build_publish, factory_create
    from factory.tuf.services.root_changes import offline_key_generate
    from waves.models import Wave
    from waves.services import wave_init, wave_rollout, wave_sign

    factory = Factory.objects.filter(name=FACTORY).first()
    if factory is None:
        factory = factory_create(name=FACTORY)
        for version in (41, 42):
            ci_build_publish(factory=factory, version=version, hardware_ids=[HWID], tags=[TAG])
    Device.objects.filter(factory=factory).delete()
    staged = DeviceGroup.objects.filter(factory=factory, name="staged").first() or device_group_create(factory=factory, name="staged")
    keys, identities = {}, []
    for group, n in ((staged, count // 2), (None, count - count // 2)):
        requests = []
        for _ in range(n):
            import uuid

            device_uuid = uuid.uuid4()
            key = pki.key_generate()
            keys[device_uuid] = key
            requests.append({"csr": pki.device_csr_build(private_key=key, device_uuid=device_uuid, factory_name=FACTORY, production=True), "hardware_id": HWID})
        for registration in devices_register(factory=factory, actor=None, tag=TAG, group=group, requests=requests, allow_production=True):
            identities.append((registration.device.uuid, registration.certificate))
    if not Wave.objects.filter(factory=factory, status=Wave.Status.ACTIVE).exists():
        archive = offline_key_generate(factory=factory, actor=None, role="targets")
        wave = wave_init(factory=factory, actor=None, name=f"bench-{int(time.time())}", version=42, tag=TAG)
        wave = wave_sign(wave=wave, actor=None, key_archive=archive)
        wave_rollout(wave=wave, actor=None, group="staged")
    ca = device_ca_certificate(factory=factory)
    server_ca = folder / "server-ca.pem"
    server_ca.write_text(gateway_endpoint()["ca_certificate"])
    folders = []
    for device_uuid, cert in identities:
        device_folder = folder / str(device_uuid)
        device_folder.mkdir()
        (device_folder / "client.pem").write_text(cert + ca)
        (device_folder / "client.key").write_text(pki.key_pem(keys[device_uuid]))
        folders.append(str(device_folder))
    return factory, folders, str(server_ca)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, process, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def start_gateway(port, workers, threads, tls_dir, log, loop="auto"):
    from factory.project.management.commands.gateway import Command

    argv = Command.prepare(bind=f"127.0.0.1:{port}", workers=workers, threads=threads, tls_dir=tls_dir) + ["--loop", loop]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wait_listening(port, process)
    return process, argv


def start_static(port, gateway_argv, static_file, log):
    argv = list(gateway_argv)
    argv[argv.index("--app") + 1] = "bench.gateway:static_service"
    argv[argv.index("--bind") + 1] = f"127.0.0.1:{port}"
    process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "BENCH_STATIC_FILE": str(static_file)})
    wait_listening(port, process)
    return process


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


# --- load -------------------------------------------------------------------------------------


def _device_loop(port, folder, server_ca, mode, warmup_until, stop_at, out):
    context = ssl.create_default_context(cafile=server_ca)
    context.load_cert_chain(f"{folder}/client.pem", f"{folder}/client.key")
    headers = {"x-ats-tags": TAG, "x-ats-target": f"{HWID}-lmp-41"}
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    conn.request("GET", "/repo/timestamp.json", headers=headers)
    first = conn.getresponse()
    first.read()
    etag = first.getheader("ETag")
    if mode == "304":
        headers["If-None-Match"] = etag
    statuses, latencies, errors = Counter(), [], 0
    while True:
        started = time.perf_counter()
        if started >= stop_at:
            break
        try:
            if mode == "new-connection":
                conn.close()
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
            conn.request("GET", "/repo/timestamp.json", headers=headers)
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
            continue
        if started >= warmup_until:
            statuses[status] += 1
            latencies.append(time.perf_counter() - started)
    conn.close()
    out.append((statuses, latencies, errors))


def _client_process(port, folders, server_ca, mode, warmup_until, stop_at, queue):
    out = []
    threads = [threading.Thread(target=_device_loop, args=(port, f, server_ca, mode, warmup_until, stop_at, out)) for f in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses, latencies, errors = Counter(), [], 0
    for s, lat, e in out:
        statuses.update(s)
        latencies.extend(lat)
        errors += e
    queue.put((statuses, latencies, errors))


def load(port, folders, server_ca, mode, seconds, warmup=2.0, clients=2):
    """Every device polls as fast as it can for `seconds` after `warmup`; returns figures."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    warmup_until = time.perf_counter() + warmup + 1.0
    stop_at = warmup_until + seconds
    chunks = [folders[i::clients] for i in range(clients)]
    processes = [context.Process(target=_client_process, args=(port, chunk, server_ca, mode, warmup_until, stop_at, queue)) for chunk in chunks]
    for process in processes:
        process.start()
    statuses, latencies, errors = Counter(), [], 0
    for _ in processes:
        s, lat, e = queue.get()
        statuses.update(s)
        latencies.extend(lat)
        errors += e
    for process in processes:
        process.join()
    latencies.sort()
    total = sum(statuses.values())
    return {
        "rate": total / seconds,
        "statuses": dict(statuses),
        "p50": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan"),
        "errors": errors,
    }


def _run(work):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--skip-static", action="store_true")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="the gateway's event loop (auto: uvloop if installed)")
    args = parser.parse_args()

    django_setup()
    from django.conf import settings
    from django.db import connection, connections

    if connection.vendor != "postgresql":
        print("note: not on PostgreSQL (set DATABASE_URL); figures are for", connection.vendor)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    factory, folders, server_ca = fleet_setup(args.devices, work)
    connections.close_all()  # the load generator forks

    log = open(work / "servers.log", "w")
    port = free_port()
    gateway, argv = start_gateway(port, args.workers, args.threads, work / "tls", log, args.loop)
    rows = []
    try:
        for label, mode in (("timestamp.json 200, kept-alive", "200"), ("timestamp.json 304, kept-alive", "304"), ("timestamp.json 200, new TLS connection each poll", "new-connection")):
            rows.append((label, load(port, folders, server_ca, mode, args.seconds, clients=args.clients)))
        if not args.skip_static:
            body = Path(work / "timestamp.json")
            context = ssl.create_default_context(cafile=server_ca)
            context.load_cert_chain(f"{folders[0]}/client.pem", f"{folders[0]}/client.key")
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
            conn.request("GET", "/repo/timestamp.json")
            body.write_bytes(conn.getresponse().read())
            conn.close()
    finally:
        stop(gateway)
    if not args.skip_static:
        static_port = free_port()
        static = start_static(static_port, argv, work / "timestamp.json", log)
        try:
            for label, mode in (("static server, same bytes: 200, kept-alive", "200"), ("static server, same bytes: 304, kept-alive", "304")):
                rows.append((label, load(static_port, folders, server_ca, mode, args.seconds, clients=args.clients)))
        finally:
            stop(static)
    log.close()

    from devices.models import Device

    seen = Device.objects.filter(factory=factory, last_seen__isnull=False).count()
    print(
        f"\nGateway benchmark: {args.devices} devices over mutual TLS, {args.workers} workers x {args.threads} handler threads "
        f"({'uvloop' if gateway_server.uvloop and args.loop != 'asyncio' else 'asyncio'} loop), "
        f"{args.clients} load processes on the same {os.cpu_count()} cores; {connection.vendor}; "
        f"check-ins buffered in {'Redis' if settings.REDIS_URL else 'gateway memory'}; {args.seconds:.0f} s per row"
    )
    print(f"{'':52} {'polls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  statuses")
    for label, r in rows:
        print(f"{label:52} {r['rate']:9.0f} {r['p50']:8.1f} {r['p99']:8.1f} {r['errors']:7d}  {r['statuses']}")
    print(f"devices whose check-ins reached the database: {seen}/{args.devices}")


def main():
    # The work folder holds the benchmark devices' private keys: never leave it behind.
    work = Path(tempfile.mkdtemp(prefix="bw-bench-gateway-"))
    try:
        _run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
