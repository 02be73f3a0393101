"""Every benchmark in one run, on PostgreSQL: each script runs in its own process, its figures are
read from what it prints, and one table puts each figure next to its goal.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakwater_bench .venv/bin/python bench/run.py
        [--quick] [--only rollout,status,...] [--gateway-seconds 15] [--sizes 1000000,10000000]

The fleet scripts (rollout, status, dashboard, browser, api_cli, plans) load a 1,000,000-device factory the
first time (minutes) and take long on a busy machine; --quick runs only those that build their own
small world (tuf, gateway, gateway_flood). With --sizes they run once per fleet size, each size on
a database of its own (the first on DATABASE_URL's, the others on `<name>_10m` and so on, created
on first use), and the table puts each figure's sizes side by side. Each script's own output is
shown as it runs; peak memory is the largest resident set of the script or of a process it
started and waited for (e.g. gunicorn).
"""
import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK = ("tuf", "gateway", "gateway_flood")
ORDER = ("rollout", "status", "dashboard", "browser", "gateway", "gateway_flood", "tuf", "api_cli", "plans")
# The scripts that measure the bench fleet (bench/fleet.py), run once per --sizes entry.
FLEET = ("rollout", "status", "dashboard", "browser", "api_cli", "plans")
# Ten minutes of a simulated fleet on a database of its own, and the device doors' fuzzing with
# its long budget: run on request (--only soak, --only fuzz_gateway).
OPTIONAL = ("soak", "fuzz_gateway")

MS = r"(\d[\d,]*(?:\.\d+)?)[ \t]*ms"


@dataclass
class Figure:
    script: str
    name: str
    value: float
    unit: str
    goal: str = ""
    ok: bool | None = None  # None: no goal, reported for reference


@dataclass
class Run:
    script: str
    size: int | None = None  # the bench fleet's size, for the fleet scripts
    seconds: float = 0.0
    returncode: int = 0
    peak_mib: float = 0.0
    figures: list = field(default_factory=list)


def _num(text):
    return float(text.replace(",", ""))


def _goal(figure, limit, *, at_least=False, unit=None):
    unit = unit or figure.unit
    figure.goal = f"{'>=' if at_least else '<='} {limit:,g} {unit}"
    figure.ok = figure.value >= limit if at_least else figure.value <= limit
    return figure


def parse_rollout(out):
    """`rollout ...   123 ms   45.6 MiB  SQL baseline 100 ms, ratio 1.23`"""
    figures = []
    for name, ms, note in re.findall(r"^((?:rollout|wave_status)[^\n]*?)[ \t]+(\d[\d,]*) ms[ \t]+[\d.]+ MiB[ \t]*(.*)$", out, re.M):
        figure = Figure("rollout", name.strip(), _num(ms), "ms")
        figures.append(_goal(figure, 50 if "full group" in name else 1000))
        ratio = re.search(r"ratio ([\d.]+)", note)
        if ratio:
            figures.append(_goal(Figure("rollout", f"{name.strip()}: service / SQL baseline", float(ratio.group(1)), "x"), 1.5))
    return figures


def parse_status(out):
    """`measurement   <median> ms   <fastest> ms   <cpu> ms  notes`: the median is the figure."""
    figures = []
    for name, median in re.findall(r"^(\S.*?)[ \t]+(\d[\d,]*) ms[ \t]+\d[\d,]* ms[ \t]+\d[\d,]* ms", out, re.M):
        figure = Figure("status", name.strip(), _num(median), "ms")
        if name.startswith("aggregation cycle"):
            _goal(figure, 1000)
        elif "panel" in name or "page" in name:
            _goal(figure, 300)
        figures.append(figure)
    return figures


def parse_dashboard(out):
    """Pages: `name   <median> ms   <worst> ms   <queries>   <size> kB`; then wave engine calls."""
    figures = []
    pages, _, engine = out.partition("wave engine call")
    for name, median in re.findall(r"^(\S.*?)[ \t]+(\d[\d,]*) ms[ \t]+\d[\d,]* ms[ \t]+\d+[ \t]+\d[\d,]* kB", pages, re.M):
        figures.append(_goal(Figure("dashboard", f"page {name.strip()}", _num(median), "ms"), 300))
    for name, median in re.findall(r"^(\S.*?)[ \t]+(\d[\d,]*) ms[ \t]+\d[\d,]* ms[ \t]*$", engine, re.M):
        figures.append(Figure("dashboard", f"engine {name.strip()}", _num(median), "ms"))
    return figures


