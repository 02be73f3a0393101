"""`breakwater waves revert` against a live server: signed locally (only signatures travel),
unsigned then signed, a dry run, refusals in one sentence, and the re-release in show, list and
status."""
import json

import pytest

from devices.models import Device
from factory.models import RereleaseVersion
from factory.tuf.services.repository import ci_build_publish
from tests.test_cli import assert_aktualizr_wave_signed, cli, env, fast_passwords, fleet, keys_file, one_sentence_error, private_key_hex, tokens  # noqa: F401
from waves.models import Wave
from waves.services import wave_complete, wave_init, wave_sign

TAG = "production"


@pytest.fixture
def bad_release(factory, bob, fleet, keys_file):
    """Build 42 completed on the tag (fleet: builds 41 and 42, devices on 41) and CI built 43."""
    wave = wave_sign(wave=wave_init(factory=factory, actor=bob, name="v42", version=42, tag=TAG), actor=bob, key_archive=keys_file.read_bytes())
    wave_complete(wave=wave, actor=bob)
    ci_build_publish(factory=factory, version=43, hardware_ids=["intel-corei7-64"], tags=[TAG])
    Device.objects.filter(factory=factory, is_production=True).update(target_version=42)
    return wave


def test_revert_signs_locally_and_only_signatures_reach_the_server(cli, tokens, bad_release, keys_file, monkeypatch):
    sent = []
    from factory.cli import client as client_module

    original = client_module.Client.request

    def spy(self, method, path, **kwargs):
        sent.append(json.dumps(kwargs.get("payload")))
        return original(self, method, path, **kwargs)

    monkeypatch.setattr(client_module.Client, "request", spy)
    result = cli("waves", "revert", "back-to-41", TAG, "--to", 41, "-k", keys_file, "--prune", "42", "--expires-days", 30, token=tokens["bob"])
    assert result.code == 0, result.err
    assert "created for version 44 (re-release of build 41) on tag production" in result.out
    assert "signed and active" in result.out and "run build 41's content again, as version 44" in result.out
    wave = Wave.objects.get(name="back-to-41")
    assert (wave.status, wave.version, wave.rerelease_of, wave.pruned_versions) == ("active", 44, 41, [42])
    secret = private_key_hex(keys_file)
    assert sent and all(secret not in body for body in sent)
    assert not any("key_archive" in body for body in sent) and any("aktualizr_signatures" in body for body in sent)
    assert_aktualizr_wave_signed(wave)
    assert list(RereleaseVersion.objects.values_list("version", "build_version")) == [(44, 41)]


def test_revert_without_keys_then_sign_and_a_dry_run_that_creates_nothing(cli, tokens, bad_release, keys_file):
    preview = cli("waves", "revert", "back", TAG, "--to", 41, "--dry-run", token=tokens["bob"])
    assert preview.code == 0, preview.err
    targets = json.loads(preview.out)["targets"]["signed"]["targets"]
    assert targets["intel-corei7-64-lmp-44"]["custom"]["rerelease_of"] == {"target": "intel-corei7-64-lmp-41", "version": 41}
    assert not Wave.objects.filter(name="back").exists() and not RereleaseVersion.objects.exists()
    created = cli("waves", "revert", "back", TAG, "--to", 41, token=tokens["bob"])
    assert created.code == 0 and "unsigned" in created.out and "breakwater waves sign back" in created.out
    assert cli("waves", "sign", "back", "-k", keys_file, token=tokens["bob"]).code == 0
    assert Wave.objects.get(name="back").status == "active"


def test_revert_refusals_are_one_sentence_and_change_nothing(cli, tokens, bad_release, keys_file):
    bob = tokens["bob"]
    assert "neither in the production targets" in one_sentence_error(cli("waves", "revert", "b", TAG, "--to", 99, token=bob))
    assert "Cannot prune 40" in one_sentence_error(cli("waves", "revert", "b", TAG, "--to", 41, "--prune", "40", token=bob))
    assert "already exists" in one_sentence_error(cli("waves", "revert", "v42", TAG, "--to", 41, token=bob))
    assert "--to must be the number" in one_sentence_error(cli("waves", "revert", "b", TAG, "--to", "x", token=bob), code=2)
    assert "not both" in one_sentence_error(cli("waves", "revert", "b", TAG, "--to", 41, "-e", 3, "-E", "2030-01-01T00:00:00Z", token=bob), code=2)
    for who in ("carol", "dave"):
        one_sentence_error(cli("waves", "revert", "b", TAG, "--to", 41, "-k", keys_file, token=tokens[who]))
    assert Wave.objects.count() == 1 and not RereleaseVersion.objects.exists()


def test_show_list_and_status_say_re_release_of_build_41(cli, tokens, bad_release, keys_file, factory):
    bob = tokens["bob"]
    assert cli("waves", "revert", "back-to-41", TAG, "--to", 41, "-k", keys_file, "--prune", "42", token=bob).code == 0
    assert cli("waves", "rollout", "back-to-41", "canary", token=bob).code == 0
    canary = Device.objects.filter(factory=factory, group__name="canary").order_by("name")
    Device.objects.filter(pk__in=[d.pk for d in canary[:2]]).update(target_version=44)

    shown = cli("waves", "show", "back-to-41", token=tokens["dave"])
    assert "44 (re-release of build 41)" in shown.out
    listing = cli("waves", "list", token=tokens["dave"]).out.splitlines()
    assert "back-to-41" in listing[2] and "44 (re-release of build 41)" in listing[2]
    status = cli("waves", "status", "back-to-41", token=bob)
    assert status.code == 0, status.err
    assert "version 44 (re-release of build 41) is active" in status.out
    assert "ON BAD BUILD" in status.out
    assert "44 (build 41 re-released) <-" in status.out and "42 (bad build)" in status.out
    fields_ = dict(line.split(":", 1) for line in status.out.splitlines() if ":" in line and line.startswith("Devices"))
    assert int(fields_["Devices on the Bad Build (not scheduled or scheduled)"]) == 98
    assert int(fields_["Devices Updated"]) == 2
