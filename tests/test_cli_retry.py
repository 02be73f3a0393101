"""`breakwater waves retry` and `waves plan force|skip` against a live server, and a phase's
`retry=N`: what a release manager types, what QA may preview, and the refusals."""
import json

from django.utils import timezone

from devices.models import Device
from factory.models import AuditEntry
from tests.test_cli import cli, env, fast_passwords, tokens  # noqa: F401  (fixtures)
from tests.test_cli_plan import wave  # noqa: F401  (fixture)
from tests.waves.plan_devices import Fleet
from waves.models import PlanDecision, PlanPhase, Rollout, WaveRetry
from waves.services import wave_rollout


def failing(factory, wave, bob, n=3):
    """A rollout of `n` us-west devices, which all report that the build failed to boot."""
    result = wave_rollout(wave=wave, actor=bob, group="us-west", limit=str(n))
    devices = list(Device.objects.filter(wave_stagings__rollout=result.rollout).order_by("name"))
    Fleet(factory, wave).update(devices, timezone.now(), fail_rate=1.0)
    return devices


def test_retry_from_the_cli_previews_for_qa_and_retries_for_a_release_manager(cli, tokens, factory, wave, bob):
    devices = failing(factory, wave, bob)
    preview = cli("waves", "retry", wave.name, "--dry-run", "--print-uuids", token=tokens["carol"])
    assert preview.code == 0, preview.err
    assert preview.out.split() == [str(d.uuid) for d in devices]
    assert "3 failed devices would be offered wave v2.0-update again" in preview.err
    assert not WaveRetry.objects.exists()

    refused = cli("waves", "retry", wave.name, token=tokens["carol"])
    assert refused.code != 0 and not WaveRetry.objects.exists()

    one = cli("waves", "retry", wave.name, "--uuids", str(devices[0].uuid), token=tokens["bob"])
    assert one.code == 0, one.err
    assert "1 failed device offered wave v2.0-update again." in one.out and devices[0].name in one.out
    rest = cli("waves", "retry", wave.name, "--json", token=tokens["bob"])
    assert json.loads(rest.out)["count"] == 2
    assert AuditEntry.objects.filter(action="wave.retry").count() == 2

    again = cli("waves", "retry", wave.name, token=tokens["bob"])
    assert again.code != 0 and "Nothing to retry in wave v2.0-update: no device has failed it" in again.err


def test_retry_refuses_a_device_that_did_not_fail(cli, tokens, factory, wave, bob):
    failing(factory, wave, bob)
    healthy = Device.objects.filter(factory=factory, group__name="us-east").first()
    result = cli("waves", "retry", wave.name, "--uuids", str(healthy.uuid), token=tokens["bob"])
    assert result.code != 0 and f"Not a device that failed wave v2.0-update: {healthy.uuid}" in result.err
    bad = cli("waves", "retry", wave.name, "--uuids", "not-a-uuid", token=tokens["bob"])
    assert bad.code != 0 and "not-a-uuid" in bad.err
    assert not WaveRetry.objects.exists()


def test_force_and_skip_from_the_cli(cli, tokens, factory, wave):
    phases = ["--phase", "name=canary group=us-east limit=5 wait=60 failure=10% retry=2", "--phase", "group=us-west wait=30", "--phase", "group=us-east wait=0"]
    assert cli("waves", "plan", "set", wave.name, *phases, token=tokens["bob"]).code == 0
    assert PlanPhase.objects.get(plan__wave=wave, position=1).retry_failed == 2
    shown = cli("waves", "plan", "show", wave.name, token=tokens["bob"])
    assert "retry×2" in shown.out
    assert cli("waves", "plan", "start", wave.name, token=tokens["bob"]).code == 0

    no_reason = cli("waves", "plan", "force", wave.name, token=tokens["bob"])
    assert no_reason.code != 0 and "--reason" in no_reason.err
    as_qa = cli("waves", "plan", "force", wave.name, "-r", "go", token=tokens["carol"])
    assert as_qa.code != 0 and Rollout.objects.filter(wave=wave).count() == 1

    skipped = cli("waves", "plan", "skip", wave.name, "--phase", "2", "-r", "us-west is covered by the canaries", token=tokens["bob"])
    assert skipped.code == 0, skipped.err
    forced = cli("waves", "plan", "force", wave.name, "-r", "canaries are fine, go on", token=tokens["bob"])
    assert forced.code == 0, forced.err
    assert "Forced on. Phase 3 (every device of group us-east) is rolling out." in forced.out
    assert list(PlanDecision.objects.filter(plan__wave=wave, kind__in=("force", "skip")).values_list("kind", "phase__position")) == [("skip", 2), ("force", 1)]
    decisions = cli("waves", "plan", "show", wave.name, token=tokens["dave"])
    assert "canaries are fine, go on" in decisions.out and "us-west is covered" in decisions.out

    past = cli("waves", "plan", "skip", wave.name, "--phase", "1", "-r", "x", token=tokens["bob"])
    assert past.code != 0 and "already passed" in past.err


def test_the_help_says_what_force_refuses(cli):
    result = cli("waves", "plan", "force", "--help")
    assert result.code == 0 and "halting gate" in result.out
    result = cli("waves", "retry", "--help")
    assert result.code == 0 and "@-" in result.out