def parse_gateway(out):
    """`label   <polls/s>   <p50>   <p99>   <errors>  statuses`"""
    figures = []
    for name, rate, p99, errors in re.findall(r"^(\S.*?)[ \t]+(\d+)[ \t]+[\d.]+[ \t]+([\d.]+)[ \t]+(\d+)[ \t]+\{", out, re.M):
        figure = Figure("gateway", f"{name.strip()} (p99 {p99} ms, {errors} errors)", float(rate), "polls/s")
        if "kept-alive" in name and not name.startswith("static"):
            _goal(figure, 1000, at_least=True)
            figure.ok = figure.ok and int(errors) == 0
        figures.append(figure)
    return figures


def parse_gateway_flood(out):
    """Rows as bench/gateway.py's, then `flood / no flood, <mode>: throughput <x>x ..., p99 <y>x ..., errors under flood <n>`."""
    figures = []
    for name, rate, p99, errors in re.findall(r"^(\S.*?)[ \t]+(\d+)[ \t]+[\d.]+[ \t]+([\d.]+)[ \t]+(\d+)[ \t]+\{", out, re.M):
        figure = Figure("gateway_flood", f"{name.strip()} (p99 {p99} ms)", float(rate), "polls/s")
        if name.strip().endswith(", flood"):
            figures.append(_goal(Figure("gateway_flood", f"{name.strip()}: device errors", float(errors), "errors"), 0))
        figures.append(figure)
    for mode, throughput, p99 in re.findall(r"^flood / no flood, (.+?): throughput ([\d.]+)x .*?p99 ([\d.]+|inf)x", out, re.M):
        figures.append(_goal(Figure("gateway_flood", f"{mode}: throughput under flood / without", float(throughput), "x"), 0.5, at_least=True))
        figures.append(_goal(Figure("gateway_flood", f"{mode}: p99 under flood / without", float(p99), "x"), 3))
    return figures


def parse_tuf(out):
    """`  label   <value> ms ...`: the wave and repository operations (no goal of their own)."""
    return [Figure("tuf", name.strip(), _num(ms), "ms") for name, ms in re.findall(r"^  (\S.*?)[ \t]{2,}" + MS, out, re.M)]


def parse_api_cli(out):
    """`command   <seconds>`: every command under 5 s, rollouts of 10,000 under 3 s."""
    figures = []
    for name, seconds in re.findall(r"^(\S.*?)[ \t]{2,}(\d+\.\d\d)[ \t]*$", out, re.M):
        limit = 3 if name.startswith("rollout") and "dry-run" not in name else 5
        figures.append(_goal(Figure("api_cli", f"breakwater {name.strip()}", float(seconds), "s"), limit))
    return figures


def parse_plans(out):
    """`operation   <time> ms  notes`: a plan's evaluation well under a second."""
    figures = []
    for name, ms, note in re.findall(r"^(\S.*?)[ \t]+(\d[\d,]*) ms[ \t]+(.*)$", out, re.M):
        figure = Figure("plans", name.strip(), _num(ms), "ms")
        if name.startswith("paced"):
            # A paced tick: a batch staged, its queries independent of the group's size.
            figures.append(_goal(figure, 500))
            queries = re.match(r"(\d+) queries", note)
            if queries:
                figures.append(_goal(Figure("plans", f"{name.strip()}: queries", float(queries.group(1)), "queries"), 15))
            continue
        if "evaluate" in name:
            _goal(figure, 1000)
        figures.append(figure)
    return figures


def parse_soak(out):
    """Latency rows (`name  requests  errors  p50  p95  p99  per-s`), growth per device-day, verdict."""
    figures = []
    for name, requests, errors, p99 in re.findall(
        r"^((?:gateway|dashboard) .+?)[ \t]+([\d,]+)[ \t]+([\d,]+)[ \t]+(?:[\d.]+|nan)[ \t]+(?:[\d.]+|nan)[ \t]+([\d.]+|nan)[ \t]+[\d.]+$", out, re.M
    ):
        figure = Figure("soak", f"{name.strip()}: p99 over {requests} requests", float(p99) if p99 != "nan" else 0.0, "ms")
        figures.append(_goal(Figure("soak", f"{name.strip()}: errors", _num(errors), "errors"), 0))
        figures.append(figure)
    growth = re.search(r"^database growth per device-day: ([\d,]+) bytes", out, re.M)
    if growth:
        figures.append(Figure("soak", "database growth per device-day", _num(growth.group(1)), "bytes"))
    # Measured only when every device checked in well before the end (--interval below --seconds).
    steady = re.search(r"^  \.\.\. steady state: from .*? to the end\s+(-?[\d,]+) bytes", out, re.M)
    if steady:
        figures.append(_goal(Figure("soak", "device + check-in tables per device-day after VACUUM, steady state", _num(steady.group(1)), "bytes"), 1024))
    hot = re.search(r"^device row updates during the soak: [\d,]+, heap-only \(HOT\) [\d,]+ \(([\d.]+)%\)", out, re.M)
    if hot:
        figures.append(Figure("soak", "device row updates heap-only (HOT)", float(hot.group(1)), "%"))
    return figures


