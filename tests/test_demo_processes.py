"""`make demo` runs every process with arguments its command accepts: a flag one of them does not
know stops the demo at its first start."""
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
