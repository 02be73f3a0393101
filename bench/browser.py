"""The wave page in Debian's Chromium, and signing in, against gunicorn on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakwater_bench REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/browser.py [--loads 7] [--sign-ins 9]

Two factories: (a) bench-demo, the demo's fleet (`make demo`: 1,050 devices in its groups, builds
40-42, registered through the same services) with an active wave rolled out to canary, beta and
half of us-east, devices reporting progress and failures, and six hours of 15-s status samples;
(b) the 1,000,000-device bench factory with bench/dashboard.py's wave (10,000 devices staged one
by one and a full group) and six hours of samples (removed again at the end).

For each, Chromium (/usr/bin/chromium or $BREAKWATER_CHROMIUM) signs in as a release manager and
loads the wave page: after a warm-up load (empty cache), the median and worst of --loads loads of
the largest contentful paint (a buffered PerformanceObserver) and of the load event, and what the
LCP element is. Loopback, no CPU or network throttling. Goal: LCP < 800 ms.

Sign-in: the server time of POST /login/ (the time to the response's first byte; the request is
on loopback) with the median and worst of --sign-ins fresh clients, then where it goes, measured
in this process: the password hasher, the failed-attempt limiter, the session, the redirect.
Goal: < 300 ms.
"""
import argparse
import http.client
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone as dt_timezone
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

# Run as `python bench/x.py`, this folder comes first on sys.path, and bench/tuf.py would shadow
# the tuf package: put the project root there instead.
sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.fleet import bench_fleet, bench_wave, fleet_size  # noqa: E402  (sets up Django)
from bench.api_cli import free_port, wait_for  # noqa: E402
from bench.dashboard import bench_state, bench_user  # noqa: E402

from django.contrib.auth import authenticate, get_user_model, login  # noqa: E402
from django.contrib.auth.hashers import PBKDF2PasswordHasher, check_password, identify_hasher  # noqa: E402
from django.contrib.sessions.middleware import SessionMiddleware  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client, RequestFactory  # noqa: E402
from django.utils import timezone  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from devices.checkins import Checkin, checkins_write, events_write  # noqa: E402
from devices.fleet import fleet_seed  # noqa: E402
from devices.models import Device  # noqa: E402
from factory.models import CiTarget, Factory, Role  # noqa: E402
from factory.project import demo  # noqa: E402
from factory.ratelimit import login_limiter  # noqa: E402
from factory.services import user_create  # noqa: E402
from factory.tuf.services.repository import ci_build_publish, factory_create  # noqa: E402
from factory.tuf.services.root_changes import offline_key_generate  # noqa: E402
from waves import status  # noqa: E402
from waves.models import Rollout, Wave, WaveDevice, WaveStatusSample  # noqa: E402
from waves.services import wave_init, wave_rollout, wave_sign  # noqa: E402
from waves.states import STATES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LCP_GOAL_MS = 800
SIGN_IN_GOAL_MS = 300
DEMO_FACTORY = "bench-demo"
DEMO_USER, DEMO_PASSWORD = "bench-demo-rm", "bench-demo-rm-pass"
BENCH_PASSWORD = "bench-rm-pass"  # bench/dashboard.py's release manager
HISTORY_SAMPLES = 6 * 240  # six hours of 15-s samples