def parse_browser(out):
    """`figure   <median> ms   <worst> ms  < <goal> ms  within|over` (`-  -` without a goal), then
    `where a sign-in goes` with the time and CPU time of each part (the time is kept, without a
    goal: the parts explain the sign-in figure)."""
    figures = []
    table, _, parts = out.partition("where a sign-in goes")
    for name, median, goal in re.findall(r"^(\S.*?)[ \t]+(\d[\d,]*) ms[ \t]+\d[\d,]* ms[ \t]+(?:< (\d[\d,]*) ms|-)[ \t]+(?:within|over|-)[ \t]*$", table, re.M):
        figure = Figure("browser", name.strip(), _num(median), "ms")
        figures.append(_goal(figure, _num(goal)) if goal else figure)
    for name, ms in re.findall(r"^[ \t]*(\S.*?)[ \t]+(\d[\d,]*) ms[ \t]+\d[\d,]* ms[ \t]*$", parts, re.M):
        figures.append(Figure("browser", f"sign-in part: {name.strip()}", _num(ms), "ms"))
    return figures


def parse_fuzz_gateway(out):
    """`5xx answers: N (goal 0)`, `good events lost: N (goal 0)`, `failed properties: N (goal 0)`."""
    figures = []
    for name in ("5xx answers", "good events lost", "failed properties"):
        found = re.search(rf"^{name}: (\d+)", out, re.M)
        if found:
            figures.append(_goal(Figure("fuzz_gateway", name, _num(found.group(1)), name.split()[-1]), 0))
    return figures


PARSERS = {
    "rollout": parse_rollout,
    "status": parse_status,
    "dashboard": parse_dashboard,
    "gateway": parse_gateway,
    "gateway_flood": parse_gateway_flood,
    "tuf": parse_tuf,
    "api_cli": parse_api_cli,
    "plans": parse_plans,
    "soak": parse_soak,
    "browser": parse_browser,
    "fuzz_gateway": parse_fuzz_gateway,
}


def _database_url_with_suffix(url, suffix):
    base, _, name = url.rpartition("/")
    name, sep, query = name.partition("?")
    return f"{base}/{name}_{suffix}{sep}{query}"


def soak_database_url(url):
    return _database_url_with_suffix(url, "soak")


