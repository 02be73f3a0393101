"""The whole REST API under schemathesis with a larger budget than CI's, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bw_fuzz .venv/bin/python bench/fuzz_api.py --examples 200

Runs tests/test_schemathesis.py: every operation of the OpenAPI schema, requests generated from
it (valid and invalid), the same checks as CI (no server error; status, content type, body and
headers as documented; no answer without the token), against one prepared factory, with
--examples per operation (CI runs 20). Hypothesis is derandomized: the same budget tries the same
requests, so a failure found here is found again by the same command. Prints per operation the
test cases run and the status codes answered, then the totals and every failure; exits with
pytest's status. -k narrows the operations as in pytest (e.g. -k rollout).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CI_EXAMPLES = 20


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10 * CI_EXAMPLES, help=f"examples per operation (default {10 * CI_EXAMPLES}; CI: {CI_EXAMPLES})")
    parser.add_argument("-k", dest="keyword", help="only the operations whose test id matches (pytest -k)")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        parser.exit(2, "bench/fuzz_api.py runs on PostgreSQL: set DATABASE_URL=postgres://... (its test_ database is made and dropped)\n")

    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "schemathesis.json"
        env = {**os.environ, "BREAKWATER_SCHEMATHESIS_EXAMPLES": str(args.examples), "BREAKWATER_SCHEMATHESIS_REPORT": str(report)}
        command = [sys.executable, "-m", "pytest", "tests/test_schemathesis.py", "-q", "-p", "no:cacheprovider", "--tb=line", "-W", "ignore::UserWarning"]
        if args.keyword:
            command += ["-k", args.keyword]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env)
        elapsed = time.perf_counter() - started
        if not report.exists():
            print("no report was written: the run stopped before the end of tests/test_schemathesis.py")
            return done.returncode or 1
        summary = json.loads(report.read_text())

    operations = summary["operations"]
    print(f"\n{'operation':<72} {'cases':>8} {'seconds':>8}  status codes")
    for label, tried in sorted(operations.items()):
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(tried["statuses"].items()))
        print(f"{label:<72} {tried['cases']:>8} {tried['seconds']:>8.1f}  {statuses}")
    cases = sum(t["cases"] for t in operations.values())
    failures = {label: t["failures"] for label, t in operations.items() if t["failures"]}
    answered = {}
    for tried in operations.values():
        for code, n in tried["statuses"].items():
            answered[code[0] + "xx"] = answered.get(code[0] + "xx", 0) + n
    print(
        f"\n{len(operations)} operations, {summary['examples_per_operation']} examples each (CI: {CI_EXAMPLES}), "
        f"{cases:,} test cases, {cases * len(summary['checks']):,} checks ({', '.join(summary['checks'])}) "
        f"in {elapsed / 60:.1f} min"
    )
    print("answers: " + ", ".join(f"{family}: {n:,}" for family, n in sorted(answered.items())))
    if failures:
        print(f"\nFAILED in {len(failures)} operation(s):")
        for label, messages in sorted(failures.items()):
            print(f"  {label}: {len(messages)} failing case(s), first: {messages[0].splitlines()[0]}")
    else:
        print("no failures: no server error, every answer as the schema documents it")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
