"""Every command line of the production-targets guide, with `fioctl` replaced by `breakwater`,
run through the CLI against a live server, checking what each one did to the wave."""
import random
import re
import shlex
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.utils import timezone

from devices.fleet import fleet_load_for_benchmark
from devices.models import Device
from factory.cli.main import main
from factory.services import api_token_create
from factory.tuf import selectors as tuf_selectors
from factory.tuf.services.repository import ci_build_publish
from tests.tuf_helpers import offline_targets_key
from waves.models import Wave, WaveDevice, WaveGroup

TAG = "production"
SEED_UUIDS = ["ab8ecb00-8ed4-42ff-90b2-815b371c0f86", "7a733e81-f948-43a9-a358-56f3deb5f184"]
SEED_PATH = Path(__file__).resolve().parents[2] / "shared" / "seed" / "production-targets.txt"
INIT = "fioctl waves init -k /absolute/path/to/targets.only.key.tgz v2.0-update 42 production"

# The guide's command lines, verbatim, in the order they appear.
SEED_LINES = [
    INIT,
    "fioctl waves rollout v2.0-update canary",
    "fioctl waves rollout v2.0-update us-east-1 --limit=10",
    "fioctl waves rollout v2.0-update us-east-1 --limit=50",
    "fioctl waves rollout v2.0-update us-east-1",
    "fioctl waves rollout v2.0-update --limit=5",
    "fioctl waves rollout v2.0-update --limit=5 --dry-run --print-uuids",
    "fioctl waves rollout v2.0-update --uuids=ab8ecb00-8ed4-42ff-90b2-815b371c0f86,7a733e81-f948-43a9-a358-56f3deb5f184",
    "fioctl waves rollout --help",
    "fioctl status",
    "fioctl wave status",
    "fioctl waves complete v2.0-update",
    "fioctl waves cancel v2.0-update",
    "fioctl waves rollout v2.0-update --group canary",
    "fioctl waves rollout v2.0-update --group beta",
    "fioctl waves complete",
    "fioctl waves status",
    "fioctl waves rollout v2.0-update --limit 5",
    "fioctl waves rollout v2.0-update --limit 20",
    "fioctl waves rollout v2.0-update --uuids @/path/to/canary-devices.lst",
    "fioctl waves rollout v2.0-update --group us-east --limit 5",
    "fioctl waves rollout v2.0-update --group us-east --limit 20",
    "fioctl waves rollout v2.0-update --group us-east --limit 100",
    "fioctl waves rollout v2.0-update --group us-east",
    "fioctl waves rollout v2.0-update --group eu-emea --uuids @/path/to/canary.lst",
    "fioctl waves rollout v2.0-update --group eu-emea --limit 100 --uuids @/path/to/phase1.lst",
    "fioctl waves rollout v2.0-update --group eu-emea --limit 100 --uuids @/path/to/phase2.lst",
    "fioctl waves rollout v2.0-update --group eu-emea --limit 100 --uuids @/path/to/phase3.lst",
    "fioctl waves rollout v2.0-update --group eu-emea --limit 100 --uuids @/path/to/phase4.lst",
    "fioctl waves rollout v2.0-update --group eu-emea",
    "fioctl waves rollout v2.0-update --limit 100 --uuids @/path/to/pre-selected.lst",
    "fioctl waves rollout v2.0-update --limit 400 --uuids @/path/to/pre-selected.lst",
    "fioctl waves rollout v2.0-update --limit 1000 --uuids @/path/to/pre-selected.lst",
    "fioctl waves rollout v2.0-update --limit 3500 --uuids @/path/to/pre-selected.lst",
    "fioctl waves rollout v2.0-update --limit 1000 --print-uuids >/path/to/pre-selected.lst",
    "fioctl waves rollout v2.0-update --uuids @/path/to/pre-selected.lst",
]


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def release(live_server, factory, bob, tmp_path, monkeypatch, capsys):
    """A live server, bob's offline key on disk, CI builds 41 and 42, and a `run(line)` that runs
    one of the guide's lines through the CLI (in process) as bob."""
    keys = tmp_path / "targets.only.key.tgz"
    keys.write_bytes(offline_targets_key(factory=factory, actor=bob))
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=["intel-corei7-64", "raspberrypi4-64"], tags=[TAG])
    monkeypatch.setenv("BREAKWATER_URL", live_server.url)
    monkeypatch.setenv("BREAKWATER_TOKEN", api_token_create(user=bob, factory=factory)[1])
    monkeypatch.setenv("BREAKWATER_CONFIG", str(tmp_path / "config.json"))
    monkeypatch.delenv("BREAKWATER_FACTORY", raising=False)
    files = tmp_path / "lists"
    files.mkdir()

    def run(line):
        assert line in SEED_LINES, line
        line = line.replace("/absolute/path/to/targets.only.key.tgz", str(keys)).replace("/path/to/", f"{files}/")
        redirect = None
        if ">" in line:
            line, redirect = (part.strip() for part in line.split(">", 1))
        words = shlex.split(line)
        assert words[0] == "fioctl"
        code = main(words[1:])
        captured = capsys.readouterr()
        if redirect:
            Path(redirect).write_text(captured.out)
        return SimpleNamespace(code=code, out=captured.out, err=captured.err)

    return SimpleNamespace(run=run, files=files, factory=factory)


