"""A plan's pre-signed rollback, as devices' TUF clients see it (python-tuf's ngclient on every
device): signed when the plan starts, armed until a failure gate halts the plan, then the staged
(or the failed) devices move up to the earlier build's content at a higher version; without one,
a halt changes nothing devices see. Transactions really commit (the views' caches run on commit)."""
from datetime import timedelta

import pytest
from django.utils import timezone
from tuf.api.metadata import Metadata

from factory.errors import ApplicationError, Conflict, Forbidden
from factory.models import AuditEntry, RereleaseVersion
from factory.tuf.services import wave_targets
from tests.factory.test_tuf_waves import TAG, archive, fleet, make_wave  # noqa: F401  (fixtures)
from waves import served_views
from waves.models import PlanDecision, RolloutPlan, Wave, WaveDevice, WaveGroup
from waves.plans import rollback as plan_rollback
from waves.plans.selectors import plan_get
from waves.plans.services import plan_evaluate, plan_set, plan_start
from waves.services import wave_cancel, wave_complete

from .plan_devices import Fleet, webhook  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db(transaction=True)

PHASES = [{"name": "canary", "group": "canary", "wait_minutes": 30, "max_failure_ratio": 0.0}, {"name": "beta", "group": "beta"}]


def never_down(client):
    for role in ("timestamp", "snapshot", "targets"):
        seen = [h[role] for h in client.history if h[role] is not None]
        assert seen == sorted(seen), (client.device.name, role, seen)


def production(fleet):
    return {c.device.name: c for c in fleet.values() if c.device.is_production}


@pytest.fixture
def bad_wave(factory, bob, archive, fleet):
    """Build 41 is in production (every production device runs it); wave 42, the bad build, has a plan."""
    wave_complete(wave=make_wave(factory, bob, archive, "v41", 41), actor=bob)
    assert all(c.update() == 41 for c in production(fleet).values())
    wave = make_wave(factory, bob, archive, "v42", 42)
    plan_set(wave=wave, actor=bob, phases=PHASES)
    return wave


def served_targets(fleet):
    return {name: served_views.device_metadata(device=c.device, filename="targets.json")[0] for name, c in production(fleet).items()}


def halt_on_canary(factory, wave, fleet, t0, fail=("prod-0",)):
    """The canary devices install 42 (python-tuf), then report: those in `fail` fail their health check."""
    clients = production(fleet)
    assert clients["prod-0"].update() == 42 and clients["prod-1"].update() == 42
    devices = Fleet(factory, wave)
    for name in ("prod-0", "prod-1"):
        devices.update([clients[name].device], t0 + timedelta(minutes=5), fail_rate=1.0 if name in fail else 0.0)
    return plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=6))


def test_a_failure_gate_rolls_the_staged_devices_back_to_the_production_build(factory, bob, archive, fleet, bad_wave):
    t0 = timezone.now()
    plan = plan_start(wave=bad_wave, actor=bob, now=t0, rollback={"scope": "staged", "key_archive": archive})
    rollback = plan.rollback_wave
    # CI published up to 44: the rollback re-releases 41 as 45, above the wave's 42.
    assert (rollback.status, rollback.version, rollback.rerelease_of, rollback.name) == ("armed", 45, 41, "v42-rollback")
    assert Metadata.from_bytes(bytes(rollback.targets)).signed.version == 45 > 42
    assert plan_rollback.rollback_description(plan) == "wave v42-rollback (version 45 = build 41 re-released), armed, moves staged devices back on a halt"
    assert AuditEntry.objects.filter(action="wave.arm", target="v42-rollback", actor=bob).exists()
    # Armed is not served: nobody but the staged canaries sees anything new.
    clients = production(fleet)
    assert all(clients[n].update() == 41 for n in ("prod-2", "prod-3", "prod-4", "prod-5"))

    result = halt_on_canary(factory, bad_wave, fleet, t0)
    assert result.outcome == "halted"
    bad_wave.refresh_from_db()
    rollback.refresh_from_db()
    assert bad_wave.status == Wave.Status.CANCELED and rollback.status == Wave.Status.ACTIVE
    # The canary phase was a full-group rollout: the rollback's is too.
    assert list(WaveGroup.objects.filter(wave=rollback).values_list("group__name", flat=True)) == ["canary"]
    decision = PlanDecision.objects.get(plan__wave=bad_wave, kind="rollback")
    assert decision.evidence["devices"] == 2 and decision.evidence["scope"] == "staged" and decision.evidence["author"] == "bob"
    entry = AuditEntry.objects.get(action="wave.rollback", target="v42-rollback")
    assert entry.actor is None and entry.details["author"] == "bob"
    assert "rolled back" in RolloutPlan.objects.get(wave=bad_wave).halted_reason

    # Both canaries (the one that failed and the one that ran 42) move up to 45: build 41's content.
    assert clients["prod-0"].update() == 45 and clients["prod-1"].update() == 45
    files = Metadata.from_bytes(served_views.device_metadata(device=clients["prod-0"].device, filename="targets.json")[0]).signed.targets
    for hwid in ("intel-corei7-64", "raspberrypi4-64"):
        assert files[f"{hwid}-lmp-45"].hashes == files[f"{hwid}-lmp-41"].hashes
    assert all(clients[n].update() == 41 for n in ("prod-2", "prod-3", "prod-4", "prod-5"))
    wave_complete(wave=rollback, actor=bob)
    assert all(c.update() == 45 for c in clients.values())
    for client in clients.values():
        never_down(client)


