"""Soak: the device gateway and the dashboard under load at once, on loopback, like production.

On a PostgreSQL database of its own (a fresh factory in it each run), this starts the gateway
(factory.project.gateway.server, mutual TLS), the dashboard web server (gunicorn), a Celery worker and beat (check-ins
flushed, wave and factory status aggregated), registers --devices devices (fleet_seed, then taken
over by the fleet simulator with keys of its own, as bench/simulator.py does) and lets them poll
every --interval seconds for --seconds. Meanwhile a wave of a newer build is rolled out in three
phases through the REST API, so devices download, install and report events, and a signed-in
release manager's HTTP client reads the dashboard (wave page, live status panel, devices, a device,
factory status) a few times a second.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bw_soak REDIS_URL=redis://127.0.0.1:6379/8 \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/8 .venv/bin/python -m bench.soak [--devices 10000] [--seconds 600]

Prints poll and page latencies (p50/p95/p99), errors, the database size before and after with the
growth per device-day, and each process's CPU and memory; exits 1 if anything failed (a poll, a
page, a rollout, an error in a server's log). Storage: after a VACUUM (not FULL) at the end, the
bytes per device-day of the device and check-in tables apart from the device events (goal
< 1 KB), also from the moment every device had checked in once (so each device's first report
rows are not taken for daily growth: give --interval well below --seconds), and how many of
the device rows' updates were heap-only (HOT). The database must hold only earlier soak factories:
a benchmark or demo database is refused. Processes keep their state and logs under
var/soak/ (BREAKWATER_VAR_DIR), so their embedded Celery queue is never another process's.
"""
import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuid_lib
from collections import Counter, defaultdict
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/soak.py`, bench/ would come first on sys.path and bench/tuf.py would
# shadow the tuf package: put the project root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

TAG = "production"
HWIDS = ["intel-corei7-64", "raspberrypi4-64"]
PREFIX = "soak-"
CLOCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# (share of the soak, what is rolled out): a canary group, part of a bigger group, a fleet sample.
PHASES = [(0.1, {"group": "canary"}), (0.4, {"group": "beta", "limit": "25%"}), (0.6, {"limit": "5%"})]
# The pages a release manager keeps open; the live panel polls (every status interval) the most.
PAGES = ["wave page", "wave live panel (htmx)", "devices list", "wave live panel (htmx)", "device page", "wave status poll (htmx)", "factory status"]


# --- processes ---------------------------------------------------------------------------------


def _tree(pid):
    """pid and all its descendants (gunicorn and Celery pool workers)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def _proc(pid):
    """(CPU seconds, resident bytes, proportional bytes) of one process from /proc, or None.

    The proportional set size splits shared pages between the processes that map them (gunicorn
    workers forked from their master, PostgreSQL's shared buffers), so it can be added up."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return None  # exited, not yet reaped: it no longer shows its threads' CPU
        pss = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M)
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK, int(fields[21]) * PAGE_SIZE, int(pss.group(1)) * 1024 if pss else 0


class Watched:
    """A process tree whose CPU is counted from `start()` and whose peak memory is sampled."""

    def __init__(self, name, pids_of):
        self.name = name
        self.pids_of = pids_of  # () -> the pids now
        self.cpu0, self.cpu, self.peak_rss, self.peak_pss = {}, {}, 0, 0

    def _now(self):
        return {p: figures for p in self.pids_of() if (figures := _proc(p))}

    def start(self):
        self.cpu0 = {p: cpu for p, (cpu, _, _) in self._now().items()}
        self.cpu = dict(self.cpu0)

    def sample(self):
        now = self._now()
        for p, (cpu, _, _) in now.items():
            self.cpu[p] = max(cpu, self.cpu.get(p, 0.0))
        self.peak_rss = max(self.peak_rss, sum(rss for _, rss, _ in now.values()))
        self.peak_pss = max(self.peak_pss, sum(pss for _, _, pss in now.values()))

    def cpu_seconds(self):
        # A process that started during the soak (a database backend, a pool worker) counts whole.
        return sum(cpu - self.cpu0.get(p, 0.0) for p, cpu in self.cpu.items())


class Servers:
    """The soak's child processes: started with logs under one folder, stopped by their own pid."""

    def __init__(self, logs):
        self.logs = logs
        self.procs = {}

    def start(self, name, argv, env=None):
        log = open(self.logs / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return self.procs[name]

    def stop(self, name, timeout=30):
        process = self.procs.get(name)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self, timeout=30):
        # All at once: each takes seconds to wind down (the gateway's workers flush on exit).
        running = [p for p in self.procs.values() if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def dead(self):
        return [name for name, p in self.procs.items() if p.poll() is not None and name != "fleet"]

    def log_errors(self, name):
        """Lines of a server's log that report an error (tracebacks, ERROR records, killed workers)."""
        path = self.logs / f"{name}.log"
        if not path.exists():
            return []
        pattern = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|Worker \(pid:\d+\) was sent|WORKER TIMEOUT")
        return [line.rstrip() for line in path.read_text(errors="replace").splitlines() if pattern.search(line)]


# --- setup -------------------------------------------------------------------------------------


def soak_setup(devices, run_name):
    """A fresh factory with CI builds 41 and 42, `devices` production devices on 41 (5% in group
    canary, 20% in beta, the rest ungrouped), a signed wave of 42, a release manager with a
    password and an API token. Earlier soak factories' open waves are cancelled, so the status
    tasks stop following them (a day later, as for any finished wave)."""
    from devices.fleet import fleet_seed
    from factory.models import Role
    from factory.services import api_token_create, user_create
    from factory.tuf.services.repository import ci_build_publish, factory_create
    from factory.tuf.services.root_changes import offline_key_generate
    from waves.models import Wave
    from waves.services import wave_cancel, wave_init, wave_sign

    for wave in Wave.objects.filter(factory__name__startswith=PREFIX, status__in=(Wave.Status.ACTIVE, Wave.Status.UNSIGNED)):
        wave_cancel(wave=wave, actor=None)
    factory = factory_create(name=run_name)
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    canary, beta = max(1, devices // 20), devices // 5
    fleet_seed(factory=factory, tag=TAG, groups={"canary": canary, "beta": beta}, ungrouped=devices - canary - beta, version=41, hardware_ids=HWIDS)
    archive = offline_key_generate(factory=factory, actor=None, role="targets")
    wave = wave_sign(wave=wave_init(factory=factory, actor=None, name="v42", version=42, tag=TAG), actor=None, key_archive=archive)
    password = uuid_lib.uuid4().hex
    user = user_create(username=f"{run_name}-rm", factory=factory, role=Role.RELEASE_MANAGER, password=password)
    _, token = api_token_create(user=user, factory=factory, name="soak rollouts")
    return factory, wave, user.username, password, token


def database_sizes():
    """(pg_database_size, {table: total bytes with indexes and TOAST})."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        total = cursor.fetchone()[0]
        cursor.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = current_schema()"
        )
        return total, dict(cursor.fetchall())


# What check-ins write: each device's row and its client report. Events are counted apart: they
# grow with the updates devices report, and the retention (BREAKWATER_EVENT_RETENTION_DAYS)
# bounds them, not the polls.
CHECKIN_TABLES = ("devices_device", "devices_devicereport")
EVENT_TABLES = ("devices_deviceevent",)
CHECKIN_GOAL_BYTES = 1024  # per device-day, after VACUUM


def relation_sizes(tables=CHECKIN_TABLES):
    """{relation: bytes} of each table (heap, TOAST, free-space and visibility maps) and each of
    its indexes: where a table's growth went."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_table_size(c.oid) FROM pg_class c WHERE c.relname = ANY(%s) AND c.relkind = 'r' "
            "UNION ALL SELECT i.relname, pg_relation_size(i.oid) FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid "
            "JOIN pg_class i ON i.oid = x.indexrelid WHERE c.relname = ANY(%s)",
            [list(tables), list(tables)],
        )
        return dict(cursor.fetchall())


def vacuum(tables=()):
    """Plain VACUUM (not FULL, which would lock and shrink): the space it frees is what later
    rows reuse, so the sizes after it are the ones that keep growing or do not."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM " + ", ".join(tables) if tables else "VACUUM")


def row_updates(table="devices_device"):
    """(row updates, heap-only ones) of `table` so far, as the statistics collector counted them
    (server processes report theirs as they go idle and when they exit)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s AND schemaname = current_schema()", [table])
        row = cursor.fetchone()
    return row or (0, 0)


def row_updates_final(table="devices_device", patience=10.0):
    """row_updates once the servers' last reports are in: a backend reports its counts as it
    exits, a moment after its client has gone."""
    last, deadline = row_updates(table), time.monotonic() + patience
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = row_updates(table)
        if now == last:
            break
        last = now
    return last


def backend_pids():
    """PostgreSQL server processes serving this database (they run on this machine)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return [row[0] for row in cursor.fetchall()]


# --- the fleet (a child process) ----------------------------------------------------------------


def fleet_main(argv):
    """`python -m bench.soak _fleet ...`: the simulated fleet, timing each poll (TLS connection and
    TUF metadata refresh, as the device sees it); writes its figures to --out as JSON."""
    parser = argparse.ArgumentParser()
    for name in ("--factory", "--keystore", "--gateway-url", "--out", "--ready", "--go"):
        parser.add_argument(name, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--progress", type=float, default=60.0)
    args = parser.parse_args(argv)

    from bench.gateway import django_setup

    django_setup()
    from devices.fleet import take_over
    from devices.simulator import Keystore, SimDevice, Simulator
    from factory.models import Factory

    errors = Counter()

    class Errors(logging.Handler):
        # The simulator counts a device's failed step and logs why at DEBUG: keep the reasons.
        def emit(self, record):
            if record.levelno != logging.INFO:
                errors[re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|sim-\w+|prod-\d+|canary-\d+|beta-\d+", "*", record.getMessage())[:300]] += 1

    sim_logger = logging.getLogger("breakwater.simulator")
    sim_logger.setLevel(logging.DEBUG)
    sim_logger.addHandler(Errors())
    sim_logger.propagate = False

    class TimedDevice(SimDevice):
        def _poll(self, pool):
            self.poll_started = time.perf_counter()
            return super()._poll(pool)

        def _updater(self, pool):
            updater = super()._updater(pool)
            refresh = updater.refresh

            def timed_refresh():
                try:
                    refresh()
                finally:
                    self.sim.poll_timed(time.perf_counter() - self.poll_started)

            updater.refresh = timed_refresh
            return updater

    class TimedSimulator(Simulator):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.devices = [TimedDevice(**vars(d)) for d in self.devices]
            self.latencies = []

        def poll_timed(self, seconds):
            with self._lock:
                self.latencies.append(seconds)

    factory = Factory.objects.get(name=args.factory)
    keystore = Keystore(args.keystore)
    identities = take_over(factory=factory, keystore=keystore, limit=args.devices)
    from django.db import connections

    connections.close_all()
    simulator = TimedSimulator(identities=identities, keystore=keystore, gateway_url=args.gateway_url, interval=args.interval, threads=args.threads)
    Path(args.ready).write_text("ready")
    # The soak starts when every server is up too.
    parent = os.getppid()
    while not Path(args.go).exists():
        if os.getppid() != parent:
            return 1  # the soak is gone
        time.sleep(0.1)
    started, cpu = time.monotonic(), time.process_time()
    summary = simulator.run(duration=args.seconds, progress_every=args.progress)
    figures = {
        "summary": summary,
        "latencies": simulator.latencies,
        "errors": dict(errors),
        "seconds": time.monotonic() - started,
        # Its own CPU: once it has exited, /proc no longer tells.
        "cpu_seconds": time.process_time() - cpu,
    }
    Path(args.out).write_text(json.dumps(figures))


# --- the dashboard client ----------------------------------------------------------------------


class Dashboard:
    """A signed-in browser's requests, without the browser: session and CSRF cookies kept."""

    def __init__(self, base):
        import urllib3

        self.base = base
        self.http = urllib3.PoolManager(maxsize=8, timeout=urllib3.Timeout(connect=10, read=120), retries=False)
        self.cookies = {}
        self._lock = threading.Lock()

    def request(self, method, path, body=None, headers=None):
        with self._lock:
            cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        response = self.http.request(method, self.base + path, body=body, headers={**(headers or {}), "Cookie": cookie}, redirect=False)
        for header in response.headers.getlist("Set-Cookie"):
            jar = SimpleCookie(header)
            with self._lock:
                self.cookies.update({k: m.value for k, m in jar.items()})
        return response

    def login(self, username, password):
        form = self.request("GET", "/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', form.data).group(1).decode()
        response = self.request(
            "POST", "/login/", body=urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token}),
            headers={"Content-Type": "application/x-www-form-urlencoded", "Referer": self.base + "/login/"},
        )
        if response.status != 302 or "sessionid" not in self.cookies:
            raise SystemExit(f"signing in to the dashboard failed ({response.status})")


def dashboard_drive(client, wave_name, device_uuids, rate, stop, results, threads=2):
    """Request the pages in turn, `rate` a second in all (paced, not closed-loop), from `threads`
    threads so one slow page does not hold the others back. Appends (page, seconds, status, note)."""
    import random

    hx = {"HX-Request": "true"}
    urls = {
        "wave page": (f"/waves/{wave_name}/", {}),
        "wave live panel (htmx)": (f"/waves/{wave_name}/live/", {**hx, "HX-Target": "wave-live"}),
        "wave status poll (htmx)": (f"/waves/{wave_name}/", {**hx, "HX-Target": "wave-status"}),
        "devices list": ("/devices/", {}),
        "factory status": ("/status/", {}),
    }
    counter = iter(range(10**9))
    lock = threading.Lock()
    started = time.monotonic()
    rng = random.Random(1)

    def worker():
        while not stop.is_set():
            with lock:
                n = next(counter)
                device = rng.choice(device_uuids)
            due = started + n / rate
            if stop.wait(max(0.0, due - time.monotonic())):
                return
            page = PAGES[n % len(PAGES)]
            path, headers = urls.get(page) or (f"/devices/{device}/", {})
            t0 = time.perf_counter()
            try:
                response = client.request("GET", path, headers=headers)
                status, note = response.status, "" if response.status == 200 else response.data[:200].decode(errors="replace")
            except Exception as exc:  # a refused or timed-out request is an error of the soak
                status, note = 0, repr(exc)[:200]
            results.append((page, time.perf_counter() - t0, status, note))

    pool = [threading.Thread(target=worker, name=f"dashboard-{i}", daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    return pool


def rollouts_drive(client, factory_name, wave_name, token, seconds, stop, results):
    """The wave's phases through the REST API at their share of the soak."""
    started = time.monotonic()

    def run():
        for share, params in PHASES:
            if stop.wait(max(0.0, started + share * seconds - time.monotonic())):
                return
            t0 = time.perf_counter()
            try:
                response = client.request(
                    "POST", f"/api/v1/factories/{factory_name}/waves/{wave_name}/rollout", body=json.dumps(params),
                    headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
                )
                data = json.loads(response.data or b"{}")
                status, note = response.status, data.get("count") if response.status == 200 else str(data)[:200]
            except Exception as exc:
                status, note = 0, repr(exc)[:200]
            results.append((time.monotonic() - started, params, time.perf_counter() - t0, status, note))

    thread = threading.Thread(target=run, name="rollouts", daemon=True)
    thread.start()
    return thread


# --- figures -----------------------------------------------------------------------------------


def percentiles(seconds):
    """p50, p95, p99 in milliseconds (nearest rank)."""
    if not seconds:
        return float("nan"), float("nan"), float("nan")
    ordered = sorted(seconds)

    def rank(q):
        return ordered[min(len(ordered) - 1, max(0, int(-(-q * len(ordered) // 1)) - 1))] * 1000

    return rank(0.50), rank(0.95), rank(0.99)


def gateway_access(path):
    """Server-side request times and statuses from the gateway's access log."""
    times, statuses, bad = [], Counter(), Counter()
    if not path.exists():
        return times, statuses, bad
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r'(\d{3}) (\d+) "([^"]*)"', line)
        if not match:
            continue
        status, micros, url = int(match.group(1)), int(match.group(2)), match.group(3)
        statuses[status] += 1
        times.append(micros / 1e6)
        # TUF clients look for the next root version and expect 404: that one is not an error.
        if status >= 500 or (status >= 400 and not (status == 404 and url.endswith(".root.json"))):
            bad[f"{status} {url}"] += 1
    return times, statuses, bad


def _mib(n):
    return f"{n / 2**20:,.1f} MiB"


def _tables_bytes(tables, names):
    return sum(tables.get(name, 0) for name in names)


def storage_report(*, args, elapsed, sizes_before, storage, events, updated):
    """Print the sizes after VACUUM per device-day: check-in tables (against their goal), events
    and the rest apart; then the device rows' heap-only updates."""
    from django.conf import settings

    _, tables_before = sizes_before
    total_vacuumed, tables = storage["vacuumed"]
    days = elapsed / 86400

    def per_day(grown, span=days):
        return grown / args.devices / span

    checkin = _tables_bytes(tables, CHECKIN_TABLES) - _tables_bytes(tables_before, CHECKIN_TABLES)
    event = _tables_bytes(tables, EVENT_TABLES) - _tables_bytes(tables_before, EVENT_TABLES)
    rest = total_vacuumed - sizes_before[0] - checkin - event
    goal = f"goal < {CHECKIN_GOAL_BYTES:,}"
    print(f"\nstorage after VACUUM (not FULL), per device-day ({args.devices:,} devices x {days:.5f} days):")
    verdict = "within goal" if per_day(checkin) < CHECKIN_GOAL_BYTES else "MISSED"
    print(
        f"{'  device + check-in tables (' + ', '.join(CHECKIN_TABLES) + ')':<72} {per_day(checkin):>10,.0f} bytes  ({goal}: {verdict}; "
        f"{checkin:+,} bytes since the soak began, first check-ins included)"
    )
    if storage["settled"] is not None:
        at, (_, settled_tables), settled_relations = storage["settled"]
        steady = _tables_bytes(tables, CHECKIN_TABLES) - _tables_bytes(settled_tables, CHECKIN_TABLES)
        span = (elapsed - at) / 86400
        verdict = "within goal" if per_day(steady, span) < CHECKIN_GOAL_BYTES else "MISSED"
        print(
            f"{'  ... steady state: from ' + f'{at:,.0f} s' + ' (every device checked in once) to the end':<72} "
            f"{per_day(steady, span):>10,.0f} bytes  ({goal}: {verdict}; {steady:+,} bytes; "
            f"one 8 KiB page is {per_day(8192, span):,.0f} bytes per device-day here)"
        )
        grown = {name: size - settled_relations.get(name, 0) for name, size in storage["relations"].items() if size != settled_relations.get(name, 0)}
        where = ", ".join(f"{name} {change:+,}" for name, change in sorted(grown.items(), key=lambda kv: -kv[1])) or "nothing"
        print(f"      grew in that window (bytes): {where}")
    else:
        print("  ... steady state: not measured (the soak is shorter than a poll interval and a flush; use --interval well below --seconds)")
    per_event = f"{event / events:,.0f} bytes an event" if events else "no events"
    retention = settings.BREAKWATER_EVENT_RETENTION_DAYS
    kept = f"kept {retention:g} days" if retention else "kept for ever"
    print(
        f"{'  device events (' + ', '.join(EVENT_TABLES) + ')':<72} {per_day(event):>10,.0f} bytes  ({event:+,} bytes, {events:,} events, {per_event}; "
        f"they grow with updates, not polls, and are {kept})"
    )
    print(f"{'  everything else (status samples, rollouts, audit, sessions)':<72} {per_day(rest):>10,.0f} bytes  ({rest:+,} bytes)")
    upd, hot = storage["updates"]
    share = f"{100 * hot / upd:.1f}%" if upd else "-"
    print(
        f"device row updates during the soak: {upd:,}, heap-only (HOT) {hot:,} ({share}); {upd - hot:,} not, "
        f"against {updated:,} devices that installed the wave (a new version moves an indexed column)"
    )


def report(*, args, run_name, loads, elapsed, fleet, dashboard, rollouts, gateway_log, sizes_before, sizes_after, watched, log_errors, checks, broker, storage, events):
    """Print the soak's figures; return the number of errors."""
    summary = fleet.get("summary", {})
    polls = summary.get("polls", 0)
    fleet_errors = summary.get("errors", 0) + summary.get("metadata-rejected", 0) + summary.get("download-failed", 0)
    access_times, access_statuses, access_bad = gateway_access(gateway_log)
    failed_pages = [r for r in dashboard if r[2] != 200]
    failed_rollouts = [r for r in rollouts if r[3] != 200]
    server_errors = sum(len(lines) for lines in log_errors.values())
    errors = fleet_errors + sum(access_bad.values()) + len(failed_pages) + len(failed_rollouts) + server_errors
    if not fleet:
        errors += 1

    load_start, load_end, load_peak = loads
    print(
        f"\nSoak {run_name}: {args.devices:,} devices polling every {args.interval:g} s over mutual TLS, the dashboard read "
        f"{args.dashboard_rate:g} times a second, {elapsed:,.0f} s on loopback\n"
        f"machine: {os.cpu_count()} CPUs; load average at start {load_start}, at end {load_end}, highest 1-minute load during the soak {load_peak:.2f}\n"
        f"gateway {args.gateway_workers} workers x 8 threads, web {args.web_workers} workers x 4 threads, Celery worker (concurrency 2) + beat "
        f"on {broker}; simulator {args.threads} threads"
    )
    for at, params, seconds, status, note in rollouts:
        what = ", ".join(f"{k} {v}" for k, v in params.items())
        outcome = f"{note} devices staged" if status == 200 else f"FAILED ({status}): {note}"
        print(f"rollout at {at:,.0f} s ({what}) through the REST API: {outcome} in {seconds * 1000:,.0f} ms")

    print(f"\n{'soak latency':<48} {'requests':>9} {'errors':>7} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'per s':>8}")

    def row(name, count, errs, times, rate=None):
        p50, p95, p99 = percentiles(times)
        rate = count / elapsed if rate is None else rate
        print(f"{name:<48} {count:>9,} {errs:>7,} {p50:>9.1f} {p95:>9.1f} {p99:>9.1f} {rate:>8.1f}")

    row("gateway poll (device side: TLS + TUF refresh)", polls, fleet_errors, fleet.get("latencies", []), polls / max(fleet.get("seconds", elapsed), 1e-9))
    row("gateway request (server side)", sum(access_statuses.values()), sum(access_bad.values()), access_times)
    by_page = defaultdict(list)
    for page, seconds, status, _ in dashboard:
        by_page[page].append((seconds, status))
    for page in dict.fromkeys(PAGES):
        rows = by_page.get(page, [])
        row(f"dashboard {page}", len(rows), sum(s != 200 for _, s in rows), [t for t, _ in rows])
    row("dashboard all pages", len(dashboard), len(failed_pages), [r[1] for r in dashboard])

    total_before, tables_before = sizes_before
    total_after, tables_after = sizes_after
    grown = total_after - total_before
    days = elapsed / 86400
    print(f"\n{'soak database':<48} {'before':>12} {'after':>12} {'growth':>12}")
    print(f"{'database (pg_database_size)':<48} {_mib(total_before):>12} {_mib(total_after):>12} {_mib(grown):>12}")
    biggest = sorted(tables_after, key=lambda t: -tables_after[t])[:8]
    for table in biggest:
        before, after = tables_before.get(table, 0), tables_after[table]
        print(f"{'table ' + table:<48} {_mib(before):>12} {_mib(after):>12} {_mib(after - before):>12}")
    print(
        f"database growth per device-day: {grown / args.devices / days:,.0f} bytes "
        f"({grown:,} bytes / {args.devices:,} devices / {days:.5f} days, before VACUUM)"
    )
    storage_report(args=args, elapsed=elapsed, sizes_before=sizes_before, storage=storage, events=events, updated=summary.get("updated", 0))

    print(f"\n{'soak process':<48} {'CPU % of one core':>18} {'peak RSS':>12} {'peak PSS':>12}")
    for w in watched:
        print(f"{w.name:<48} {100 * w.cpu_seconds() / elapsed:>17.1f}% {_mib(w.peak_rss):>12} {_mib(w.peak_pss):>12}")

    print(
        f"\nfleet: {summary.get('updated', 0):,} devices updated to the wave, {summary.get('updates-started', 0):,} updates started, "
        f"{summary.get('events', 0):,} events reported; gateway statuses {dict(sorted(access_statuses.items()))}"
    )
    print(checks)
    for what, samples in (
        ("gateway errors seen by devices", fleet.get("errors", {})),
        ("gateway answers that are errors", access_bad),
        ("dashboard errors", Counter(f"{p} {s} {n}" for p, _, s, n in failed_pages)),
    ):
        for text, n in list(samples.items())[:10]:
            print(f"{what}: {n} x {text}")
    for name, lines in log_errors.items():
        for line in lines[:10]:
            print(f"{name} log: {line}")
    if errors:
        print(f"\nsoak: FAILED, {errors:,} errors (see above and the logs in {args.logs})")
    else:
        print("\nsoak: passed, 0 errors")
    return errors


# --- the run -----------------------------------------------------------------------------------


def _run(args, work):
    from bench.gateway import django_setup, free_port, wait_listening

    django_setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection, connections

    if connection.vendor != "postgresql":
        raise SystemExit("bench/soak.py measures PostgreSQL only: set DATABASE_URL=postgres://...")
    # Before migrating anything: a benchmark or demo database is not the soak's to change.
    from factory.models import Factory

    if Factory._meta.db_table in connection.introspection.table_names():
        others = list(Factory.objects.exclude(name__startswith=PREFIX).values_list("name", flat=True)[:5])
        if others:
            raise SystemExit(f"the database holds factories other than earlier soaks ({', '.join(others)}); give the soak a database of its own")
    call_command("migrate", verbosity=0)
    run_name = PREFIX + time.strftime("%Y%m%d-%H%M%S")
    started = time.perf_counter()
    factory, wave, username, password, token = soak_setup(args.devices, run_name)
    from devices.models import Device
    from devices.fleet import take_over
    from devices.simulator import Keystore

    # The take-over re-keys every device (a certificate each): done here, before the soak, so the
    # fleet process only reuses the keys and the soak measures polling, not provisioning.
    keystore = Keystore(work / "keystore")
    take_over(factory=factory, keystore=keystore, limit=args.devices)
    uuids = [str(u) for u in Device.objects.filter(factory=factory).values_list("uuid", flat=True)]
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")  # start from a settled database: setup's dead rows reclaimed
    print(f"set up {run_name}: {len(uuids):,} devices registered and taken over, wave {wave.name} signed, in {time.perf_counter() - started:,.0f} s", flush=True)
    connections.close_all()

    args.logs.mkdir(parents=True, exist_ok=True)
    servers = Servers(args.logs)
    gateway_port, web_port = free_port(), free_port()
    py = sys.executable
    try:
        log = open(args.logs / "gateway.log", "w")
        # `manage.py gateway`'s command line (mutual TLS), plus an access log of each request's status
        # and time in microseconds for the server-side figures.
        from factory.project.management.commands.gateway import Command

        argv = Command.prepare(bind=f"127.0.0.1:{gateway_port}", workers=args.gateway_workers, threads=8, tls_dir=work / "tls")
        argv += ["--access-log", str(args.logs / "gateway-access.log")]
        servers.procs["gateway"] = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        servers.start("web", [py, "-m", "gunicorn", "factory.project.wsgi", "-b", f"127.0.0.1:{web_port}", "-w", str(args.web_workers), "--threads", "4", "--no-control-socket"])
        servers.start("worker", [py, "-m", "celery", "-A", "factory.project", "worker", "-l", "info", "--concurrency", "2", "-n", f"{run_name}@%h"])
        servers.start("beat", [py, "-m", "celery", "-A", "factory.project", "beat", "-l", "info"])
        ready, go, out = work / "fleet-ready", work / "fleet-go", work / "fleet.json"
        fleet_argv = [
            py, "-m", "bench.soak", "_fleet", "--factory", run_name, "--keystore", str(keystore.root), "--gateway-url", f"https://127.0.0.1:{gateway_port}",
            "--out", str(out), "--ready", str(ready), "--go", str(go), "--devices", str(args.devices), "--interval", str(args.interval),
            "--seconds", str(args.seconds), "--threads", str(args.threads), "--progress", str(args.progress),
        ]
        # The fleet's progress lines go to this output; its log (the reasons for failed steps) to a file.
        servers.procs["fleet"] = subprocess.Popen(fleet_argv, cwd=ROOT, stderr=open(args.logs / "fleet.log", "w"))
        wait_listening(gateway_port, servers.procs["gateway"], timeout=120)
        wait_listening(web_port, servers.procs["web"], timeout=120)
        client = Dashboard(f"http://127.0.0.1:{web_port}")
        client.login(username, password)
        while not ready.exists():
            if servers.procs["fleet"].poll() is not None:
                raise SystemExit("the fleet simulator exited before it started polling; see " + str(args.logs / "fleet.log"))
            time.sleep(0.1)
        go.write_text("go")

        # The soak starts when the devices start polling.
        sizes_before = database_sizes()
        updates_before = row_updates()
        t0 = time.monotonic()
        # Once every device has checked in (its first poll falls within one interval) and been
        # flushed, each device's first-check-in rows exist: growth from then on is steady state.
        settle_after = args.interval + 2 * settings.BREAKWATER_CHECKIN_FLUSH_SECONDS + 10
        settled = None
        from django.utils import timezone

        window_start = timezone.now()
        load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        watched = [Watched(f"{name} ({what})", lambda p=servers.procs[name].pid: _tree(p)) for name, what in (
            ("gateway", f"factory.project.gateway.server, {args.gateway_workers} workers"),
            ("web", f"gunicorn, {args.web_workers} workers"),
            ("worker", "Celery, 2 pool processes"),
            ("beat", "Celery"),
            ("fleet", f"simulator, {args.devices:,} devices"),
        )]
        watched.append(Watched("soak driver (dashboard client, this process)", lambda: [os.getpid()]))
        watched.append(Watched("PostgreSQL backends of this database", backend_pids))
        for w in watched:
            w.start()
        stop = threading.Event()
        dashboard, rollouts = [], []
        pool = dashboard_drive(client, wave.name, uuids, args.dashboard_rate, stop, dashboard)
        phases = rollouts_drive(client, run_name, wave.name, token, args.seconds, stop, rollouts)
        load_peak = 0.0
        while time.monotonic() - t0 < args.seconds:
            time.sleep(min(5.0, max(0.0, args.seconds - (time.monotonic() - t0))))
            for w in watched:
                w.sample()
            load_peak = max(load_peak, os.getloadavg()[0])
            if settled is None and settle_after <= time.monotonic() - t0 <= 0.8 * args.seconds:
                vacuum(CHECKIN_TABLES)
                settled = (time.monotonic() - t0, database_sizes(), relation_sizes())
            dead = servers.dead()
            if dead:
                print(f"{', '.join(dead)} exited during the soak", flush=True)
                break
        stop.set()
        for thread in pool + [phases]:
            thread.join(timeout=130)
        elapsed = time.monotonic() - t0
        load_end = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        try:
            servers.procs["fleet"].wait(timeout=120)
        except subprocess.TimeoutExpired:
            servers.stop("fleet")
        for w in watched:
            w.sample()
        fleet = json.loads(out.read_text()) if out.exists() else {}
        if fleet:
            fleet_watch = next(w for w in watched if w.name.startswith("fleet"))
            fleet_watch.cpu0, fleet_watch.cpu = {0: 0.0}, {0: fleet["cpu_seconds"]}
        dead = servers.dead()
    finally:
        # The gateway's workers flush their last check-ins as they exit.
        servers.stop_all()

    from devices.models import DeviceEvent
    from waves.models import WaveDevice, WaveStatusSample

    seen = Device.objects.filter(factory=factory, last_seen__gte=window_start).count()
    events = DeviceEvent.objects.filter(factory=factory).count()
    staged = WaveDevice.objects.filter(wave=wave).count()
    checks = (
        f"database: {seen:,} of {args.devices:,} devices' check-ins written during the soak, {events:,} device events, "
        f"{staged:,} devices staged, {WaveStatusSample.objects.filter(wave=wave).count():,} wave status samples"
    )
    sizes_after = database_sizes()
    updates = [after - before for after, before in zip(row_updates_final(), updates_before)]
    vacuum()
    storage = {"vacuumed": database_sizes(), "relations": relation_sizes(), "settled": settled, "updates": updates}
    log_errors = {name: servers.log_errors(name) for name in ("gateway", "web", "worker", "beat", "fleet")}
    log_errors = {name: lines for name, lines in log_errors.items() if lines}
    if dead:
        log_errors["processes"] = [f"{name} exited during the soak" for name in dead]
    broker = settings.CELERY_BROKER_URL.split("://")[0] + " broker, check-ins buffered in " + ("Redis" if settings.REDIS_URL else "gateway memory")
    errors = report(
        args=args, run_name=run_name, loads=(load_start, load_end, load_peak), elapsed=elapsed, fleet=fleet, dashboard=dashboard,
        rollouts=rollouts, gateway_log=args.logs / "gateway-access.log", sizes_before=sizes_before, sizes_after=sizes_after,
        watched=watched, log_errors=log_errors, checks=checks, broker=broker, storage=storage, events=events,
    )
    return 1 if errors else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("BREAKWATER_VAR_DIR", str(ROOT / "var" / "soak"))
    if argv[:1] == ["_fleet"]:
        return fleet_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--interval", type=float, default=300.0, help="seconds between polls of a device")
    parser.add_argument("--dashboard-rate", type=float, default=4.0, help="dashboard requests per second")
    parser.add_argument("--threads", type=int, default=32, help="simulator threads")
    parser.add_argument("--gateway-workers", type=int, default=2)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--progress", type=float, default=60.0, help="seconds between the fleet's progress lines")
    args = parser.parse_args(argv)
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        parser.exit(2, "bench/soak.py measures PostgreSQL only: set DATABASE_URL=postgres://... (a database of its own)\n")
    if args.devices < 20 or args.seconds <= 0:
        parser.exit(2, "--devices must be at least 20 and --seconds positive\n")
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    args.logs = Path(os.environ["BREAKWATER_VAR_DIR"]) / "logs" / time.strftime("%Y%m%d-%H%M%S")
    # The work folder holds the devices' private keys: never leave it behind.
    work = Path(tempfile.mkdtemp(prefix="bw-soak-"))
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