def fleet(factory, groups=None, ungrouped=0, version=41):
    fleet_load_for_benchmark(factory=factory, tag=TAG, groups=groups or {}, ungrouped=ungrouped, test_devices=3, version=version, hardware_ids=["intel-corei7-64"])


def wave():
    return Wave.objects.get(name="v2.0-update")


def staged(group=None):
    rows = WaveDevice.objects.filter(wave__name="v2.0-update")
    if group is not None:
        rows = rows.filter(device__group__name=group)
    return {str(u) for u in rows.values_list("device__uuid", flat=True)}


def uuids_of(**filters):
    return [str(u) for u in Device.objects.filter(is_production=True, **filters).order_by("name").values_list("uuid", flat=True)]


def ok(result, *texts):
    assert result.code == 0, result.err
    for text in texts:
        assert text in result.out, result.out
    return result


def init(release):
    result = ok(release.run(INIT), "Wave v2.0-update created for version 42 on tag production", "signed and active")
    assert wave().status == "active"
    return result


def test_the_guide_lists_no_command_that_is_not_tested():
    if not SEED_PATH.exists():
        pytest.skip(f"the guide is not at {SEED_PATH}")
    lines = [line.strip() for line in SEED_PATH.read_text().splitlines() if line.strip().startswith("fioctl ")]
    assert lines and set(lines) <= set(SEED_LINES)
    mentioned = set(re.findall(r"\bfioctl ((?:waves? )?(?:status|rollout --help))", SEED_PATH.read_text()))
    assert {f"fioctl {m}" for m in mentioned} <= set(SEED_LINES)