def test_an_approval_that_finds_a_failure_rolls_back_and_announces_it(factory, bob, alice, archive, fleet, bad_wave, webhook):
    from waves.plans.services import plan_approve

    plan_set(wave=bad_wave, actor=bob, phases=[{**PHASES[0], "wait_minutes": 0, "advance": "approval"}, PHASES[1]], webhook_url=webhook.url)
    t0 = timezone.now()
    plan_start(wave=bad_wave, actor=bob, now=t0, rollback={"scope": "staged", "key_archive": archive})
    clients = production(fleet)
    assert clients["prod-0"].update() == 42 and clients["prod-1"].update() == 42
    devices = Fleet(factory, bad_wave)
    devices.start_download([clients["prod-0"].device], t0 + timedelta(minutes=1))
    devices.update([clients["prod-1"].device], t0 + timedelta(minutes=1))
    assert plan_evaluate(plan=plan_get(wave=bad_wave), now=t0 + timedelta(minutes=2)).outcome == "awaiting-approval"
    # prod-0 fails after all (its health check, once it rebooted): the approval halts the plan.
    devices.update([clients["prod-0"].device], t0 + timedelta(minutes=3), fail_rate=1.0)
    with pytest.raises(ApplicationError, match="Not approved"):
        plan_approve(wave=bad_wave, actor=alice, reason="looks fine", now=t0 + timedelta(minutes=4))
    assert Wave.objects.get(name="v42-rollback").status == Wave.Status.ACTIVE
    assert clients["prod-0"].update() == 45 and clients["prod-1"].update() == 45
    import time

    for _ in range(50):
        if any(c["event"] == "plan.rolled-back" for c in webhook.calls):
            break
        time.sleep(0.1)
    rolled = next(c for c in webhook.calls if c["event"] == "plan.rolled-back")
    assert rolled["rollback"]["wave"] == "v42-rollback" and rolled["rollback"]["devices"] == 2


def test_a_plan_that_finishes_disarms_its_rollback(factory, bob, archive, fleet, bad_wave):
    plan_set(wave=bad_wave, actor=bob, phases=[{"group": "canary", "wait_minutes": 0}])
    t0 = timezone.now()
    plan_start(wave=bad_wave, actor=bob, now=t0, rollback={"scope": "staged", "key_archive": archive})
    assert plan_evaluate(plan=plan_get(wave=bad_wave), now=t0 + timedelta(minutes=1)).outcome == "finished"
    assert Wave.objects.get(name="v42-rollback").status == Wave.Status.CANCELED
    assert AuditEntry.objects.filter(action="wave.disarm", details__reason="the plan finished").exists()


