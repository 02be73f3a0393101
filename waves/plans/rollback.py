"""A plan's pre-signed rollback: signed with the offline key when the plan starts, so a halt at
3 a.m. moves devices back without anybody holding the key.

The rollback is a re-release (waves/services.wave_revert's kind of wave) of the tag's current
production build at the next number of the factory's one build sequence: above the plan's wave,
so devices' clients, which only ever move up, install it, and its TUF targets version is above
the wave's. It is signed in plan_start's transaction, by signatures the CLI made locally over the
payloads `rollback_prepare` handed out (the server re-derives the same bytes and verifies every
signature over them) or by a key archive held in memory; the key is never stored, only the
signatures inside the signed targets bytes. It waits ARMED (not served, not open) and is
activated only by a halt on a failure gate (`rollback_on_halt`); it is disarmed when the wave is
completed or canceled by hand or the plan ends (waves/armed.py).
"""
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import F, Max, OuterRef, Q, Subquery
from django.utils import timezone
from tuf.api.metadata import Targets

from devices.models import Device, DeviceEvent, DeviceGroup
from factory.auth import actor_name, authorize
from factory.errors import ApplicationError, Conflict
from factory.plurals import counted
from factory.selectors import release_version_next, rerelease_builds
from factory.services import audit_record, rerelease_version_claim
from factory.tuf import metadata as md
from factory.tuf import selectors as tuf_selectors
from factory.tuf.services import wave_targets

from .. import armed
from .. import services as wave_services
from ..models import RolloutPlan, Wave, WaveDevice, WaveGroup
from ..ostree_deltas import wave_deltas_enqueue
from ..outcomes import devices_failed, devices_silent_since
from ..selectors import tag_served_version
from .decisions import decision_record, webhook_on_commit
from .selectors import phase_devices, plan_get

SCOPES = {
    "staged": "moves staged devices back on a halt",
    "failed": "moves the devices that failed back on a halt",
}


@dataclass
class RollbackDraft:
    """What the release manager signs: the rollback's targets and their two signing payloads."""

    name: str
    tag: str
    version: int
    build_version: int
    scope: str
    expires_at: datetime
    targets: bytes
    signing_payload: bytes
    aktualizr_signing_payload: bytes


def rollback_name(wave):
    return f"{wave.name[:55]}-rollback"


def _scope(scope):
    if scope not in SCOPES:
        raise ApplicationError(f"The rollback scope {str(scope)[:20]!r} must be 'staged' or 'failed'")
    return scope


def _build_of_production(wave):
    """(targets version, build) of the tag's current production targets: the build whose content
    its devices run (a re-release's own build)."""
    current = tuf_selectors.production_targets_version(factory=wave.factory, tag=wave.tag)
    if current is None:
        raise ApplicationError(f"Tag {wave.tag} has no production build yet: there is nothing to roll back to")
    build = rerelease_builds(factory=wave.factory, versions=[current]).get(current, current)
    return current, build


def _targets(wave, *, current, version):
    # Content from the production targets' own files; the wave's expiry, so the rollback can be
    # served as long as the wave it stands behind.
    return wave_targets.rerelease_targets_build(
        factory=wave.factory, tag=wave.tag, build_version=current, version=version, expires_at=wave.expires_at, source_tag=wave.source_tag or None
    )


def _check_above(wave, version):
    """Devices never see a version go down: the rollback is above the wave and all served."""
    served = tag_served_version(factory=wave.factory, tag=wave.tag)
    highest = max(wave.version, served.version if served is not None else 0)
    if version <= highest:
        raise ApplicationError(f"The rollback's version {version} would not be above version {highest} devices on tag {wave.tag} may run")


def _plan_checks(wave, plan):
    if plan.status != RolloutPlan.Status.DRAFT:
        raise Conflict(f"The plan of wave {wave.name} is {plan.status}; a rollback is signed when a draft plan starts")
    if wave.status != Wave.Status.ACTIVE:
        raise Conflict(f"Wave {wave.name} is {wave.status}; sign it (it must be active) before starting its plan")
    if Wave.objects.filter(factory=wave.factory, name=rollback_name(wave)).exists():
        raise Conflict(f"A wave named {rollback_name(wave)} already exists; the rollback needs that name")