def test_performing_a_production_ota(release):
    factory = release.factory
    fleet(factory, groups={"canary": 5, "us-east-1": 80}, ungrouped=30)
    # The guide's own example UUIDs are two production devices here, offline so that random
    # samples (recently active first) leave them for the explicit --uuids line.
    two = Device.objects.filter(factory=factory, group__isnull=True, is_production=True).order_by("id")[:2]
    for device, value in zip(list(two), SEED_UUIDS):
        Device.objects.filter(pk=device.pk).update(uuid=value, last_seen=timezone.now() - timedelta(days=3))

    signed = init(release)
    assert "--print" not in signed.out
    assert not WaveDevice.objects.exists()
    ok(release.run("fioctl waves rollout v2.0-update canary"), 'A Wave is being rolled out to all 5 devices in group "canary"')
    assert WaveGroup.objects.filter(wave=wave(), group__name="canary").exists()

    ok(release.run("fioctl waves rollout v2.0-update us-east-1 --limit=10"), 'A Wave is being rolled out to 10 devices in group "us-east-1"')
    assert len(staged("us-east-1")) == 10
    ok(release.run("fioctl waves rollout v2.0-update us-east-1 --limit=50"), "50 devices")
    assert len(staged("us-east-1")) == 60
    ok(release.run("fioctl waves rollout v2.0-update us-east-1"), 'all 20 devices in group "us-east-1"')
    assert WaveGroup.objects.filter(wave=wave(), group__name="us-east-1").exists()

    ok(release.run("fioctl waves rollout v2.0-update --limit=5"), "A Wave is being rolled out to 5 devices")
    assert len(staged()) == 65 and len(staged(None) - staged("us-east-1")) == 5

    preview = release.run("fioctl waves rollout v2.0-update --limit=5 --dry-run --print-uuids")
    assert preview.code == 0
    printed = preview.out.split()
    assert len(printed) == 5 and not set(printed) & staged() and "A Wave would be rolled out to 5 devices" in preview.err
    assert len(staged()) == 65

    ok(release.run(SEED_LINES[7]), "A Wave is being rolled out to 2 devices")
    assert set(SEED_UUIDS) <= staged()

    helped = ok(release.run("fioctl waves rollout --help"), "--print-uuids", "--uuids", "--limit", "--dry-run", "--group")
    assert "usage: breakwater waves rollout" in helped.out

    factory_status = ok(release.run("fioctl status"), "Production devices", "v2.0-update")
    assert re.search(r"production\s+-\s+115\s", factory_status.out), factory_status.out
    wave_status = ok(release.run("fioctl wave status"), "Wave 'v2.0-update' for tag 'production' version 42 is active", "canary", "us-east-1")
    # 92 staged: 90 waiting online, 2 offline (each device in one state, as the live status shows it)
    assert re.search(r"Devices Scheduled for Update:\s+90", wave_status.out), wave_status.out
    assert re.search(r"Devices Offline:\s+2\n", wave_status.out), wave_status.out

    ok(release.run("fioctl waves complete v2.0-update"), "complete")
    assert wave().status == "complete"
    assert tuf_selectors.production_targets_version(factory=factory, tag=TAG) == 42
    refused = release.run("fioctl waves cancel v2.0-update")
    assert refused.code == 1 and refused.err.startswith("Error: ") and "cannot be canceled" in refused.err
    assert wave().status == "complete"


def test_cancel_a_wave_that_progresses_badly(release):
    fleet(release.factory, groups={"canary": 5}, ungrouped=10)
    init(release)
    ok(release.run("fioctl waves rollout v2.0-update canary"))
    ok(release.run("fioctl waves cancel v2.0-update"), "canceled")
    assert wave().status == "canceled"
    assert tuf_selectors.production_targets_version(factory=release.factory, tag=TAG) is None
    status = ok(release.run("fioctl waves status"), "There is no active wave")
    assert "v2.0-update" not in status.out


def test_releasing_to_canary_groups(release):
    fleet(release.factory, groups={"canary": 5, "beta": 20}, ungrouped=75)
    init(release)
    ok(release.run("fioctl waves rollout v2.0-update --group canary"), 'all 5 devices in group "canary"')
    ok(release.run("fioctl waves rollout v2.0-update --group beta"), 'all 20 devices in group "beta"')
    assert set(WaveGroup.objects.filter(wave=wave()).values_list("group__name", flat=True)) == {"canary", "beta"}
    status = ok(release.run("fioctl waves status"), "Wave 'v2.0-update'", "canary", "beta", "(No Group)")
    assert re.search(r"Devices Scheduled for Update:\s+25", status.out)
    ok(release.run("fioctl waves complete"), "Wave v2.0-update is complete")
    assert wave().status == "complete"


def test_releasing_to_random_partitions(release):
    fleet(release.factory, groups={"canary": 5, "beta": 20}, ungrouped=75)
    init(release)
    ok(release.run("fioctl waves rollout v2.0-update --limit 5"), "5 devices")
    first = staged()
    ok(release.run("fioctl waves rollout v2.0-update --limit 20"), "20 devices")
    assert len(staged()) == 25 and first < staged()
    ok(release.run("fioctl waves complete"))
    assert wave().status == "complete"


def test_releasing_to_a_canary_file_then_a_random_partition(release):
    fleet(release.factory, groups={"canary": 5, "beta": 20}, ungrouped=75)
    canaries = random.sample(uuids_of(), 5)
    (release.files / "canary-devices.lst").write_text(",".join(canaries))
    init(release)
    ok(release.run("fioctl waves rollout v2.0-update --uuids @/path/to/canary-devices.lst"), "5 devices")
    assert staged() == set(canaries)
    ok(release.run("fioctl waves rollout v2.0-update --limit 20"))
    assert len(staged()) == 25 and set(canaries) < staged()
    ok(release.run("fioctl waves complete"))
    assert wave().status == "complete"


