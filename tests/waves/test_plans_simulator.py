"""A rollout plan against the fleet simulator: real TUF clients over mutual TLS poll a real
gateway process and report their progress; the test drives the plan's clock. Canary devices update
and the plan advances after its wait; beta devices fail their health check and the plan halts at
beta, before the fleet-wide phase rolls out."""
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.fleet import fleet_seed, take_over
from devices.models import DeviceEvent
from devices.simulator import Keystore, Simulator
from factory.tuf.services.repository import ci_build_publish
from tests.devices.conftest import gateway, gateway_process, wait_for  # noqa: F401  (fixtures)
from waves.models import PlanPhase, Rollout
from waves.plans.selectors import plan_get
from waves.plans.services import plan_evaluate, plan_set, plan_start
from waves.services import wave_init, wave_sign

TAG = "production"
HWIDS = ["intel-corei7-64", "raspberrypi4-64"]


@pytest.fixture
def fleet(gateway, factory, bob, tmp_path):  # noqa: F811
    from tests.tuf_helpers import offline_targets_key

    archive = offline_targets_key(factory=factory, actor=bob)
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    fleet_seed(factory=factory, tag=TAG, groups={"canary": 3, "beta": 4}, ungrouped=5, version=41, hardware_ids=HWIDS)
    keystore = Keystore(tmp_path / "fleet")
    sim = Simulator(
        identities=take_over(factory=factory, keystore=keystore),
        keystore=keystore,
        gateway_url=gateway.url,
        reboot_delay=0,
        threads=8,
        seed=11,
        fail_rates={"beta": 1.0},
    )
    wave = wave_sign(wave=wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag=TAG), actor=bob, key_archive=archive)
    return sim, wave


def outcomes(wave, group, success):
    return DeviceEvent.objects.filter(device__group__name=group, event_type="install-completed", target_version=wave.version, success=success).count()


def test_a_plan_with_the_simulator_advances_on_healthy_canaries_and_halts_on_failing_beta(fleet, factory, bob):
    sim, wave = fleet
    common = {"wait_minutes": 60, "min_reporting": 3, "min_success_ratio": 1.0, "max_failure_ratio": 0.25, "stuck_after_minutes": 240}
    plan_set(wave=wave, actor=bob, phases=[{"name": "canary", "group": "canary", **common}, {"name": "beta", "group": "beta", **common}, {"limit": "5", **common}])
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)

    sim.cycle()
    assert wait_for(lambda: outcomes(wave, "canary", True) == 3, timeout=15)
    assert wait_for(lambda: plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=5)).evidence.updated == 3, timeout=15)
    # every canary updated, and still the plan waits for its wait time
    result = plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=59))
    assert result.outcome == "wait" and [g.key for g in result.evidence.unmet] == ["wait"]
    assert Rollout.objects.filter(wave=wave).count() == 1
    result = plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=60))
    assert result.outcome == "advanced" and result.phase.name == "beta"

    sim.cycle()
    assert wait_for(lambda: outcomes(wave, "beta", False) == 4, timeout=15)
    result = plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=61))
    assert result.outcome == "halted" and result.phase.name == "beta"
    assert result.evidence.failed == 4 and result.evidence.staged == 4
    plan = plan_get(wave=wave)
    assert plan.status == "halted" and "Phase 2 (beta) failed its gates" in plan.halted_reason
    assert [p.status for p in PlanPhase.objects.filter(plan=plan).order_by("position")] == ["passed", "failed", "pending"]
    # the fleet-wide phase never rolled out: ungrouped devices are still on 41
    sim.cycle()
    assert Rollout.objects.filter(wave=wave).count() == 2
    assert not DeviceEvent.objects.filter(device__group__isnull=True, target_version=wave.version).exists()
