"""Device gateway under a connection flood: real devices' polls with and without it, side by side.

50 devices poll /repo/timestamp.json over mutual TLS (kept-alive, then a new TLS connection per
poll) first with no flood, then while another process holds 500 idle TCP connections, 100 TLS
handshakes stalled after a few bytes and 50 TLS connections trickling a request head a byte a
second (each reopened as soon as the server closes it, as an attacker would). The flood comes from
127.0.0.2 and up, spread so that the per-address cap does not refuse it: what is measured is the
server holding it. Goal: under the flood, throughput at least half and p99 at most three times
the figures without it, and no device errors.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bw_devices .venv/bin/python bench/gateway_flood.py \\
        [--seconds 10] [--idle 500] [--handshakes 100] [--trickle 50]
"""
import argparse
import multiprocessing
import os
import selectors
import shutil
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.gateway import django_setup, fleet_setup, free_port, load, start_gateway, stop  # noqa: E402

STALLED_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
PER_SOURCE = 30
THROUGHPUT_GOAL = 0.5
P99_GOAL = 3.0


class Flood:
    """Holds the flood's connections open until told to stop (or `limit` s), reopening what the
    server closes."""

    def __init__(self, port, device_folder, server_ca, counts):
        self.port = port
        self.counts = counts
        self.selector = selectors.DefaultSelector()
        self.context = ssl.create_default_context(cafile=server_ca)
        self.context.load_cert_chain(f"{device_folder}/client.pem", f"{device_folder}/client.key")
        self.opened = 0
        self._source = 0

    def _connect(self):
        self._source += 1
        source = f"127.0.0.{2 + (self._source // PER_SOURCE) % 250}"
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=(source, 0))
        self.opened += 1
        return sock

    def open(self, kind):
        try:
            sock = self._connect()
            if kind == "handshake":
                sock.sendall(STALLED_HELLO)
            elif kind == "trickle":
                sock = self.context.wrap_socket(sock, server_hostname="127.0.0.1")
                sock.sendall(b"GET /repo/timestamp.json HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
            sock.setblocking(False)
        except OSError:
            return
        self.selector.register(sock, selectors.EVENT_READ, kind)

    def run(self, done, limit):
        stop_at = time.monotonic() + limit
        for kind, count in self.counts.items():
            for _ in range(count):
                self.open(kind)
        next_trickle = time.monotonic() + 1
        while time.monotonic() < stop_at and not done.is_set():
            for key, _ in self.selector.select(timeout=0.2):
                try:
                    data = key.fileobj.recv(4096)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    data = b""
                if not data:  # closed by the server: open another
                    self.selector.unregister(key.fileobj)
                    key.fileobj.close()
                    self.open(key.data)
            if time.monotonic() >= next_trickle:
                next_trickle += 1
                for key in list(self.selector.get_map().values()):
                    if key.data == "trickle":
                        try:
                            key.fileobj.send(b"a")
                        except (OSError, ssl.SSLWantWriteError):
                            pass
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()


def _flood_process(port, device_folder, server_ca, counts, limit, ready, done, opened):
    flood = Flood(port, device_folder, server_ca, counts)
    ready.set()
    flood.run(done, limit)
    opened.value = flood.opened


def _run(work, args):
    django_setup()
    from django.core.management import call_command
    from django.db import connection, connections

    call_command("migrate", verbosity=0)
    _, folders, server_ca = fleet_setup(args.devices, work)
    connections.close_all()
    log = open(work / "gateway.log", "w")
    port = free_port()
    gateway, _ = start_gateway(port, args.workers, args.threads, work / "tls", log)
    counts = {"idle": args.idle, "handshake": args.handshakes, "trickle": args.trickle}
    rows, opened = [], 0
    try:
        for label, mode in (("kept-alive", "200"), ("new TLS connection each poll", "new-connection")):
            rows.append((f"{label}, no flood", load(port, folders, server_ca, mode, args.seconds)))
            context = multiprocessing.get_context("fork")
            ready, done, count = context.Event(), context.Event(), context.Value("i", 0)
            # The flood outlasts the load (its warm-up, the run, the reports): stopped explicitly.
            flood = context.Process(target=_flood_process, args=(port, folders[0], server_ca, counts, args.seconds + 60, ready, done, count))
            flood.start()
            ready.wait(30)
            time.sleep(2)  # the flood's connections are open before the devices start
            rows.append((f"{label}, flood", load(port, folders, server_ca, mode, args.seconds)))
            done.set()
            flood.join(30)
            opened += count.value
    finally:
        stop(gateway)
        log.close()

    print(
        f"\nGateway under a flood: {args.devices} devices over mutual TLS, {args.workers} workers x {args.threads} threads, "
        f"flood {args.idle} idle TCP + {args.handshakes} stalled handshakes + {args.trickle} trickled heads "
        f"(reopened when closed); {connection.vendor}; {os.cpu_count()} cores shared; {args.seconds:.0f} s per row"
    )
    print(f"{'':44} {'polls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  statuses")
    for label, r in rows:
        print(f"{label:44} {r['rate']:9.0f} {r['p50']:8.1f} {r['p99']:8.1f} {r['errors']:7d}  {r['statuses']}")
    for i in range(0, len(rows), 2):
        (label, calm), (_, flooded) = rows[i], rows[i + 1]
        name = label.rsplit(",", 1)[0]
        throughput = flooded["rate"] / calm["rate"] if calm["rate"] else 0.0
        p99 = flooded["p99"] / calm["p99"] if calm["p99"] else float("inf")
        print(
            f"flood / no flood, {name}: throughput {throughput:.2f}x (goal >= {THROUGHPUT_GOAL}x), "
            f"p99 {p99:.2f}x (goal <= {P99_GOAL:g}x), errors under flood {flooded['errors']} (goal 0)"
        )
    print(f"flood connections opened in all: {opened}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--handshakes", type=int, default=100)
    parser.add_argument("--trickle", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bw-bench-flood-"))
    try:
        _run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
