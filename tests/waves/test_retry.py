"""Retrying failed devices: a wave offered again to the devices that reported a failure, by hand
or by a plan phase's `retry_failed`; the failure no longer counts and the devices see new
metadata (python-tuf), whose versions never go down."""
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from devices.models import Device
from factory.builds import build_mark_bad
from factory.errors import ApplicationError, Conflict, Forbidden
from factory.models import AuditEntry
from tests.factory.test_views import login
from tests.factory.test_tuf_waves import archive, fleet, make_wave  # noqa: F401  (fixtures)
from waves.models import PlanDecision, Wave, WaveRetry
from waves.plans.gates import phase_evidence
from waves.plans.selectors import plan_get, plan_phases
from waves.plans.services import plan_evaluate, plan_set, plan_start
from waves.retries import device_retry_offer, wave_retry_failed, with_retry_offer
from waves.status_table import wave_status
from waves.services import wave_complete, wave_rollout

from .plan_devices import Fleet
from .test_plans_rollback import never_down, production


@pytest.fixture
def wave(factory, bob, archive, fleet):
    wave_complete(wave=make_wave(factory, bob, archive, "v41", 41), actor=bob)
    return make_wave(factory, bob, archive, "v42", 42)


def fail(factory, wave, clients, names, at):
    """The devices install 42 (python-tuf) and report: those in `names` fail their health check."""
    devices = Fleet(factory, wave)
    for name, client in clients.items():
        assert client.update() == 42
        devices.update([client.device], at, fail_rate=1.0 if name in names else 0.0)


def test_a_retry_sets_the_failure_aside_and_offers_new_metadata(factory, bob, archive, fleet, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    clients = production(fleet)
    canaries = {n: clients[n] for n in ("prod-0", "prod-1")}
    t0 = timezone.now()
    fail(factory, wave, canaries, {"prod-0"}, t0)
    assert wave_status(wave=wave)["totals"]["failed"] == 1
    before = clients["prod-0"].versions()

    preview = wave_retry_failed(wave=wave, actor=bob, dry_run=True)
    assert [d["name"] for d in preview.devices] == ["prod-0"] and not WaveRetry.objects.exists()
    result = wave_retry_failed(wave=wave, actor=bob)
    assert result.message == "1 failed device offered wave v42 again"
    wave.refresh_from_db()
    retry = WaveRetry.objects.get(wave=wave)
    assert (retry.device.name, retry.count, retry.retried_by) == ("prod-0", 1, bob)
    assert AuditEntry.objects.filter(action="wave.retry", target="v42", actor=bob, details__devices=1).exists()
    # The failure is set aside on every reading of the wave: it is installing again.
    assert wave_status(wave=wave)["totals"]["failed"] == 0
    assert device_retry_offer(with_retry_offer(Device.objects).get(pk=clients["prod-0"].device.pk))["wave"] == "v42"
    # New snapshot and timestamp, same targets: the device notices, nothing goes down.
    clients["prod-0"].refresh()
    after = clients["prod-0"].versions()
    assert after["timestamp"] > before["timestamp"] and after["snapshot"] > before["snapshot"]
    assert after["targets"] == before["targets"]
    for client in clients.values():
        client.refresh()
        never_down(client)

    # A second failure counts again; a second retry counts twice.
    Fleet(factory, wave).update([clients["prod-0"].device], timezone.now(), fail_rate=1.0)
    assert wave_status(wave=wave)["totals"]["failed"] == 1
    wave_retry_failed(wave=wave, actor=bob)
    assert WaveRetry.objects.get(wave=wave).count == 2


def test_only_failed_devices_can_be_retried_and_nothing_changes_otherwise(factory, bob, archive, fleet, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    clients = production(fleet)
    fail(factory, wave, {n: clients[n] for n in ("prod-0", "prod-1")}, {"prod-0"}, timezone.now())
    ok = str(clients["prod-1"].device.uuid)
    with pytest.raises(ApplicationError, match=f"Not a device that failed wave v42: {ok}"):
        wave_retry_failed(wave=wave, actor=bob, uuids=[str(clients["prod-0"].device.uuid), ok])
    with pytest.raises(ApplicationError, match="not a valid UUID|malformed|UUID"):
        wave_retry_failed(wave=wave, actor=bob, uuids="not-a-uuid")
    assert not WaveRetry.objects.exists() and not AuditEntry.objects.filter(action="wave.retry").exists()
    assert Wave.objects.get(pk=wave.pk).retried_at is None
    # The exact list works.
    assert wave_retry_failed(wave=wave, actor=bob, uuids=str(clients["prod-0"].device.uuid)).count == 1
    with pytest.raises(ApplicationError, match="Nothing to retry in wave v42: no device has failed it") as error:
        wave_retry_failed(wave=wave, actor=bob)
    assert error.value.code == "retry_empty"


@pytest.mark.parametrize("user", ["carol", "dave", "eve"])
def test_only_release_managers_retry(factory, bob, archive, fleet, wave, user, request):
    wave_rollout(wave=wave, actor=bob, group="canary")
    clients = production(fleet)
    fail(factory, wave, {"prod-0": clients["prod-0"]}, {"prod-0"}, timezone.now())
    with pytest.raises(Forbidden):
        wave_retry_failed(wave=wave, actor=request.getfixturevalue(user))
    assert not WaveRetry.objects.exists()


def test_a_bad_build_or_an_ended_wave_is_not_retried(factory, bob, archive, fleet, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    clients = production(fleet)
    fail(factory, wave, {"prod-0": clients["prod-0"]}, {"prod-0"}, timezone.now())
    build_mark_bad(factory=factory, actor=bob, version=42, reason="boot loop")
    with pytest.raises(Conflict, match="bad"):
        wave_retry_failed(wave=wave, actor=bob)
    assert not WaveRetry.objects.exists()


def test_a_plan_retries_failed_devices_before_its_failure_gate_halts(factory, bob, archive, fleet, wave):
    plan_set(wave=wave, actor=bob, phases=[{"group": "canary", "wait_minutes": 30, "max_failure_ratio": 0.0, "retry_failed": 1}, {"group": "beta"}])
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    clients = production(fleet)
    fail(factory, wave, {n: clients[n] for n in ("prod-0", "prod-1")}, {"prod-0"}, t0 + timedelta(minutes=5))

    # The first failure is retried, not halted on.
    result = plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=6))
    assert result.outcome == "wait", result.reason
    decision = PlanDecision.objects.get(plan__wave=wave, kind="retry")
    assert decision.evidence["retried"] == 1 and decision.phase.position == 1
    entry = AuditEntry.objects.get(action="wave.retry")
    assert entry.actor == bob and entry.details["by_plan"] is True
    phase = plan_phases(plan_get(wave=wave))[0]
    assert phase_evidence(phase, now=t0 + timedelta(minutes=6)).failed == 0

    # It fails again: one retry was allowed, so now the gate halts the plan.
    Fleet(factory, wave).update([clients["prod-0"].device], t0 + timedelta(minutes=10), fail_rate=1.0)
    result = plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=11))
    assert result.outcome == "halted"
    assert PlanDecision.objects.filter(plan__wave=wave, kind="retry").count() == 1
    assert WaveRetry.objects.get(wave=wave).count == 1