def test_releasing_to_a_large_group_in_chunks(release):
    fleet(release.factory, groups={"us-east": 150, "us-west": 40}, ungrouped=10)
    init(release)
    for line, total in ((SEED_LINES[20], 5), (SEED_LINES[21], 25), (SEED_LINES[22], 125)):
        ok(release.run(line), 'devices in group "us-east"')
        assert len(staged("us-east")) == total and staged() == staged("us-east")
    ok(release.run("fioctl waves rollout v2.0-update --group us-east"), 'all 25 devices in group "us-east"')
    assert WaveGroup.objects.filter(wave=wave(), group__name="us-east").exists()


def test_integration_with_external_device_management(release):
    fleet(release.factory, groups={"eu-emea": 660, "apac": 30})
    emea = uuids_of(group__name="eu-emea")
    random.shuffle(emea)
    phases = [emea[i * 150 : (i + 1) * 150] for i in range(4)]
    canaries = random.sample(emea[:600], 20)  # they may intersect with the phases, as in the guide
    separators = [",", ";", "\n", "\r\n", " \t", "|"]
    for number, phase in enumerate(phases, 1):
        (release.files / f"phase{number}.lst").write_text(separators[number].join(phase) + "\n")
    # One apac device in the canary file: the group scope reports it instead of rolling it out.
    apac_device = uuids_of(group__name="apac")[0]
    (release.files / "canary.lst").write_text("\r\n".join(canaries + [apac_device]))
    init(release)

    result = ok(release.run("fioctl waves rollout v2.0-update --group eu-emea --uuids @/path/to/canary.lst"), 'A Wave is being rolled out to 20 devices in group "eu-emea"')
    assert staged() == set(canaries)
    assert f"{apac_device}  other group" in result.err
    for number, phase in enumerate(phases, 1):
        before = staged()
        ok(release.run(SEED_LINES[24 + number]), 'A Wave is being rolled out to 100 devices in group "eu-emea"')
        new = staged() - before
        assert len(new) == 100 and new <= set(phase)
    assert len(staged()) == 420
    ok(release.run("fioctl waves rollout v2.0-update --group eu-emea"), 'all 240 devices in group "eu-emea"')
    assert WaveGroup.objects.filter(wave=wave(), group__name="eu-emea").exists()
    assert not staged("apac")


def test_going_beyond_limits_with_a_preselected_list(release):
    fleet(release.factory, groups={"us-east": 2500}, ungrouped=2700)
    preselected = random.sample(uuids_of(), 5000)
    (release.files / "pre-selected.lst").write_text("\n".join(preselected))
    init(release)
    expected = 0
    for line, limit in zip(SEED_LINES[30:34], (100, 400, 1000, 3500)):
        expected += limit
        ok(release.run(line), f"A Wave is being rolled out to {limit} devices")
        assert len(staged()) == expected and staged() <= set(preselected)
    assert staged() == set(preselected)


def test_print_uuids_to_a_file_edit_it_and_roll_it_out(release):
    fleet(release.factory, groups={"canary": 5}, ungrouped=1495)
    init(release)
    printed = release.run("fioctl waves rollout v2.0-update --limit 1000 --print-uuids >/path/to/pre-selected.lst")
    assert printed.code == 0 and "A Wave is being rolled out to 1000 devices" in printed.err
    listed = (release.files / "pre-selected.lst").read_text().split()
    assert len(listed) == 1000 and set(listed) == staged()
    # Edit: drop ten lines and add twelve devices that were not rolled out yet.
    already = staged()
    fresh = [u for u in uuids_of() if u not in already][:12]
    (release.files / "pre-selected.lst").write_text("\n".join(listed[10:] + fresh) + "\n")
    result = ok(release.run("fioctl waves rollout v2.0-update --uuids @/path/to/pre-selected.lst"), "A Wave is being rolled out to 12 devices")
    assert "990 listed devices were not rolled out" in result.err and "already staged" in result.err
    assert len(staged()) == 1012 and set(fresh) < staged()
