"""`make demo`: load the demo factory, then run every Breakwater process until Ctrl-C.

Processes: the web server, a Celery worker and beat, the device gateway and the fleet
simulator. Each is a child process; one that dies is restarted (a few times), Ctrl-C stops them all.

The simulator drives the demo factory's seeded fleet (1,000 production and 50 test devices on
tag production): it takes the seeded devices over by having new certificates issued to keys it
generates (the renewal an admin does when a device is re-keyed), and it registers 5 more devices
through the real registration endpoint, so both doors are exercised. 10% of the devices stay
offline, 2 production devices never come back after an update, and 20% of installs in group beta
fail, so the wave status has something to show. 30% of the devices speak aktualizr-lite's protocol
(devices/aktualizr_device.py), the rest python-tuf's, so both kinds follow every wave.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent.parent
PY = sys.executable
WEB_ADDR = os.environ.get("BREAKWATER_WEB_ADDR", "127.0.0.1:8000")
# Request logs go to files, so the console keeps the logins, warnings and errors in view.
LOG_DIR = Path(os.environ.get("BREAKWATER_VAR_DIR", BASE / "var")) / "logs"
MAX_RESTARTS = 5
# Celery's SecurityWarning for a worker started as root, by the start of its message.
ROOT_WORKER_WARNING = "ignore:You're running the worker with superuser privileges"


def processes():
    """(name, argv) of every process the demo runs; the gateway listens on BREAKWATER_GATEWAY_URL
    (https://127.0.0.1:8443 by default)."""
    return [
        ("web", [PY, "-m", "gunicorn", "factory.project.wsgi", "-b", WEB_ADDR, "-w", "3", "--threads", "4", "--no-control-socket", "--log-level", "warning", "--access-logfile", str(LOG_DIR / "web-access.log")]),
        # Warnings and errors only: a line per task run would scroll the logins away in seconds.
        ("worker", [PY, "-m", "celery", "-A", "factory.project", "--quiet", "worker", "-l", "warning", "--concurrency", "2"]),
        ("beat", [PY, "-m", "celery", "-A", "factory.project", "--quiet", "beat", "-l", "warning"]),
        ("gateway", [PY, "manage.py", "gateway", "--workers", "2", "--threads", "8", "--access-log", str(LOG_DIR / "gateway-access.log")]),
        (
            "simulator",
            [
                PY, "manage.py", "simulate_fleet",
                "--factory", "demo",
                "--web-url", f"http://{WEB_ADDR}",
                "--register", "5",
                "--initial-version", "41",
                "--interval", "30",
                "--offline-ratio", "0.1",
                "--never-return", "2",
                "--fail-rate", "beta=0.2",
                "--reboot-delay", "10",
                "--progress", "15",
                "--aktualizr-share", "0.3",
            ],
        ),
    ]


def child_env(name):
    """The environment of one demo process."""
    env = dict(os.environ)
    if name == "worker" and os.geteuid() == 0:
        # A demo in a container runs as root. Celery then warns at every worker start that a
        # worker should not; it refuses outright only with pickle, which Breakwater never accepts
        # (JSON only). A deployment runs its workers as a service user and still gets the warning.
        env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), ROOT_WORKER_WARNING]))
    return env


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.project.settings")
    subprocess.run([PY, "manage.py", "demo"], cwd=BASE, check=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    specs = dict(processes())
    children = []
    restarts = {name: 0 for name in specs}
    for name, argv in specs.items():
        print(f"starting {name}: {' '.join(argv[1:])}", flush=True)
        children.append((name, subprocess.Popen(argv, cwd=BASE, env=child_env(name))))
    print(f"\nBreakwater is running on http://{WEB_ADDR}/ (Ctrl-C stops everything; request logs: {LOG_DIR})\n", flush=True)

    def stop(*_):
        for _, child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.time() + 10
        for _, child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while True:
        for i, (name, child) in enumerate(children):
            if child.poll() is None:
                continue
            # The embedded broker (kombu's filesystem transport) can trip a worker now and then;
            # a demo should carry on, so restart the process a few times before giving up.
            if restarts[name] >= MAX_RESTARTS:
                print(f"{name} exited with {child.returncode} {restarts[name]} times; stopping the demo", flush=True)
                stop()
            restarts[name] += 1
            print(f"{name} exited with {child.returncode}; restarting it", flush=True)
            children[i] = (name, subprocess.Popen(specs[name], cwd=BASE, env=child_env(name)))
        time.sleep(1)


if __name__ == "__main__":
    main()