def test_a_retried_device_that_recovers_lets_the_plan_advance(factory, bob, archive, fleet, wave):
    plan_set(wave=wave, actor=bob, phases=[{"group": "canary", "wait_minutes": 30, "max_failure_ratio": 0.0, "retry_failed": 2}, {"group": "beta"}])
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    clients = production(fleet)
    fail(factory, wave, {n: clients[n] for n in ("prod-0", "prod-1")}, {"prod-0"}, t0 + timedelta(minutes=5))
    assert plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=6)).outcome == "wait"
    Fleet(factory, wave).update([clients["prod-0"].device], t0 + timedelta(minutes=20), fail_rate=0.0)
    assert plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=40)).outcome == "advanced"


def test_a_retry_is_the_devices_latest_activity_for_the_stuck_gate(factory, bob, archive, fleet, wave):
    plan_set(
        wave=wave,
        actor=bob,
        phases=[{"group": "canary", "wait_minutes": 120, "max_failure_ratio": 0.0, "stuck_after_minutes": 20, "retry_failed": 1}, {"group": "beta"}],
    )
    t0 = timezone.now()
    plan_start(wave=wave, actor=bob, now=t0)
    clients = production(fleet)
    fail(factory, wave, {n: clients[n] for n in ("prod-0", "prod-1")}, {"prod-0"}, t0 + timedelta(minutes=5))
    retry_at = t0 + timedelta(minutes=50)
    assert plan_evaluate(plan=plan_get(wave=wave), now=retry_at).outcome == "wait"
    phase = plan_phases(plan_get(wave=wave))[0]
    # Silent since the retry, but not for 20 minutes yet: not stuck.
    assert phase_evidence(phase, now=retry_at + timedelta(minutes=10)).stuck == 0
    assert phase_evidence(phase, now=retry_at + timedelta(minutes=30)).stuck == 1


def test_retry_failed_is_checked_like_every_phase_setting(factory, bob, archive, fleet, wave):
    for bad, message in ((11, "between 0 and 10"), ("x", "not a whole number"), (-1, "between 0 and 10")):
        with pytest.raises(ApplicationError, match=message):
            plan_set(wave=wave, actor=bob, phases=[{"group": "canary", "retry_failed": bad}])


def test_the_wave_page_offers_release_managers_to_retry_the_failed_devices(client, factory, bob, carol, archive, fleet, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    clients = production(fleet)
    fail(factory, wave, {n: clients[n] for n in ("prod-0", "prod-1")}, {"prod-0", "prod-1"}, timezone.now())
    url = reverse("wave-detail", args=[wave.name])
    assert "Retry the 2 failed devices" in login(client, bob).get(url).content.decode()
    assert "Retry the" not in login(client, carol).get(url).content.decode()
    assert client.post(reverse("wave-retry", args=[wave.name])).status_code == 403 and not WaveRetry.objects.exists()
    done = login(client, bob).post(reverse("wave-retry", args=[wave.name]), follow=True).content.decode()
    assert "2 failed devices offered wave v42 again" in done and WaveRetry.objects.count() == 2
    again = client.post(reverse("wave-retry", args=[wave.name]), follow=True).content.decode()
    assert "Nothing was retried: Nothing to retry in wave v42" in again
