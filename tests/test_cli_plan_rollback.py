"""`breakwater waves plan start --rollback SCOPE -k KEYS.tgz` against a live server: the rollback
is signed on this machine over the bytes the server prepared (the key never travels), armed,
shown by `plan show` and the API, and taken over on a halt; a wrong key starts nothing."""
import base64
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.fleet import fleet_load_for_benchmark
from factory.tuf.services.repository import ci_build_publish
from tests.test_cli import cli, env, fast_passwords, tokens  # noqa: F401  (fixtures)
from tests.tuf_helpers import offline_targets_key
from tests.waves.plan_devices import Fleet
from waves.models import RolloutPlan, Wave, WaveDevice
from waves.plans.selectors import plan_get
from waves.plans.services import plan_evaluate
from waves.services import wave_complete, wave_init, wave_sign

TAG = "production"
PHASE = "name=canary group=us-east limit=5 wait=60 failure=10%"


@pytest.fixture
def archive(factory, bob):
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=["intel-corei7-64"], tags=[TAG])
    fleet_load_for_benchmark(factory=factory, tag=TAG, groups={"us-east": 20}, ungrouped=5, version=41)
    return offline_targets_key(factory=factory, actor=bob)


@pytest.fixture
def wave(factory, bob, archive):
    wave_complete(wave=wave_sign(wave=wave_init(factory=factory, actor=bob, name="v41", version=41, tag=TAG), actor=bob, key_archive=archive), actor=bob)
    return wave_sign(wave=wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag=TAG), actor=bob, key_archive=archive)


def test_start_with_a_rollback_signed_locally_then_a_halt_rolls_back(cli, tokens, factory, wave, archive, env):
    bob = tokens["bob"]
    keys = env.tmp / "offline-key.tgz"
    keys.write_bytes(archive)
    assert cli("waves", "plan", "set", wave.name, "--phase", PHASE, token=bob).code == 0
    started = cli("waves", "plan", "start", wave.name, "--rollback", "staged", "-k", keys, token=bob)
    assert started.code == 0, started.err
    assert "Rollback: wave v2.0-update-rollback (version 43 = build 41 re-released), armed, moves staged devices back on a halt." in started.out
    shown = cli("waves", "plan", "show", wave.name, token=bob)
    assert "wave v2.0-update-rollback (version 43 = build 41 re-released), armed, moves staged devices back on a halt" in shown.out
    # The armed rollback is a wave like the others on every listing, and may be filtered on.
    listed = cli("waves", "list", token=bob)
    assert listed.code == 0, listed.err
    assert any(line.split()[:1] == ["v2.0-update-rollback"] and "armed" in line for line in listed.out.splitlines())
    armed = cli("waves", "list", "--status", "armed", token=bob)
    assert armed.code == 0, armed.err
    assert "v2.0-update-rollback" in armed.out and "v2.0-update " not in armed.out
    assert cli("waves", "show", "v2.0-update-rollback", token=bob).code == 0

    fleet = Fleet(factory, wave)
    t0 = timezone.now()
    fleet.update(fleet.staged(1), t0, fail_rate=0.4)
    plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=1))
    shown = cli("waves", "plan", "show", wave.name, token=bob)
    assert "rolled back: wave v2.0-update canceled" in shown.out and "activated" in shown.out
    assert WaveDevice.objects.filter(wave__name="v2.0-update-rollback").count() == 5


def test_a_rollback_needs_its_key_and_a_wrong_key_starts_nothing(cli, tokens, factory, wave, env, other_factory, eve):
    bob = tokens["bob"]
    assert cli("waves", "plan", "set", wave.name, "--phase", PHASE, token=bob).code == 0
    alone = cli("waves", "plan", "start", wave.name, "--rollback", "staged", token=bob)
    assert alone.code == 2 and "--rollback and -k go together" in alone.err
    other = env.tmp / "other.tgz"
    other.write_bytes(offline_targets_key(factory=other_factory, actor=eve))
    wrong = cli("waves", "plan", "start", wave.name, "--rollback", "staged", "-k", other, token=bob)
    assert wrong.code == 1 and "not trusted by the production root" in wrong.err
    assert RolloutPlan.objects.get(wave=wave).status == "draft" and not Wave.objects.filter(status="armed").exists()


def test_the_api_arms_with_a_key_archive_and_refuses_other_roles(client, tokens, factory, wave, archive, bob):
    from waves.plans.services import plan_set

    plan_set(wave=wave, actor=bob, phases=[{"group": "us-east", "limit": "5", "max_failure_ratio": 0.1}])
    url = f"/api/v1/factories/{factory.name}/waves/{wave.name}/plan/start"
    body = {"rollback": {"scope": "failed", "key_archive": base64.b64encode(archive).decode()}}
    denied = client.post(url, body, content_type="application/json", HTTP_AUTHORIZATION=f"Token {tokens['carol']}")
    assert denied.status_code == 403
    assert RolloutPlan.objects.get(wave=wave).status == "draft" and not Wave.objects.filter(status="armed").exists()
    bad = client.post(url, {"rollback": {"scope": "failed", "key_archive": "!!"}}, content_type="application/json", HTTP_AUTHORIZATION=f"Token {tokens['bob']}")
    assert bad.status_code == 400 and not Wave.objects.filter(status="armed").exists()
    ok = client.post(url, body, content_type="application/json", HTTP_AUTHORIZATION=f"Token {tokens['bob']}")
    assert ok.status_code == 200, ok.content
    rollback = ok.json()["rollback"]
    assert (rollback["wave"], rollback["version"], rollback["build"], rollback["scope"], rollback["state"]) == ("v2.0-update-rollback", 43, 41, "failed", "armed")
    assert client.get(url.removesuffix("/start"), HTTP_AUTHORIZATION=f"Token {tokens['dave']}").json()["rollback"]["state"] == "armed"
