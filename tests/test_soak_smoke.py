"""bench/soak.py end to end with tiny numbers: every process starts, devices poll and update,
the dashboard answers, and the figures are printed. The figures themselves are not judged here."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.processes import database_url

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_a_short_soak_passes_with_zero_errors_and_reports_its_figures(tmp_path):
    # The soak runs on the (committed, empty) test database. Its Celery queue, cache and check-in
    # buffer stay in a var/ folder of its own: a broker or Redis database shared with other tests
    # could hand its worker their leftover tasks.
    drop = ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_TASK_ALWAYS_EAGER", "DJANGO_ALLOW_ASYNC_UNSAFE", "SQLITE_PATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        DATABASE_URL=database_url(),
        BREAKWATER_VAR_DIR=str(tmp_path / "var"),
        SECRET_KEY=settings.SECRET_KEY,
        BREAKWATER_KEY_ENCRYPTION_KEY=settings.TUF_KEY_ENCRYPTION_KEY,
        BREAKWATER_CHECKIN_FLUSH_SECONDS="1",
        PYTHONPATH=str(ROOT),
    )
    argv = [sys.executable, "-m", "bench.soak", "--devices", "20", "--seconds", "8", "--interval", "3", "--progress", "100"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    out = done.stdout + done.stderr

    assert done.returncode == 0, out[-4000:]
    assert "soak: passed, 0 errors" in out
    polls = re.search(r"^gateway poll \(device side.*?\)\s+(\d+)\s+0\s+[\d.]+\s+[\d.]+\s+[\d.]+", out, re.M)
    assert polls and int(polls.group(1)) >= 20, out  # every device polled at least once
    pages = re.search(r"^dashboard all pages\s+(\d+)\s+0\s", out, re.M)
    assert pages and int(pages.group(1)) >= 10, out
    assert re.search(r"^database growth per device-day: [\d,]+ bytes", out, re.M), out
    assert re.search(r"^  device \+ check-in tables \(devices_device, devices_devicereport\)\s+-?[\d,]+ bytes  \(goal < 1,024", out, re.M), out
    assert re.search(r"^device row updates during the soak: [\d,]+, heap-only \(HOT\) [\d,]+", out, re.M), out
    assert "20 of 20 devices' check-ins written during the soak" in out
    assert re.search(r"rollout at .*: \d+ devices staged", out)