def size_label(size):
    """1,000,000 -> "1M", 10,000,000 -> "10M", 250,000 -> "250k"."""
    for unit, word in ((1_000_000, "M"), (1_000, "k")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{word}"
    return f"{size:,}"


def sized_database_url(url, size, first_size):
    """The first size measures on DATABASE_URL's database; every other on one of its own, since
    a database holds one bench fleet (bench/fleet.py)."""
    return url if size == first_size else _database_url_with_suffix(url, size_label(size).lower())


def database_ensure(url):
    """Create the database of `url` on its server when it does not exist yet."""
    import psycopg
    from psycopg import sql

    base, _, name = url.rpartition("/")
    name = name.partition("?")[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def run_script(script, extra, env, size=None):
    """Runs bench/<script>.py as a module (so bench/tuf.py cannot shadow the tuf package),
    echoing its output, and returns the output with the process's peak memory."""
    at = f" ({size_label(size)} devices)" if size else ""
    print(f"\n=== bench/{script}.py {' '.join(extra)}".rstrip() + at, flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", f"bench.{script}", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for text in proc.stdout:
        sys.stdout.write(text)
        lines.append(text)
    proc.stdout.close()
    # wait4 gives this child's own resource usage (RUSAGE_CHILDREN would mix the scripts).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    run = Run(script, size, time.perf_counter() - started, proc.returncode, usage.ru_maxrss / 1024)
    run.figures = PARSERS[script]("".join(lines))
    return run


def _value(f):
    return f"{f.value:,.2f} {f.unit}" if f.unit in ("s", "x") or f.value < 10 else f"{f.value:,.0f} {f.unit}"


def table(runs, sizes=()):
    """One row per figure; with several fleet sizes, one value column per size, side by side."""
    sizes = list(sizes) or [None]
    labels = [f"value at {size_label(s)}" if s else "value" for s in sizes]
    header = ("script", "figure", *labels, "goal", "")
    rows, keyed = [], {}

    def row_for(script, name):
        key = (script, name)
        if key not in keyed:
            keyed[key] = len(rows)
            rows.append({"script": script, "figure": name, "values": {}, "goal": "-", "verdicts": {}})
        return rows[keyed[key]]

    for run in runs:
        column = run.size if run.size in sizes else sizes[0]
        if run.returncode != 0 or not run.figures:
            row = row_for(run.script, "FAILED (exit %d); see its output above" % run.returncode if run.returncode else "no figures found in its output")
            row["verdicts"][column] = "FAIL"
        for f in run.figures:
            row = row_for(run.script, f.name)
            row["values"][column] = _value(f)
            row["goal"] = f.goal or row["goal"]
            if f.ok is not None:
                row["verdicts"][column] = "ok" if f.ok else "MISSED"
        row = row_for(run.script, "peak memory (largest process RSS) / wall time")
        row["values"][column] = f"{run.peak_mib:,.0f} MiB, {run.seconds:,.0f} s"

    def verdict(row):
        marks = row["verdicts"]
        if not marks:
            return ""
        if len(sizes) == 1:
            return next(iter(marks.values()))
        bad = [f"{v} at {size_label(s)}" for s, v in marks.items() if v != "ok"]
        return ", ".join(bad) or "ok"

    cells = [header] + [(r["script"], r["figure"], *(r["values"].get(s, "") for s in sizes), r["goal"], verdict(r)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    lines = []
    for i, c in enumerate(cells):
        parts = [f"{c[0]:<{widths[0]}}", f"{c[1]:<{widths[1]}}"]
        parts += [f"{v:>{w}}" for v, w in zip(c[2:-2], widths[2:-1])]
        parts += [f"{c[-2]:<{widths[-1]}}", c[-1]]
        lines.append("  ".join(parts).rstrip())
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the scripts that need no 1,000,000-device fleet: " + ", ".join(QUICK))
    parser.add_argument("--only", default="", help="comma-separated scripts to run, of: " + ", ".join(ORDER + OPTIONAL))
    parser.add_argument("--gateway-seconds", type=float, default=15.0, help="seconds per gateway load row")
    parser.add_argument(
        "--sizes", default="", help="comma-separated bench fleet sizes for the fleet scripts (" + ", ".join(FLEET) + "), e.g. 1000000,10000000; default BREAKWATER_BENCH_DEVICES or 1,000,000"
    )
    args = parser.parse_args(argv)
    try:
        sizes = [int(x.replace("_", "").strip()) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        parser.exit(2, f"--sizes takes whole numbers of devices, e.g. 1000000,10000000, not {args.sizes!r}\n")
    if any(size < 1000 for size in sizes) or len(set(sizes)) != len(sizes):
        parser.exit(2, "--sizes takes distinct fleet sizes of at least 1,000 devices\n")

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        parser.exit(2, "bench/run.py measures PostgreSQL only: set DATABASE_URL=postgres://...\n")
    scripts = [s.strip() for s in args.only.split(",") if s.strip()] or list(QUICK if args.quick else ORDER)
    unknown = [s for s in scripts if s not in PARSERS]
    if unknown:
        parser.exit(2, f"unknown benchmark scripts: {', '.join(unknown)} (known: {', '.join(ORDER + OPTIONAL)})\n")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sizes = sizes or [int(env.get("BREAKWATER_BENCH_DEVICES", 1_000_000))]
    fleet_urls = {size: sized_database_url(url, size, sizes[0]) for size in sizes}
    for size_url in fleet_urls.values():
        if size_url != url:
            database_ensure(size_url)
    for size_url in dict.fromkeys([url, *(fleet_urls.values() if any(s in FLEET for s in scripts) else ())]):
        migrated = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env={**env, "DATABASE_URL": size_url})
        if migrated.returncode != 0:
            parser.exit(1, f"migrating the benchmark database {size_url.rpartition('/')[2]} failed\n")
    started = time.perf_counter()
    runs = []
    for script in scripts:
        extra = ["--seconds", f"{args.gateway_seconds:g}"] if script == "gateway" else []
        if script in FLEET:
            for size in sizes:
                size_env = {**env, "DATABASE_URL": fleet_urls[size], "BREAKWATER_BENCH_DEVICES": str(size)}
                runs.append(run_script(script, extra, size_env, size=size))
            continue
        # The soak refuses a database holding other factories (the 1,000,000-device one): it
        # gets a database of its own on the same server, created on first use.
        script_env = {**env, "DATABASE_URL": soak_database_url(url)} if script == "soak" else env
        runs.append(run_script(script, extra, script_env))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nBreakwater benchmarks on {os.uname().nodename}: {os.cpu_count()} CPUs, load average {load}, {time.perf_counter() - started:,.0f} s in all\n")
    print(table(runs, sizes if len(sizes) > 1 else ()))
    missed = [f for r in runs for f in r.figures if f.ok is False]
    failed = [r.script for r in runs if r.returncode != 0 or not r.figures]
    print(f"\n{sum(f.ok is True for r in runs for f in r.figures)} figures within their goal, {len(missed)} missed, {len(failed)} scripts failed.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
