"""A build marked bad reaches no more devices: no new wave of it, no re-release of it, no rollout
of a wave of it (a running plan halts on its next phase), and no completing such a wave, until it
is unmarked. Dry runs say so too."""
import pytest
from django.utils import timezone

from factory.builds import build_mark_bad, build_unmark_bad
from factory.errors import Conflict
from factory.models import AuditEntry
from waves.models import PlanDecision, Rollout, RolloutPlan, Wave, WaveDevice
from waves.plans.selectors import plan_get
from waves.plans.services import plan_evaluate, plan_set, plan_start
from waves.services import wave_complete, wave_init, wave_revert, wave_rollout, wave_sign

from .conftest import TAG, make_wave
from .plan_devices import Fleet
from .test_plans import canary_beta_fleet, minutes

pytestmark = pytest.mark.django_db


def refusal(version, reason="boot loop", by="bob"):
    return f"Build {version} is marked bad ({reason}, by {by} on {timezone.now():%Y-%m-%d}): unmark it first"


def test_a_bad_build_gets_no_new_wave_not_even_a_dry_run_until_unmarked(factory, bob, builds, offline_key):
    build_mark_bad(factory=factory, actor=bob, version=42, reason="boot loop")
    for dry_run in (True, False):
        with pytest.raises(Conflict) as refused:
            wave_init(factory=factory, actor=bob, name="v42", version=42, tag=TAG, dry_run=dry_run)
        assert refused.value.message == refusal(42)
    assert not Wave.objects.exists() and not AuditEntry.objects.filter(action="wave.init").exists()
    # on any tag
    with pytest.raises(Conflict, match="Build 42 is marked bad"):
        wave_init(factory=factory, actor=bob, name="v42-other", version=42, tag="other", source_tag=TAG)

    build_unmark_bad(factory=factory, actor=bob, version=42, reason="false alarm")
    assert wave_init(factory=factory, actor=bob, name="v42", version=42, tag=TAG).version == 42


def test_a_bad_build_is_not_reverted_to(factory, bob, builds, offline_key):
    wave_complete(wave=make_wave(factory, bob, offline_key, name="v41", version=41), actor=bob)
    wave_complete(wave=make_wave(factory, bob, offline_key, name="v42", version=42), actor=bob)
    build_mark_bad(factory=factory, actor=bob, version=41, reason="boot loop")
    for dry_run in (True, False):
        with pytest.raises(Conflict) as refused:
            wave_revert(factory=factory, actor=bob, name="back-to-41", tag=TAG, to_version=41, dry_run=dry_run)
        assert refused.value.message == refusal(41)
    assert not Wave.objects.filter(name="back-to-41").exists()
    # another, good build is fine
    assert wave_revert(factory=factory, actor=bob, name="back-to-40", tag=TAG, to_version=40).rerelease_of == 40


def test_no_rollout_of_a_wave_whose_build_is_bad_not_even_a_preview(factory, bob, carol, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    build_mark_bad(factory=factory, actor=bob, version=42, reason="boot loop")
    staged = WaveDevice.objects.filter(wave=wave).count()
    for actor, dry_run in ((bob, False), (bob, True), (carol, True)):
        with pytest.raises(Conflict) as refused:
            wave_rollout(wave=wave, actor=actor, group="beta", dry_run=dry_run)
        assert refused.value.message == refusal(42)
    assert WaveDevice.objects.filter(wave=wave).count() == staged and Rollout.objects.filter(wave=wave).count() == 1

    build_unmark_bad(factory=factory, actor=bob, version=42, reason="false alarm")
    assert wave_rollout(wave=wave, actor=bob, group="beta").count == 20


def test_a_re_release_of_a_build_marked_bad_later_is_not_rolled_out_nor_completed(factory, bob, fleet100, offline_key):
    wave_complete(wave=make_wave(factory, bob, offline_key, name="v41", version=41), actor=bob)
    wave_complete(wave=make_wave(factory, bob, offline_key, name="v42", version=42), actor=bob)
    revert = wave_sign(wave=wave_revert(factory=factory, actor=bob, name="back-to-41", tag=TAG, to_version=41), actor=bob, key_archive=offline_key)
    build_mark_bad(factory=factory, actor=bob, version=41, reason="boot loop")
    with pytest.raises(Conflict) as refused:
        wave_rollout(wave=revert, actor=bob, group="canary")
    assert refused.value.message == refusal(41)
    with pytest.raises(Conflict, match="Build 41 is marked bad"):
        wave_complete(wave=revert, actor=bob)


def test_an_active_wave_of_a_bad_build_cannot_be_completed(factory, bob, fleet100, wave):
    build_mark_bad(factory=factory, actor=bob, version=42, reason="boot loop")
    with pytest.raises(Conflict) as refused:
        wave_complete(wave=wave, actor=bob)
    assert refused.value.message == refusal(42)
    wave.refresh_from_db()
    assert wave.status == Wave.Status.ACTIVE and not AuditEntry.objects.filter(action="wave.complete").exists()
    build_unmark_bad(factory=factory, actor=bob, version=42, reason="false alarm")
    assert wave_complete(wave=wave, actor=bob).status == Wave.Status.COMPLETE


def test_a_running_plan_halts_at_its_next_phase_with_the_reason(factory, bob, fleet100, wave):
    fleet = Fleet(factory, wave)
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet())
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    fleet.update(fleet.staged(1), minutes(t0, 5))
    fleet.checkin_all(minutes(t0, 60))
    build_mark_bad(factory=factory, actor=bob, version=42, reason="boot loop")

    result = plan_evaluate(plan=plan_get(wave=wave), now=minutes(t0, 60))
    assert result.outcome == "halted" and result.phase.position == 2
    plan = plan_get(wave=wave)
    assert plan.status == RolloutPlan.Status.HALTED
    assert plan.halted_reason == f"Phase 2 (beta) could not be rolled out: {refusal(42)}"
    assert PlanDecision.objects.get(plan=plan, kind="halt").evidence["code"] == "build_bad"
    assert Rollout.objects.filter(wave=wave).count() == 1  # beta got nothing


def test_a_plan_of_a_bad_build_does_not_start(factory, bob, fleet100, wave):
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet())
    build_mark_bad(factory=factory, actor=bob, version=42, reason="boot loop")
    with pytest.raises(Conflict, match=r"Phase 1 \(canary\) could not be rolled out: Build 42 is marked bad \(boot loop"):
        plan_start(wave=wave, actor=bob)
    assert not Rollout.objects.filter(wave=wave).exists()
