"""The whole REST API under schemathesis with a larger budget than CI's, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bw_fuzz .venv/bin/python bench/fuzz_api.py --examples 200

Runs tests/test_schemathesis.py: every operation of the OpenAPI schema, requests generated from
it (valid and invalid), the same checks as CI (no server error; status, content type, body and
headers as documented; no answer without the token), against one prepared factory, with
--examples per operation (CI runs 20). Hypothesis is derandomized as in CI (the same budget tries
the same requests, so the same command finds a failure again) unless --random is given; either
way a failure prints the curl command that reproduces it. Prints per operation the
test cases run and the status codes answered, then the totals and every failure; exits with
pytest's status. -k narrows the operations as in pytest (e.g. -k rollout).
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
CI_EXAMPLES = 20


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10 * CI_EXAMPLES, help=f"examples per operation (default {10 * CI_EXAMPLES}; CI: {CI_EXAMPLES})")
    parser.add_argument("--random", action="store_true", help="new requests each run instead of CI's derandomized ones")
    parser.add_argument("-k", dest="keyword", help="only the operations whose test id matches (pytest -k)")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        parser.exit(2, "bench/fuzz_api.py runs on PostgreSQL: set DATABASE_URL=postgres://... (its test_ database is made and dropped)\n")

    with tempfile.TemporaryDirectory() as folder:
        report, junit = Path(folder) / "schemathesis.json", Path(folder) / "junit.xml"
        env = {
            **os.environ,
            "BREAKWATER_SCHEMATHESIS_EXAMPLES": str(args.examples),
            "BREAKWATER_SCHEMATHESIS_REPORT": str(report),
            "BREAKWATER_SCHEMATHESIS_DERANDOMIZE": "0" if args.random else "1",
        }
        command = [sys.executable, "-m", "pytest", "tests/test_schemathesis.py", "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning", "--tb=short", "--show-capture=no", f"--junitxml={junit}"]
        if args.keyword:
            command += ["-k", args.keyword]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env)
        elapsed = time.perf_counter() - started
        if not report.exists():
            print("no report was written: the run stopped before the end of tests/test_schemathesis.py")
            return done.returncode or 1
        summary = json.loads(report.read_text())
        failures = []
        if junit.exists():
            for testcase in ET.parse(junit).iter("testcase"):
                for failed in [*testcase.iter("failure"), *testcase.iter("error")]:
                    text = f"{failed.get('message') or ''}\n{failed.text or ''}"
                    named = re.search(r"operation='([^']+)'", text) or re.search(r"\[(\w+ /[^\]]+)\]", testcase.get("name", ""))
                    failures.append((named.group(1) if named else testcase.get("name", "?"), text.strip()))

    operations = summary["operations"]
    print(f"\n{'operation':<72} {'cases':>8} {'seconds':>8}  status codes")
    for label, tried in sorted(operations.items()):
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(tried["statuses"].items()))
        print(f"{label:<72} {tried['cases']:>8} {tried['seconds']:>8.1f}  {statuses}")
    cases = sum(t["cases"] for t in operations.values())
    answered = {}
    for tried in operations.values():
        for code, n in tried["statuses"].items():
            answered[code[0] + "xx"] = answered.get(code[0] + "xx", 0) + n
    print(
        f"\n{len(operations)} operations, {summary['examples_per_operation']} examples each (CI: {CI_EXAMPLES}"
        f"{', random' if not summary['derandomized'] else ''}), "
        f"{cases:,} test cases, {cases * len(summary['checks']):,} checks ({', '.join(summary['checks'])}) "
        f"in {elapsed / 60:.1f} min"
    )
    print("answers: " + ", ".join(f"{family}: {n:,}" for family, n in sorted(answered.items())))
    if failures:
        print(f"\nFAILED: {len(failures)} operation(s)")
        for label, message in sorted(failures):
            lines = [line.strip(" |+-") for line in message.splitlines()]
            shown = [line for line in lines if line.startswith(("- ST", "Received", "Documented", "[", "curl"))]
            print(f"  {label}:\n      " + "\n      ".join(shown[:10] or lines[:10]))
    else:
        print("no failures: no server error, every answer as the schema documents it")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