def rollback_prepare(*, wave, actor, scope):
    """The rollback's targets as they would be signed now, for signing on the release manager's
    machine (`breakwater waves plan start --rollback`). Changes nothing and claims no number."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    scope = _scope(scope)
    _plan_checks(wave, plan_get(wave=wave))
    current, build = _build_of_production(wave)
    version = release_version_next(factory=wave.factory)
    _check_above(wave, version)
    targets = _targets(wave, current=current, version=version)
    return RollbackDraft(
        name=rollback_name(wave),
        tag=wave.tag,
        version=version,
        build_version=build,
        scope=scope,
        expires_at=wave.expires_at,
        targets=targets,
        signing_payload=wave_targets.wave_signing_payload(targets),
        aktualizr_signing_payload=wave_targets.wave_aktualizr_signing_payload(targets),
    )


def rollback_arm(*, plan, actor, scope, signatures=None, aktualizr_signatures=None, key_archive=None):
    """Build, sign and arm the plan's rollback, in plan_start's transaction: a wrong key, a bad
    archive or signatures under the production root's threshold raise, and nothing is kept."""
    wave = plan.wave
    scope = _scope(scope)
    if not (signatures or aktualizr_signatures or key_archive):
        raise ApplicationError("Sign the rollback: give its signatures or an offline key archive")
    _plan_checks(wave, plan)
    current, build = _build_of_production(wave)
    version = rerelease_version_claim(factory=wave.factory, build_version=build)
    _check_above(wave, version)
    # Built again here from the same inputs as rollback_prepare: the signatures must verify over
    # exactly these bytes, which are the ones stored and later served.
    targets = _targets(wave, current=current, version=version)
    signatures, aktualizr_signatures = list(signatures or []), list(aktualizr_signatures or [])
    try:
        if key_archive:
            tuf, aktualizr = wave_targets.key_archive_signatures_both(targets_bytes=targets, archive_bytes=key_archive)
            signatures, aktualizr_signatures = signatures + tuf, aktualizr_signatures + aktualizr
        targets, threshold_met = wave_targets.wave_signatures_add(
            factory=wave.factory, targets_bytes=targets, signatures=signatures, aktualizr_signatures=aktualizr_signatures
        )
    except ApplicationError as exc:
        raise ApplicationError(
            f"The pre-signed rollback was refused ({exc.message}); if it was signed from a prepared payload, prepare and sign it again. "
            "The plan did not start",
            code="rollback_signatures",
        ) from None
    if not threshold_met:
        raise ApplicationError(
            "The rollback's signatures do not meet the production root's targets threshold: sign it with the offline targets key(s). "
            "The plan did not start",
            code="rollback_signatures",
        )
    rollback = Wave(
        factory=wave.factory,
        name=rollback_name(wave),
        version=version,
        rerelease_of=build,
        tag=wave.tag,
        source_tag=wave.source_tag,
        status=Wave.Status.ARMED,
        expires_at=wave.expires_at,
        targets=targets,
        created_by=actor,
    )
    try:
        with transaction.atomic():
            rollback.save()
    except IntegrityError:
        raise Conflict(f"A wave named {rollback.name} was just created; the rollback needs that name") from None
    plan.rollback_wave = rollback
    plan.rollback_scope = scope
    plan.save(update_fields=["rollback_wave", "rollback_scope", "updated_at"])
    details = {"version": version, "rerelease_of": build, "tag": wave.tag, "plan_wave": wave.name, "scope": scope,
               "keyids": sorted({s.get("keyid", "") for s in signatures if isinstance(s, dict)})}  # fmt: skip
    audit_record(factory=wave.factory, actor=actor, action="wave.arm", target=rollback.name, details=details)
    decision_record(plan, None, "arm", actor, reason=rollback_description(plan), evidence={"wave": rollback.name, "version": version, "build": build, "scope": scope})
    wave_deltas_enqueue(wave=rollback)
    return rollback


def rollback_description(plan):
    """'wave X (version 44 = build 41 re-released), armed, moves staged devices back on a halt'."""
    rollback = plan.rollback_wave
    if rollback is None:
        return ""
    state = {Wave.Status.ARMED: "armed", Wave.Status.ACTIVE: "activated", Wave.Status.COMPLETE: "activated and completed"}.get(
        rollback.status, "disarmed"
    )
    text = f"wave {rollback.name} (version {rollback.version} = build {rollback.rerelease_of} re-released), {state}"
    if rollback.status == Wave.Status.ARMED:
        text += f", {SCOPES.get(plan.rollback_scope, '')}"
    return text


def rollback_summary(plan):
    """The plan's rollback for every door: {wave, version, build, scope, state, description} or None."""
    rollback = plan.rollback_wave
    if rollback is None:
        return None
    return {
        "wave": rollback.name,
        "version": rollback.version,
        "build": rollback.rerelease_of,
        "scope": plan.rollback_scope,
        "state": rollback.status,
        "expires_at": rollback.expires_at,
        "description": rollback_description(plan),
    }


