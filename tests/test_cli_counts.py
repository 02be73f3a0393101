"""What the CLI says about counts and pages: "1 device", never "1 devices"; `devices list` shows
500 devices a page and says on stderr, set apart, that there are more; `waves rollout --help`
says where --uuids can read a list from."""
import pytest

from devices.fleet import fleet_load_for_benchmark
from devices.models import Device
from factory.tuf.services.repository import ci_build_publish
from tests.test_cli import TAG, cli, env, fast_passwords, fleet, keys_file, tokens  # noqa: F401  (fixtures)


def test_a_rollout_of_one_device_says_one_device(cli, tokens, fleet, keys_file):
    assert cli("waves", "init", "-k", keys_file, "v2", 42, TAG, token=tokens["bob"]).code == 0
    one = fleet.filter(is_production=True).order_by("name").first()
    preview = cli("waves", "rollout", "v2", "--uuids", str(one.uuid), "--dry-run", token=tokens["carol"])
    assert preview.code == 0, preview.err
    assert "A Wave would be rolled out to 1 device" in preview.out and "1 devices" not in preview.out
    unknown = "00000000-0000-0000-0000-000000000001"
    mixed = cli("waves", "rollout", "v2", "--uuids", f"{one.uuid},{unknown}", "--dry-run", token=tokens["carol"])
    assert "1 listed device was not rolled out:" in mixed.err and unknown in mixed.err
    rolled = cli("waves", "rollout", "v2", "--uuids", str(one.uuid), token=tokens["bob"])
    assert rolled.code == 0 and "A Wave is being rolled out to 1 device" in rolled.out


def test_moving_one_device_to_a_group_says_one_device(cli, tokens, fleet):
    one = fleet.filter(group__isnull=True).order_by("name").first()
    unknown = "00000000-0000-0000-0000-000000000002"
    moved = cli("devices", "set-group", "canary", str(one.uuid), unknown, token=tokens["bob"])
    assert moved.code == 0, moved.err
    assert "1 device is now in group canary" in moved.out
    assert "1 UUID is not a device of this factory:" in moved.err


def test_rollout_help_says_uuids_reads_a_file_or_standard_input(cli):
    helped = cli("waves", "rollout", "--help")
    assert helped.code == 0
    options = " ".join(helped.out.split())  # argparse wraps the help at the terminal's width
    assert "--uuids LIST|@FILE" in options and "@FILE to read them from a file" in options and "(@- reads standard input)" in options


@pytest.fixture
def big_fleet(factory):
    ci_build_publish(factory=factory, version=41, hardware_ids=["intel-corei7-64"], tags=[TAG])
    fleet_load_for_benchmark(factory=factory, tag=TAG, ungrouped=512, version=41)
    return Device.objects.filter(factory=factory)


def test_devices_list_shows_500_and_says_on_stderr_that_there_are_more(cli, tokens, big_fleet):
    first = cli("devices", "list", token=tokens["dave"])
    assert first.code == 0, first.err
    lines = first.out.splitlines()
    assert len(lines) == 2 + 500 and lines[0].split()[:2] == ["NAME", "UUID"]
    # Only the table goes to stdout, so a pipe reads devices; the hint stands on its own line.
    assert "page" not in first.out
    assert first.err.startswith("\n") and "-- devices 1-500 of 512: more on the next page: --page 2 (or --limit up to 1000) --" in first.err
    rest = cli("devices", "list", "--page", "2", token=tokens["dave"])
    assert len(rest.out.splitlines()) == 2 + 12 and rest.err == ""
    shown = {line.split()[1] for line in lines[2:]} | {line.split()[1] for line in rest.out.splitlines()[2:]}
    assert shown == {str(u) for u in big_fleet.values_list("uuid", flat=True)}
