"""`make demo` runs every process with arguments its command accepts (a flag one of them does not
know stops the demo at its first start), and starts them without warnings."""
import os
import subprocess
import sys

import pytest
from django.core.management import call_command

from devices.management.commands.simulate_fleet import Command
from factory.project import run_demo


def test_the_gateway_takes_the_demos_arguments_and_writes_its_access_log_there(db, tmp_path, capsys):
    argv = dict(run_demo.processes())["gateway"]
    assert argv[1] == "manage.py" and argv[2] == "gateway"
    options = argv[3:]
    log = tmp_path / "gateway-access.log"
    options[options.index("--access-log") + 1] = str(log)
    call_command("gateway", *options, "--tls-dir", str(tmp_path / "tls"), "--print-command")
    printed = capsys.readouterr().out
    assert f"--access-log {log}" in printed and "factory.project.gateway.server" in printed


@pytest.mark.parametrize("name", ["simulator"])
def test_the_simulator_takes_the_demos_arguments(name):
    argv = dict(run_demo.processes())[name]
    parser = Command().create_parser("manage.py", "simulate_fleet")
    parser.parse_args(argv[3:])  # exits (SystemExit) on an unknown flag


def test_the_demo_worker_started_as_root_is_not_told_so_and_sees_every_other_warning(monkeypatch):
    # Celery warns a worker started as root at every start; a demo in a container is root.
    monkeypatch.setattr(run_demo.os, "geteuid", lambda: 0)
    script = (
        "import warnings; from celery.platforms import _warn_or_raise_security_error as check; "
        "check(0, 0, 0, 0, False); warnings.warn('another warning')"
    )
    started = subprocess.run([sys.executable, "-c", script], env=run_demo.child_env("worker"), capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    assert "superuser privileges" not in started.stderr and "another warning" in started.stderr
    # The other processes, and a worker not started as root, keep Celery's warning.
    assert run_demo.child_env("web").get("PYTHONWARNINGS") == os.environ.get("PYTHONWARNINGS")
    monkeypatch.setattr(run_demo.os, "geteuid", lambda: 1000)
    as_user = subprocess.run([sys.executable, "-c", script], env=run_demo.child_env("worker"), capture_output=True, text=True, timeout=60)
    assert "superuser privileges" in as_user.stderr
