"""Simulated devices through the real gateway follow a plan's pre-signed rollback: python-tuf
devices and a device speaking aktualizr-lite's protocol that installed the bad build, and those
that failed it, move up to the rollback (the production build's content at a higher version)
when a failure gate halts the plan; nobody holds the key at that moment."""
from devices.models import Device
from factory.models import CiTarget
from waves.models import RolloutPlan, Wave
from waves.plans.selectors import plan_get
from waves.plans.services import plan_evaluate, plan_set, plan_start
from waves.services import wave_complete, wave_init, wave_sign

from .conftest import wait_for
from .test_aktualizr_simulator import aklite, fleet, mixed  # noqa: F401  (fixtures)
from .test_simulator import TAG, make_wave


def production_versions(factory):
    return dict(Device.objects.filter(factory=factory, is_production=True).values_list("name", "target_version"))


def evaluated(wave):
    """The plan after an evaluation (the scheduler may have evaluated it first: same outcome)."""
    plan_evaluate(plan=plan_get(wave=wave))
    return RolloutPlan.objects.get(wave=wave)


def test_both_kinds_of_device_follow_the_rollback_a_failure_gate_triggers(mixed, factory, bob, fleet):
    wave_complete(wave=wave_sign(wave=wave_init(factory=factory, actor=bob, name="v41", version=41, tag=TAG), actor=bob, key_archive=fleet), actor=bob)
    bad = make_wave(factory, bob, fleet)  # build 42
    plan_set(
        wave=bad,
        actor=bob,
        phases=[{"group": "canary", "wait_minutes": 0, "min_success_ratio": 1.0}, {"group": "beta", "wait_minutes": 0, "min_reporting": 2, "min_success_ratio": 1.0, "max_failure_ratio": 0.0}],
    )
    plan = plan_start(wave=bad, actor=bob, rollback={"scope": "staged", "key_archive": fleet})
    assert plan.rollback_wave.version == 43 and plan.rollback_wave.status == Wave.Status.ARMED

    # The canaries take the bad build (it boots for them); the plan moves on to beta, where it fails.
    mixed.cycle()
    canaries = [n for n in production_versions(factory) if n.startswith(("canary-", "akl-canary"))]
    assert len(canaries) == 3
    assert wait_for(lambda: all(production_versions(factory)[n] == 42 for n in canaries), timeout=15), production_versions(factory)
    assert wait_for(lambda: evaluated(bad).phases.get(position=2).rollout_id is not None, timeout=15)
    # Beta's success gate holds the phase while its devices are still installing (a device that
    # has only started reports in progress), so the evaluation that sees the failures halts it.
    mixed.fail_rates = {"beta": 1.0}
    mixed.cycle()
    assert wait_for(lambda: evaluated(bad).status == RolloutPlan.Status.HALTED, timeout=15)
    rollback = Wave.objects.get(name="v2.0-update-rollback")
    assert rollback.status == Wave.Status.ACTIVE and Wave.objects.get(name="v2.0-update").status == Wave.Status.CANCELED

    # Every staged device (canary on 42, beta on 41 after failing) moves up to 43; the others stay.
    mixed.cycle()
    expected = {n: (43 if n.startswith(("canary-", "beta-", "akl-canary")) else 41) for n in production_versions(factory)}
    assert wait_for(lambda: production_versions(factory) == expected, timeout=20), production_versions(factory)
    build41 = CiTarget.objects.get(factory=factory, version=41, hardware_id="intel-corei7-64").sha256
    device = aklite(mixed)["akl-canary"]
    assert device.identity.ostree_hash == build41 and device.identity.target_name == "intel-corei7-64-lmp-43"
