"""The device doors under hypothesis with a larger budget than CI's: the gateway (in process and
over mutual TLS) and device registration.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bw_fuzz REDIS_URL=redis://127.0.0.1:6379/1 \\
        .venv/bin/python bench/fuzz_gateway.py --examples 2000

Runs tests/fuzz/ with BREAKWATER_FUZZ_EXAMPLES=--examples (CI: 25; the mutual TLS properties a
fifth of it), derandomized as in CI unless --random. Prints per property the cases tried, the statuses answered, the
5xx answers (goal 0) and the good events lost (accepted with a 2xx, then not written exactly once
by the flush; goal 0), then each failure with its reproducer. -k narrows the properties as pytest.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CI_EXAMPLES = 25


def failures_of(junit):
    found = []
    for testcase in ET.parse(junit).iter("testcase"):
        for failed in [*testcase.iter("failure"), *testcase.iter("error")]:
            text = f"{failed.get('message') or ''}\n{failed.text or ''}"
            lines = [line for line in text.splitlines() if line.startswith(("E ", "AssertionError")) or "<- device" in line or "Falsifying" in line]
            found.append((testcase.get("name", "?"), "\n".join(dict.fromkeys(line.strip() for line in lines))[:3000] or text[:1500]))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help=f"examples per property (default 2000; CI: {CI_EXAMPLES})")
    parser.add_argument("--random", action="store_true", help="new cases each run instead of CI's derandomized ones")
    parser.add_argument("-k", dest="keyword", help="only the properties whose test id matches (pytest -k)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        report, junit = Path(folder) / "fuzz.json", Path(folder) / "junit.xml"
        env = {
            **os.environ,
            "BREAKWATER_FUZZ_EXAMPLES": str(args.examples),
            "BREAKWATER_FUZZ_REPORT": str(report),
            "BREAKWATER_FUZZ_DERANDOMIZE": "0" if args.random else "1",
        }
        command = [sys.executable, "-m", "pytest", "tests/fuzz", "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning", "--tb=short", "--show-capture=no", f"--junitxml={junit}"]
        if args.keyword:
            command += ["-k", args.keyword]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - started
        if not report.exists():
            print("no report was written: the run stopped before the end of tests/fuzz")
            return done.returncode or 1
        tallies = json.loads(report.read_text())
        failures = failures_of(junit) if junit.exists() else []

    print(f"\n{'property':<44} {'cases':>7} {'5xx':>6} {'accepted':>9} {'lost':>6}  statuses")
    for name, tally in sorted(tallies.items()):
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(tally["statuses"].items()))
        print(f"{name:<44} {tally['cases']:>7} {tally['server_errors']:>6} {tally['events_accepted']:>9} {tally['events_lost']:>6}  {statuses}")
    cases = sum(t["cases"] for t in tallies.values())
    errors = sum(t["server_errors"] for t in tallies.values())
    lost = sum(t["events_lost"] for t in tallies.values())
    print(f"\n{len(tallies)} properties, {args.examples} examples each (CI: {CI_EXAMPLES}{', random' if args.random else ''}), {cases:,} cases in {elapsed / 60:.1f} min")
    print(f"5xx answers: {errors} (goal 0)")
    print(f"good events lost: {lost} (goal 0)")
    print(f"failed properties: {len(failures)} (goal 0)")
    for name, message in failures:
        print(f"\n--- {name}\n{message}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