def test_scope_failed_moves_only_the_devices_that_failed(factory, bob, archive, fleet, bad_wave):
    t0 = timezone.now()
    # Signed the CLI's way: over the payloads the server prepared, the key never sent.
    draft = plan_rollback.rollback_prepare(wave=bad_wave, actor=bob, scope="failed")
    tuf, aktualizr = wave_targets.key_archive_signatures_both(targets_bytes=draft.targets, archive_bytes=archive)
    assert not RereleaseVersion.objects.exists() and not Wave.objects.filter(status="armed").exists()
    plan_start(wave=bad_wave, actor=bob, now=t0, rollback={"scope": "failed", "signatures": tuf, "aktualizr_signatures": aktualizr})
    assert halt_on_canary(factory, bad_wave, fleet, t0).outcome == "halted"
    rollback = Wave.objects.get(name="v42-rollback")
    assert rollback.status == Wave.Status.ACTIVE and draft.version == rollback.version
    assert list(WaveDevice.objects.filter(wave=rollback).values_list("device__name", flat=True)) == ["prod-0"]
    assert not WaveGroup.objects.filter(wave=rollback).exists()
    clients = production(fleet)
    assert clients["prod-0"].update() == 45
    # prod-1 runs 42 and is held (TUF forbids the lower production targets): it stays.
    assert clients["prod-1"].update() == 42
    for client in clients.values():
        never_down(client)


def test_without_a_rollback_a_halt_changes_nothing_devices_see(factory, bob, archive, fleet, bad_wave):
    t0 = timezone.now()
    plan_start(wave=bad_wave, actor=bob, now=t0)
    clients = production(fleet)
    assert clients["prod-0"].update() == 42 and clients["prod-1"].update() == 42
    before = served_targets(fleet)
    Fleet(factory, bad_wave).update([clients["prod-0"].device], t0 + timedelta(minutes=5), fail_rate=1.0)
    assert plan_evaluate(plan=plan_get(wave=bad_wave), now=t0 + timedelta(minutes=6)).outcome == "halted"
    assert served_targets(fleet) == before
    bad_wave.refresh_from_db()
    assert bad_wave.status == Wave.Status.ACTIVE and not PlanDecision.objects.filter(kind="rollback").exists()
    assert [c.update() for c in clients.values()] == [42, 42, 41, 41, 41, 41]


def test_an_expired_rollback_is_not_activated(factory, bob, archive, fleet, bad_wave):
    t0 = timezone.now()
    plan_start(wave=bad_wave, actor=bob, now=t0, rollback={"scope": "staged", "key_archive": archive})
    clients = production(fleet)
    assert clients["prod-0"].update() == 42
    Fleet(factory, bad_wave).update([clients["prod-0"].device], t0 + timedelta(minutes=5), fail_rate=1.0)
    later = bad_wave.expires_at + timedelta(days=1)
    plan_evaluate(plan=plan_get(wave=bad_wave), now=later)
    assert Wave.objects.get(name="v42-rollback").status == Wave.Status.CANCELED
    assert Wave.objects.get(name="v42").status == Wave.Status.ACTIVE
    assert "expired" in RolloutPlan.objects.get(wave=bad_wave).halted_reason


@pytest.mark.parametrize(
    "rollback, error",
    [
        ({"scope": "staged", "key_archive": b"not an archive"}, "pre-signed rollback was refused"),
        ({"scope": "staged", "signatures": [{"keyid": "ab" * 32, "sig": "00" * 64}], "aktualizr_signatures": [{"keyid": "ab" * 32, "sig": "00" * 64}]}, "pre-signed rollback was refused"),
        ({"scope": "everyone", "key_archive": b"x"}, "must be 'staged' or 'failed'"),
        ({"scope": "staged"}, "give its signatures or an offline key archive"),
    ],
)
def test_a_rollback_that_cannot_be_signed_starts_nothing(factory, bob, archive, fleet, bad_wave, rollback, error):
    served = served_targets(fleet)
    with pytest.raises(ApplicationError, match=error):
        plan_start(wave=bad_wave, actor=bob, rollback=rollback)
    plan = RolloutPlan.objects.get(wave=bad_wave)
    assert plan.status == "draft" and plan.rollback_wave is None
    assert not Wave.objects.filter(status="armed").exists() and not RereleaseVersion.objects.exists()
    assert not AuditEntry.objects.filter(action__in=("wave.arm", "plan.start")).exists()
    assert served_targets(fleet) == served


def test_signatures_over_other_bytes_are_refused(factory, bob, archive, fleet, bad_wave):
    draft = plan_rollback.rollback_prepare(wave=bad_wave, actor=bob, scope="staged")
    tuf, aktualizr = wave_targets.key_archive_signatures_both(targets_bytes=draft.targets, archive_bytes=archive)
    # CI publishes build 45 meanwhile: the rollback would now be 46, and the signatures are over 45.
    from factory.tuf.services.repository import ci_build_publish

    ci_build_publish(factory=factory, version=45, hardware_ids=["intel-corei7-64"], tags=[TAG])
    with pytest.raises(ApplicationError, match="prepare and sign it again"):
        plan_start(wave=bad_wave, actor=bob, rollback={"scope": "staged", "signatures": tuf, "aktualizr_signatures": aktualizr})
    assert RolloutPlan.objects.get(wave=bad_wave).status == "draft" and not Wave.objects.filter(status="armed").exists()


