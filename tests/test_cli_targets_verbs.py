"""`breakwater targets prune`, `targets tag` and `waves show --devices` against the live server:
what they print, what changed on the server, and refusals as one-sentence errors."""
import pytest

from factory.models import AuditEntry, CiTarget
from factory.tuf.services.repository import ci_build_publish
from waves.models import Rollout

from tests.test_cli import TAG, cli, env, fast_passwords, fleet, keys_file, one_sentence_error, tokens  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)

HWID = "intel-corei7-64"


def versions(factory):
    return sorted(set(CiTarget.objects.filter(factory=factory).values_list("version", flat=True)))


def test_prune_dryrun_then_prune_keeping_what_the_open_wave_needs(cli, factory, tokens, fleet, keys_file):
    for version in (43, 44):
        ci_build_publish(factory=factory, version=version, hardware_ids=[HWID], tags=[TAG])
    assert cli("waves", "init", "-k", keys_file, "v2", 42, TAG, token=tokens["bob"]).code == 0

    dry = cli("targets", "prune", "--by-tag", TAG, "--keep-last", 1, "--dryrun", token=tokens["carol"])
    assert dry.code == 0, dry.err
    assert "Would prune:" in dry.out and f"  {HWID}-lmp-43" in dry.out and f"  {HWID}-lmp-41" in dry.out
    assert f"{HWID}-lmp-42: released by active wave v2" in dry.out
    assert f"{HWID}-lmp-44: the newest build of tag {TAG}" in dry.out
    assert "Dry run: nothing was changed." in dry.out
    assert versions(factory) == [41, 42, 43, 44]

    assert "may not do this (targets.publish)" in one_sentence_error(cli("targets", "prune", "--by-tag", TAG, token=tokens["carol"]))
    done = cli("targets", "prune", "--by-tag", TAG, "--keep-last", 1, token=tokens["bob"])
    assert done.code == 0, done.err
    assert "Pruned:" in done.out and "re-signed" in done.out
    assert versions(factory) == [42, 44]
    assert AuditEntry.objects.get(action="targets.prune").target == "41,43"

    assert "build 43 was pruned" in one_sentence_error(cli("targets", "prune", 43, token=tokens["bob"]))
    json_out = cli("targets", "prune", 42, "--dry-run", "--json", token=tokens["dave"])
    assert json_out.code == 0 and '"reason": "released by active wave v2"' in json_out.out


def test_prune_usage_errors_exit_2_and_change_nothing(cli, factory, tokens, fleet):
    assert cli("targets", "prune", token=tokens["bob"]).code == 2
    assert cli("targets", "prune", 41, "--by-tag", TAG, token=tokens["bob"]).code == 2
    assert cli("targets", "prune", 41, "--keep-last", 1, token=tokens["bob"]).code == 2
    assert "No such CI target" in one_sentence_error(cli("targets", "prune", 41, "nope-lmp-9", token=tokens["bob"]))
    assert versions(factory) == [41, 42]


def test_tag_sets_and_appends_and_refuses_bad_tags(cli, factory, tokens, fleet):
    done = cli("targets", "tag", "--tags", "qa,beta", 42, token=tokens["bob"])
    assert done.code == 0, done.err
    assert f"Changed tags of {HWID}-lmp-42 from {TAG} to beta,qa" in done.out and "re-signed" in done.out
    appended = cli("targets", "tag", "-T", TAG, "--append", f"{HWID}-lmp-42", token=tokens["alice"])
    assert appended.code == 0 and f"to beta,{TAG},qa" in appended.out
    same = cli("targets", "tag", "-T", "qa", "--append", "--by-version", 42, token=tokens["bob"])
    assert same.code == 0 and "already has tags" in same.out
    assert CiTarget.objects.get(name=f"{HWID}-lmp-42").tags == ["beta", TAG, "qa"]

    assert "Not a tag" in one_sentence_error(cli("targets", "tag", "-T", "b@d", 42, token=tokens["bob"]))
    assert "may not do this (targets.publish)" in one_sentence_error(cli("targets", "tag", "-T", "x", 42, token=tokens["dave"]))
    assert "CI build 99 does not exist" in one_sentence_error(cli("targets", "tag", "-T", "x", 42, 99, token=tokens["bob"]))
    assert cli("targets", "tag", "-T", "x", "--by-version", "not-a-number", token=tokens["bob"]).code == 2
    assert cli("targets", "tag", 42, token=tokens["bob"]).code == 2  # --tags is required
    assert CiTarget.objects.get(name=f"{HWID}-lmp-42").tags == ["beta", TAG, "qa"]
    assert AuditEntry.objects.filter(action="targets.tag").count() == 2


def test_waves_show_devices_prints_each_rollouts_devices_paged(cli, factory, tokens, fleet, keys_file):
    assert cli("waves", "init", "-k", keys_file, "v2", 42, TAG, token=tokens["bob"]).code == 0
    assert cli("waves", "rollout", "v2", "--group", "beta", "--limit", 3, token=tokens["bob"]).code == 0
    assert cli("waves", "rollout", "v2", "canary", token=tokens["bob"]).code == 0
    limited, full = Rollout.objects.filter(wave__name="v2").order_by("id")
    staged = {str(s.device.uuid): s.device for s in limited.staged_devices.select_related("device")}

    shown = cli("waves", "show", "v2", "--devices", token=tokens["dave"])
    assert shown.code == 0, shown.err
    assert f"Rollout {limited.id}: 3 devices" in shown.out and f"Rollout {full.id}: 5 devices" in shown.out
    for uuid, device in staged.items():
        assert any(uuid in line and device.name in line and "beta" in line for line in shown.out.splitlines())

    page = cli("waves", "show", "v2", "--devices", "--rollout", full.id, "-n", 2, token=tokens["dave"])
    assert page.code == 0 and f"Rollout {limited.id}:" not in page.out
    assert "Page 1 of 3; next page: --page 2" in page.out
    rows = [line for line in page.out.splitlines() if line.endswith("  canary")]
    assert len(rows) == 2
    last = cli("waves", "show", "v2", "--devices", "--rollout", full.id, "-n", 2, "-p", 3, token=tokens["dave"])
    assert len([line for line in last.out.splitlines() if line.endswith("  canary")]) == 1 and "next page" not in last.out

    assert "has no rollout 999" in one_sentence_error(cli("waves", "show", "v2", "--devices", "--rollout", 999, token=tokens["dave"]), code=2)
    assert cli("waves", "show", "v2", "--rollout", full.id, token=tokens["dave"]).code == 2
    assert cli("waves", "show", "v2", "--devices", "-n", 1001, token=tokens["dave"]).code == 2
