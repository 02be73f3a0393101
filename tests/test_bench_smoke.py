"""The fleet benchmarks run end to end on a small bench fleet: a schema change that a bench's
bulk SQL misses (a new NOT NULL column, say) fails here, not in the next `make bench`."""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from psycopg import sql

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench_database_url():
    """A database of its own on the test server (the benches refuse to share one with other
    fleets), dropped afterwards."""
    settings = connection.settings_dict
    server = f"postgres://{settings['USER']}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}"
    name = f"bench_smoke_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_the_rollout_and_status_benches_run_on_a_small_fleet(bench_database_url, tmp_path):
    env = {**os.environ, "DATABASE_URL": bench_database_url, "BREAKWATER_VAR_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "bench/run.py", "--sizes", "3000", "--only", "rollout,status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 scripts failed" in run.stdout, run.stdout[-4000:]
    assert "rollout full group" in run.stdout and "aggregation cycle" in run.stdout