# Recorded from the first byte of every document: each LCP candidate with what it is.
LCP_RECORDER = """
window.__lcp = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    const el = entry.element;
    let what = el ? el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\\s+/).join(".") : "") : "(removed)";
    const text = el && el.textContent ? el.textContent.trim().replace(/\\s+/g, " ").slice(0, 48) : "";
    window.__lcp.push({ at: entry.startTime, size: entry.size, what: what + (text ? ` "${text}"` : "") + (entry.url ? " " + entry.url : "") });
  }
}).observe({ type: "largest-contentful-paint", buffered: true });
"""
TIMINGS = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const fcp = performance.getEntriesByName("first-contentful-paint")[0];
  const lcp = window.__lcp[window.__lcp.length - 1] || null;
  return { ttfb: nav.responseStart, fcp: fcp ? fcp.startTime : null, dcl: nav.domContentLoadedEventEnd, load: nav.loadEventStart, lcp: lcp && lcp.at, lcpWhat: lcp && lcp.what, candidates: window.__lcp.length };
}"""


def chromium_path():
    for candidate in (os.environ.get("BREAKWATER_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("Chromium is not installed (apt-get install -y chromium) or $BREAKWATER_CHROMIUM is wrong")


# --- the two factories ---------------------------------------------------------------------------


def demo_fleet():
    """bench-demo: the demo's builds, groups and devices (factory/project/demo.py), a release
    manager, and an active wave of 42 rolled out in three steps with devices reporting."""
    factory = Factory.objects.filter(name=DEMO_FACTORY).first() or factory_create(name=DEMO_FACTORY)
    for version in demo.DEMO_BUILDS:
        if not CiTarget.objects.filter(factory=factory, version=version).exists():
            ci_build_publish(factory=factory, version=version, hardware_ids=demo.DEMO_HARDWARE_IDS, tags=[demo.DEMO_TAG])
    user = get_user_model().objects.filter(username=DEMO_USER).first() or user_create(
        username=DEMO_USER, factory=factory, role=Role.RELEASE_MANAGER, password=DEMO_PASSWORD
    )
    if not Device.objects.filter(factory=factory).exists():
        started = time.perf_counter()
        fleet_seed(
            factory=factory, tag=demo.DEMO_TAG, groups=demo.DEMO_GROUPS, ungrouped=demo.DEMO_UNGROUPED, test_devices=demo.DEMO_TEST_DEVICES,
            online_ratio=0.9, version=demo.DEMO_PRODUCTION_VERSION, hardware_ids=demo.DEMO_HARDWARE_IDS,
        )
        print(f"registered the demo-sized fleet ({Device.objects.filter(factory=factory).count():,} devices) in {time.perf_counter() - started:.0f}s")
    wave = Wave.objects.filter(factory=factory, status=Wave.Status.ACTIVE).first()
    if wave is None:
        archive = offline_key_generate(factory=factory, actor=user, role="targets")
        wave = wave_sign(wave=wave_init(factory=factory, actor=user, name="v42-update", version=42, tag=demo.DEMO_TAG), actor=user, key_archive=archive)
    if not Rollout.objects.filter(wave=wave).exists():
        wave_rollout(wave=wave, actor=user, group="canary")
        wave_rollout(wave=wave, actor=user, group="beta")
        wave_rollout(wave=wave, actor=user, group="us-east", limit="50%")
        devices_report(wave)
    return factory, wave, user


def devices_report(wave):
    """What the gateway writes as the staged devices work through the wave: by position, six in
    ten updated, one failed (no space left), one installing, one downloading, one not started."""
    staged = list(Device.objects.filter(id__in=WaveDevice.objects.filter(wave=wave).values("device_id")).order_by("id"))
    staged += list(Device.objects.filter(factory=wave.factory, group__name__in=("canary", "beta"), is_production=True).exclude(id__in=[d.id for d in staged]))
    now = timezone.now()
    rows, checkins = [], {}
    for n, device in enumerate(staged):
        k = n % 10
        at = (now - timedelta(minutes=50 - n % 40)).isoformat()
        base = {"factory_id": device.factory_id, "device_id": device.id, "target_version": wave.version, "reported_at": at}
        steps = ["download-started"] if k == 8 else ["download-started", "download-completed", "install-started"] if k in (6, 7) else []
        if k < 6:
            steps = ["download-started", "download-completed", "install-started", "install-applied"]
        rows += [{**base, "event_type": step} for step in steps]
        if k < 6:
            rows.append({**base, "event_type": "install-completed", "success": True})
            checkins[device.id] = Checkin(seen=now.timestamp(), target_name=f"{device.hardware_id}-lmp-{wave.version}", target_version=wave.version)
        elif k == 6:
            rows.append({**base, "event_type": "install-completed", "success": False, "detail": "no space left on device"})
    events_write(rows)
    checkins_write(checkins)


def samples_write(wave):
    """The wave's status history as beat leaves it: a sample taken now, and the HISTORY_SAMPLES
    intervals before it with the same devices, progress scaled back the further back it goes."""
    WaveStatusSample.objects.filter(wave=wave).delete()
    latest, _ = status.wave_status_sample_take(wave=wave)
    interval = status.status_interval()
    rows = []
    for back in range(1, HISTORY_SAMPLES):
        share = 1 - back / HISTORY_SAMPLES
        totals = dict(latest.totals)
        for state in ("updated", "failed", "installing", "downloading"):
            moved = totals.get(state, 0) - int(totals.get(state, 0) * share)
            totals[state] -= moved
            totals["scheduled"] = totals.get("scheduled", 0) + moved
        bucket = latest.bucket - back
        taken_at = datetime.fromtimestamp(bucket * interval, tz=dt_timezone.utc)
        rows.append(WaveStatusSample(wave=wave, bucket=bucket, taken_at=taken_at, totals=totals, groups={}))
    WaveStatusSample.objects.bulk_create(rows, batch_size=2000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE waves_wavestatussample")
    assert set(STATES) <= set(latest.totals), latest.totals


# --- the browser -----------------------------------------------------------------------------------


def page_loads(browser, base, wave, username, password, loads):
    """(first load, [timings of `loads` loads]) of the wave page in one signed-in browser context."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.add_init_script(LCP_RECORDER)
    page = context.new_page()
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/waves/$"))
    url = f"{base}/waves/{wave.name}/"

    def load():
        page.goto(url, wait_until="load")
        # The live panel comes by htmx after the load event and plotly.js after it: the last LCP
        # candidate can only be known once both are in and the first chart is drawn.
        page.wait_for_function("() => document.querySelector('#wave-live .main-svg') !== null", timeout=60_000)
        page.wait_for_load_state("networkidle")
        return page.evaluate(TIMINGS)

    first = load()
    timings = [load() for _ in range(loads)]
    context.close()
    return first, timings