def test_an_armed_rollback_cannot_be_completed_by_hand(factory, bob, archive, fleet, bad_wave):
    plan_start(wave=bad_wave, actor=bob, rollback={"scope": "staged", "key_archive": archive})
    before = served_targets(fleet)
    with pytest.raises(Conflict, match="pre-signed rollback"):
        wave_complete(wave=Wave.objects.get(name="v42-rollback"), actor=bob)
    assert Wave.objects.get(name="v42-rollback").status == Wave.Status.ARMED
    assert served_targets(fleet) == before


@pytest.mark.parametrize("end", ["complete", "cancel"])
def test_the_rollback_is_disarmed_when_the_wave_ends(factory, bob, archive, fleet, bad_wave, end):
    plan_start(wave=bad_wave, actor=bob, rollback={"scope": "staged", "key_archive": archive})
    (wave_complete if end == "complete" else wave_cancel)(wave=bad_wave, actor=bob)
    rollback = Wave.objects.get(name="v42-rollback")
    assert rollback.status == Wave.Status.CANCELED
    assert AuditEntry.objects.filter(action="wave.disarm", target="v42-rollback", actor=bob).exists()
    assert plan_rollback.rollback_description(plan_get(wave=bad_wave)).endswith("disarmed")


@pytest.mark.parametrize("user", ["carol", "dave", "eve"])
def test_only_release_managers_start_a_plan_with_a_rollback(factory, bob, archive, fleet, bad_wave, user, request):
    actor = request.getfixturevalue(user)
    with pytest.raises(Forbidden):
        plan_start(wave=bad_wave, actor=actor, rollback={"scope": "staged", "key_archive": archive})
    with pytest.raises(Forbidden):
        plan_rollback.rollback_prepare(wave=bad_wave, actor=actor, scope="staged")
    assert RolloutPlan.objects.get(wave=bad_wave).status == "draft" and not Wave.objects.filter(status="armed").exists()


# --- the dashboard ---------------------------------------------------------------------------


def test_the_dashboard_starts_a_plan_with_a_rollback_signed_by_an_uploaded_key(client, factory, bob, carol, archive, fleet, bad_wave):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.urls import reverse

    from tests.factory.test_views import hx, login

    url = reverse("plan-action", args=[bad_wave.name, "start"])
    page = login(client, bob).get(reverse("plan-detail", args=[bad_wave.name]))
    assert b"Pre-signed rollback" in page.content and b"a halt stays a halt" in page.content
    # A scope without the key (or the key without a scope) is refused and starts nothing.
    refused = client.post(url, {"rollback_scope": "staged"}, **hx("plan-live"))
    assert refused.status_code == 400 and b"needs both a scope and the offline key archive" in refused.content
    wrong = client.post(url, {"rollback_scope": "staged", "key_archive": SimpleUploadedFile("k.tgz", b"junk")}, **hx("plan-live"))
    assert wrong.status_code == 400 and b"pre-signed rollback was refused" in wrong.content
    assert RolloutPlan.objects.get(wave=bad_wave).status == "draft" and not Wave.objects.filter(status="armed").exists()
    assert login(client, carol).post(url, {"rollback_scope": "staged", "key_archive": SimpleUploadedFile("k.tgz", archive)}).status_code == 403
    assert not Wave.objects.filter(status="armed").exists()

    started = login(client, bob).post(url, {"rollback_scope": "staged", "key_archive": SimpleUploadedFile("k.tgz", archive)}, **hx("plan-live"))
    assert started.status_code == 200 and b"Plan started" in started.content
    assert b"v42-rollback" in started.content and b"moves staged devices back on a halt" in started.content
    assert Wave.objects.get(name="v42-rollback").status == "armed"
    panel = client.get(reverse("plan-panel", args=[bad_wave.name]))
    assert b"v42-rollback" in panel.content
    rollback_page = client.get(reverse("wave-detail", args=["v42-rollback"]))
    assert rollback_page.status_code == 200 and b"armed (pre-signed rollback)" in rollback_page.content
    assert b"served only if a failure gate halts the plan" in rollback_page.content
