"""The `breakwater` CLI end to end at 1,000,000 devices on PostgreSQL: each command run as a
release manager runs it (a new process, HTTP to gunicorn, the server's work, the output).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakwater_bench .venv/bin/python bench/api_cli.py

Prints the wall time of each command of a release on a fresh wave: init with local signing, a
10,000-device dry run printed to a file, that file rolled out, a sample of 10,000, a whole group,
wave status, factory status and a 1,000-device page; the wave is canceled at the end so the next
run starts from the same state. Goal: every command under 5 s, rollouts of 10,000 under 3 s.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# Run as `python bench/x.py`, this folder comes first on sys.path, and bench/tuf.py would shadow
# the tuf package: put the project root there instead.
sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.fleet import BENCH_TAG, bench_fleet  # noqa: E402  (sets up Django)

from django.conf import settings  # noqa: E402

from factory.models import Role  # noqa: E402
from factory.services import api_token_create, user_create  # noqa: E402
from factory.tuf.services.root_changes import offline_key_generate  # noqa: E402
from waves.models import Wave  # noqa: E402
from waves.services import wave_cancel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
USER = "bench-release"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_key(factory, user):
    """The bench user's offline targets key, registered once and kept in the var folder."""
    path = Path(settings.VAR_DIR) / "bench-api-offline-targets-key.tgz"
    if not path.exists():
        path.write_bytes(offline_key_generate(factory=factory, actor=user, role="targets"))
    return path


def wait_for(url, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"the server at {url} did not start")


def main():
    factory = bench_fleet()
    user = user_create(username=USER, factory=factory, role=Role.RELEASE_MANAGER)
    keys = offline_key(factory, user)
    for wave in Wave.objects.filter(factory=factory, tag=BENCH_TAG, status__in=Wave.OPEN_STATUSES):
        wave_cancel(wave=wave, actor=None)
    _, token = api_token_create(user=user, factory=factory, name="bench")
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="bw-bench-cli-"))
    env = {**os.environ, "BREAKWATER_URL": f"http://127.0.0.1:{port}", "BREAKWATER_TOKEN": token, "BREAKWATER_CONFIG": str(work / "cli.json")}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "factory.project.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2", "--threads", "4", "--no-control-socket", "--timeout", "120"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cli = [sys.executable, "-m", "factory.cli.main"]
    wave = f"bench-cli-{int(time.time())}"
    rows = []
    try:
        wait_for(f"http://127.0.0.1:{port}/api/v1/openapi.json")
        # Each worker imports the URL configuration on its first request (about 2 s): warm them
        # all, as a running server would be.
        for _ in range(16):
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/whoami", headers={"Authorization": f"Token {token}"})).read()

        def timed(label, *argv, stdout=None):
            started = time.perf_counter()
            done = subprocess.run([*cli, *argv], cwd=ROOT, env=env, stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"`breakwater {' '.join(argv)}` failed: {done.stderr.strip()}")
            rows.append((label, seconds))
            return done

        timed("breakwater --help (process start)", "--help")
        timed("waves init -k (local signing)", "waves", "init", "-k", str(keys), wave, "42", BENCH_TAG)
        listing = work / "pre-selected.lst"
        with listing.open("w") as handle:
            timed("rollout --limit 10000 --dry-run --print-uuids", "waves", "rollout", wave, "--limit", "10000", "--dry-run", "--print-uuids", stdout=handle)
        assert len(listing.read_text().split()) == 10_000
        timed("rollout --uuids @file (10,000 UUIDs)", "waves", "rollout", wave, "--uuids", f"@{listing}")
        timed("rollout --limit 10000", "waves", "rollout", wave, "--limit", "10000")
        timed("rollout --group g001 (whole group)", "waves", "rollout", wave, "--group", "g001")
        timed("waves status", "waves", "status", wave)
        timed("status (factory)", "status")
        timed("devices list -n 1000", "devices", "list", "-n", "1000")
        timed("waves cancel", "waves", "cancel", wave)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(label) for label, _ in rows)
    print(f"\n{'command'.ljust(width)}  seconds")
    for label, seconds in rows:
        print(f"{label.ljust(width)}  {seconds:7.2f}")


if __name__ == "__main__":
    main()