def _failed_ids(phase, wave, now):
    """The halted phase's devices that failed the wave's version or are stuck (the gates' rule,
    waves/outcomes.py and waves/plans/gates.py)."""
    devices = phase_devices(phase, wave)
    ids = set(devices_failed(devices, wave).values_list("id", flat=True))
    if phase.stuck_after_minutes is not None:
        silent_since = now - timedelta(minutes=phase.stuck_after_minutes)
        never = (phase.last_batch_at or phase.started_at or now) < silent_since
        ids.update(devices_silent_since(devices, wave, silent_since, never_reported=never).values_list("id", flat=True))
    return sorted(ids)


def _stage_groups(rollback, group_ids):
    """Full-group rollouts of the wave become full-group rollouts of the rollback: devices that
    join the group later get the rollback too."""
    staged = 0
    for group in DeviceGroup.objects.filter(pk__in=group_ids).order_by("name"):
        count = Device.objects.filter(factory_id=rollback.factory_id, is_production=True, tag=rollback.tag, group=group).count()
        rollout = wave_services._rollout_record(rollback, None, group, None, 0, True, count)
        WaveGroup.objects.create(wave=rollback, group=group, rollout=rollout)
        staged += count
    return staged


def rollback_on_halt(plan, phase, now):
    """The plan halted on a failure gate: if it holds an armed rollback, cancel its wave (devices
    already on it stay), activate the rollback and stage its devices, in the halt's transaction.
    Returns a sentence for the halt's reason, or "" when there is no armed rollback."""
    rollback = Wave.objects.select_for_update().filter(pk=plan.rollback_wave_id).first() if plan.rollback_wave_id else None
    if rollback is None or rollback.status != Wave.Status.ARMED:
        return ""
    wave = plan.wave
    targets = md.parse(bytes(rollback.targets), Targets, f"wave {rollback.name}'s targets")
    if md.is_expired(targets, now) or md.is_expired(targets, timezone.now()):
        armed.rollback_disarm(wave=wave, actor=None, reason="its signed targets expired")
        decision_record(plan, phase, "rollback", None, reason=f"the pre-signed rollback {rollback.name} expired on "
                        f"{targets.signed.expires:%Y-%m-%d}: it was not activated; the halt stays a halt",
                        evidence={"wave": rollback.name, "expired": True, "devices": 0})  # fmt: skip
        return f"the pre-signed rollback {rollback.name} expired: it was not activated"
    scope = plan.rollback_scope or "staged"
    if scope == "failed" and phase is not None:
        device_ids, group_ids = _failed_ids(phase, wave, now), []
    else:
        device_ids = list(WaveDevice.objects.filter(wave=wave).order_by("device_id").values_list("device_id", flat=True))
        group_ids = list(WaveGroup.objects.filter(wave=wave).values_list("group_id", flat=True))
    # The wave first: one open wave per tag, and the rollback's view is signed above its own.
    wave_services.wave_cancel(wave=wave, actor=None, for_rollback=True)
    rollback.status = Wave.Status.ACTIVE
    rollback.activated_at = timezone.now()
    rollback.save(update_fields=["status", "activated_at"])
    wave_targets.wave_view_publish(wave=rollback)
    count = 0
    if device_ids:
        rollout = wave_services._rollout_record(rollback, None, None, None, len(device_ids), False, len(device_ids))
        rollout.options = {**rollout.options, "rollback_of": wave.name, "scope": scope}
        rollout.save(update_fields=["options"])
        wave_services._stage(rollback, rollout, device_ids)
        count += len(device_ids)
    count += _stage_groups(rollback, group_ids)
    wave_services._views_changed(rollback)
    plan.wave.refresh_from_db()
    author = actor_name(plan.author)
    evidence = {"wave": rollback.name, "version": rollback.version, "build": rollback.rerelease_of, "scope": scope,
                "devices": count, "individual": len(device_ids), "groups": len(group_ids), "author": author}  # fmt: skip
    reason = (
        f"rolled back: wave {wave.name} canceled, rollback {rollback.name} (version {rollback.version} = build "
        f"{rollback.rerelease_of} re-released) activated for {counted(count, 'device')} "
        f"({'the staged devices' if scope == 'staged' else 'the devices that failed'}); signed when {author} started the plan"
    )
    decision_record(plan, phase, "rollback", None, reason=reason, evidence=evidence)
    audit_record(factory=wave.factory, actor=None, action="wave.rollback", target=rollback.name, details={**evidence, "plan_wave": wave.name})
    webhook_on_commit(plan, "plan.rolled-back", {"reason": reason, "rollback": evidence})
    return reason