# --- signing in over HTTP --------------------------------------------------------------------------


def server_cpu_ms(server):
    """CPU time so far of gunicorn's workers (the children of its master), all their threads."""
    master = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    total = 0
    for pid in master:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total * 1000 / os.sysconf("SC_CLK_TCK")


def sign_in_once(port, username, password):
    """Milliseconds to the first byte of each answer: POST /login/, then the redirects to the
    waves list (home, then the list), as a browser follows them."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/login/")
    answer = conn.getresponse()
    html = answer.read().decode()
    cookies = SimpleCookie()
    for header in answer.headers.get_all("Set-Cookie") or []:
        cookies.load(header)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    body = urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={cookies['csrftoken'].value}", "Referer": f"http://127.0.0.1:{port}/login/"}
    times = {}
    started = time.perf_counter()
    conn.request("POST", "/login/", body=body, headers=headers)
    answer = conn.getresponse()
    times["post"] = (time.perf_counter() - started) * 1000
    answer.read()
    assert answer.status == 302, f"sign-in answered {answer.status}, not a redirect"
    for header in answer.headers.get_all("Set-Cookie") or []:
        cookies.load(header)
    cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in cookies.items())
    location = answer.headers["Location"]
    for step in ("home", "waves list"):
        started = time.perf_counter()
        conn.request("GET", location, headers={"Cookie": cookie})
        answer = conn.getresponse()
        times[step] = (time.perf_counter() - started) * 1000
        answer.read()
        location = answer.headers.get("Location")
        if answer.status != 302:
            break
    conn.close()
    return times


def sign_in_breakdown(user, password, repeat):
    """Median ms of each part of a sign-in, run here against the same database and cache."""

    def median(fn):
        """(median wall ms, median CPU ms): the CPU time of this process's threads (Argon2 hashes
        its lanes in threads), the wall time an idle machine with cores to spare would show."""
        fn()
        runs, cpu = [], []
        for _ in range(repeat):
            started, started_cpu = time.perf_counter(), time.process_time()
            fn()
            runs.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
        return statistics.median(runs), statistics.median(cpu)

    stored = user.password
    hasher = identify_hasher(stored)
    pbkdf2 = PBKDF2PasswordHasher()
    pbkdf2_hash = pbkdf2.encode(password, pbkdf2.salt())
    limiter = login_limiter()
    keys = {"ip": "198.51.100.7", "username": user.username}
    requests = RequestFactory()

    def session_login():
        request = requests.post("/login/")
        SessionMiddleware(lambda r: None).process_request(request)
        login(request, user)  # a new session key, the last-login UPDATE, the signal
        request.session.save()  # the session row INSERT

    client = Client()

    def whole_view():
        client.cookies.clear()
        response = client.post("/login/", {"username": user.username, "password": password})
        assert response.status_code == 302, response.status_code

    parts = [
        (f"password check: {hasher.algorithm} (Django's parameters: {hasher.memory_cost // 1024} MiB, {hasher.time_cost} passes, {hasher.parallelism} lanes)"
         if hasher.algorithm == "argon2" else f"password check: {hasher.algorithm}", median(lambda: check_password(password, stored))),
        (f"  for comparison: PBKDF2-SHA256, Django's {pbkdf2.iterations:,} iterations", median(lambda: pbkdf2.verify(password, pbkdf2_hash))),
        ("authenticate() (user lookup + password check)", median(lambda: authenticate(username=user.username, password=password))),
        ("failed-attempt limiter (count, then give back)", median(lambda: (limiter.attempt(**keys), limiter.succeeded(reset=("username",), **keys)))),
        ("login(): new session key, last-login update, session saved", median(session_login)),
        ("the whole view in this process (no HTTP)", median(whole_view)),
    ]
    return parts


# --- main ---------------------------------------------------------------------------------------


def spread(values):
    return statistics.median(values), max(values)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=7, help="timed loads of each wave page (after one warm-up)")
    parser.add_argument("--sign-ins", type=int, default=9, help="timed sign-ins (after warm-ups)")
    args = parser.parse_args(argv)
    chromium = chromium_path()

    started = time.perf_counter()
    call_command("migrate", interactive=False, verbosity=0)  # run on its own, the database may be new
    demo_factory, demo_wave, _ = demo_fleet()
    samples_write(demo_wave)
    big = bench_fleet()
    big_wave = bench_wave(big)
    big_user = bench_user(big)
    bench_state(big, big_wave, big_user)
    samples_write(big_wave)
    print(f"factories ready in {time.perf_counter() - started:.0f}s: {demo_factory.name} "
          f"({Device.objects.filter(factory=demo_factory).count():,} devices, wave {demo_wave.name}), {big.name} ({fleet_size():,} devices, wave {big_wave.name})")
    print(f"load average (1, 5, 15 min) at the start: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "factory.project.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2", "--threads", "4", "--no-control-socket", "--timeout", "120"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    rows, notes = [], []
    # Playwright runs an event loop in this thread: no ORM calls inside its block.
    pages = [
        (f"demo fleet ({Device.objects.filter(factory=demo_factory).count():,} devices)", demo_wave, DEMO_USER, DEMO_PASSWORD),
        # No size in the name: bench/run.py --sizes puts each size's figure side by side.
        ("bench fleet", big_wave, big_user.username, BENCH_PASSWORD),
    ]
    try:
        wait_for(f"{base}/login/")
        for _ in range(8):  # every worker thread imports the URL configuration once
            wait_for(f"{base}/login/")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]
            )
            for label, wave, username, password in pages:
                first, timings = page_loads(browser, base, wave, username, password, args.loads)
                lcp, load = spread([t["lcp"] for t in timings]), spread([t["load"] for t in timings])
                rows.append((f"wave page LCP, {label}", *lcp, LCP_GOAL_MS))
                rows.append((f"wave page load event, {label}", *load, None))
                rows.append((f"wave page time to first byte, {label}", *spread([t["ttfb"] for t in timings]), None))
                whats = statistics.mode([t["lcpWhat"] for t in timings])
                notes.append(f"{label}: LCP element {whats}; first load (empty cache) LCP {first['lcp']:.0f} ms, load {first['load']:.0f} ms, first byte {first['ttfb']:.0f} ms; FCP median {statistics.median(t['fcp'] for t in timings):.0f} ms")
            browser.close()

        for _ in range(3):
            sign_in_once(port, DEMO_USER, DEMO_PASSWORD)
        sign_ins, cpu = [], []
        for _ in range(args.sign_ins):
            before = server_cpu_ms(server)
            sign_ins.append(sign_in_once(port, DEMO_USER, DEMO_PASSWORD))
            cpu.append(server_cpu_ms(server) - before)
        rows.append(("sign-in: POST /login/ server time (to first byte)", *spread([s["post"] for s in sign_ins]), SIGN_IN_GOAL_MS))
        rows.append(("sign-in: then the redirect from home", *spread([s["home"] for s in sign_ins]), None))
        rows.append(("sign-in: then the waves list", *spread([s["waves list"] for s in sign_ins]), None))
        # Load-independent: what the server's processes spent on it (the form, the POST, the redirects).
        rows.append(("sign-in: server CPU time, form to waves list", *spread(cpu), None))
    finally:
        server.terminate()
        server.wait(timeout=30)
        # Other scripts add their own samples to the bench wave (bench/status.py).
        WaveStatusSample.objects.filter(wave=big_wave).delete()

    parts = sign_in_breakdown(get_user_model().objects.get(username=DEMO_USER), DEMO_PASSWORD, repeat=args.sign_ins)

    print(f"\n{'figure':<60} {'median':>9} {'worst':>9}  {'goal':<9} verdict")
    for name, median, worst, goal in rows:
        verdict = "-" if goal is None else ("within" if median < goal else "over")
        print(f"{name:<60} {median:>6.0f} ms {worst:>6.0f} ms  {'-' if goal is None else f'< {goal} ms':<9} {verdict}")
    print()
    for note in notes:
        print(note)
    print(f"\n{'where a sign-in goes (this process, median of ' + str(args.sign_ins) + ')':<80} {'time':>9} {'CPU':>9}")
    for name, (ms, cpu) in parts:
        print(f"{name:<80} {ms:>6.0f} ms {cpu:>6.0f} ms")
    print(f"\nload average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
