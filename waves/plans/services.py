"""Writes of rollout plans: set, start, evaluate (the scheduler), approve, force, skip, pause,
resume, cancel.

Each locks the plan's row, records its decision (plans.decisions) and rolls phases out with
`wave_rollout`, as the acting user or, for the scheduler, as the plan's author.
"""
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from factory.auth import actor_name, authorize, role_known, role_subquery
from factory.errors import ApplicationError, Conflict, Forbidden
from factory.plurals import counted, plural

from .. import armed, retries
from .. import services as wave_services
from ..models import PlanDecision, PlanPhase, RolloutPlan, SavedDeviceList, Wave
from .decisions import MAX_REASON, decision_record, webhook_on_commit, webhook_url_clean
from .gates import Evidence, phase_evidence
from .pacing import PACE_KEYS, batches_pending
from .phases import SCOPE_KEYS, phase_as_input, phase_label, phases_clean
from .rollback import rollback_arm, rollback_on_halt
from .selectors import current_phase, phase_devices, plan_get, plan_phases
from .staging import batch_next, phase_rollout, window_wait
from .windows import plan_windows_clean, window_reason

logger = logging.getLogger(__name__)

# How long the evaluator holds a plan it claimed; a worker that dies frees it after this.
CLAIM_SECONDS = 600
# After an evaluation the plan stays taken this long: less than the beat's minute.
EVALUATED_REST_SECONDS = 45

Status = RolloutPlan.Status
PhaseStatus = PlanPhase.Status


def _locked_plan(plan):
    # The author's role comes with the plan: the rollouts the plan makes as its author check it.
    locked = (
        RolloutPlan.objects.select_for_update(of=("self",))
        .select_related("wave", "wave__factory", "author")
        .annotate(author_role=role_subquery("author_id", "wave__factory_id"))
        .get(pk=plan.pk)
    )
    role_known(locked.author, locked.wave.factory_id, locked.author_role)
    return locked


def _reason(reason, *, required, what):
    reason = (reason or "").strip()
    if "\x00" in reason:
        raise ApplicationError("The reason may not contain NUL characters")
    if required and not reason:
        raise ApplicationError(f"Say why ({what}): the reason is recorded in the plan and the audit log")
    if len(reason) > MAX_REASON:
        raise ApplicationError(f"The reason may be at most {MAX_REASON} characters")
    return reason


def plan_set(*, wave, actor, phases, webhook_url=None, windows=None, time_zone=None, group_windows=None):
    """Create the wave's plan or replace its phases; the actor becomes the plan's author.

    A plan that has not started is replaced entirely. A paused or halted plan keeps the phases
    that have started: the list must begin with them, with the same scope (the current phase's
    gates may change; a passed phase may not), and replaces the phases still to come.
    Maintenance windows, their time zone and group windows change when given (None: kept).
    """
    factory = wave.factory
    authorize(user=actor, factory=factory, action="wave.manage")
    cleaned = phases_clean(phases, factory=factory)
    webhook = webhook_url_clean(webhook_url) if webhook_url is not None else None
    schedule = plan_windows_clean(factory=factory, windows=windows, time_zone=time_zone, group_windows=group_windows)
    try:
        with transaction.atomic():
            locked_wave = Wave.objects.select_for_update().get(pk=wave.pk)
            if not locked_wave.is_open:
                raise Conflict(f"Wave {wave.name} is {locked_wave.status}; it takes no rollout plan")
            plan, created = RolloutPlan.objects.get_or_create(wave=locked_wave, defaults={"author": actor})
            plan = _locked_plan(plan)
            if plan.status == Status.RUNNING:
                raise Conflict(f"The plan of wave {wave.name} is running; pause it before changing its phases")
            if plan.status in (Status.FINISHED, Status.CANCELED):
                raise Conflict(f"The plan of wave {wave.name} is {plan.status}; it cannot change")
            existing = plan_phases(plan)
            # A phase that rolled out (or was skipped) is history: its scope stays as it was.
            started = [p for p in existing if p.rollout_id is not None or p.status == PhaseStatus.PASSED]
            if started and len(cleaned) < started[-1].position:
                raise ApplicationError(f"{counted(started[-1].position, 'phase')} {plural(started[-1].position, 'has', 'have')} already started; the plan must keep {plural(started[-1].position, 'it', 'them')}")
            saved_lists = {s.name: s for s in SavedDeviceList.objects.filter(factory=factory, name__in=[p["saved_list"] for p in cleaned if p["saved_list"]])}
            by_position = {p.position: p for p in existing}
            for position, new in enumerate(cleaned, start=1):
                phase = by_position.get(position)
                if phase is None:
                    PlanPhase.objects.create(plan=plan, position=position, **_model_fields(new, saved_lists))
                    continue
                if phase in started:
                    where = f"Phase {position} ({phase.name or phase_label(phase)})"
                    old = phase_as_input(phase)
                    if any((old[k] or "") != (new[k] or "") for k in SCOPE_KEYS):
                        raise ApplicationError(f"{where} has already rolled out; its scope cannot change")
                    if phase.status == PhaseStatus.PASSED:
                        if old != new:
                            raise ApplicationError(f"{where} has passed; it cannot change")
                        continue
                else:
                    phase.status = PhaseStatus.PENDING
                    phase.rollout = phase.started_at = phase.finished_at = phase.last_batch_at = None
                    phase.staged_count, phase.batches_done = 0, False
                for key, value in _model_fields(new, saved_lists).items():
                    setattr(phase, key, value)
                phase.save()
            dropped = PlanPhase.objects.filter(plan=plan, position__gt=len(cleaned))
            # Decisions about a dropped phase stay in the plan's history.
            PlanDecision.objects.filter(phase__in=dropped).update(phase=None)
            dropped.delete()
            plan.author = actor
            fields = ["author", "updated_at"]
            if webhook is not None:
                plan.webhook_url = webhook
                fields.append("webhook_url")
            for key, value in schedule.items():
                setattr(plan, key, value)
                fields.append(key)
            plan.save(update_fields=fields)
            decision_record(
                plan,
                None,
                "set",
                actor,
                reason="created" if created else "phases replaced",
                evidence={"phases": [p["name"] or phase_label(p) for p in cleaned], "kept": len(started), "webhook": bool(plan.webhook_url)},
            )
    except IntegrityError:
        raise Conflict(f"The plan of wave {wave.name} was changed at the same time; try again") from None
    return plan


def _model_fields(phase, saved_lists):
    return {
        "name": phase["name"],
        "group_name": phase["group"],
        "limit": phase["limit"],
        "saved_list": saved_lists.get(phase["saved_list"]) if phase["saved_list"] else None,
        "uuids": phase["uuids"],
        "wait_minutes": phase["wait_minutes"],
        "min_reporting": phase["min_reporting"],
        "min_success_ratio": phase["min_success_ratio"],
        "max_failure_ratio": phase["max_failure_ratio"],
        "max_unhealthy": phase["max_unhealthy"],
        "stuck_after_minutes": phase["stuck_after_minutes"],
        "advance": phase["advance"],
        "approver_must_differ": phase["approver_must_differ"],
        "retry_failed": phase["retry_failed"],
        **{key: phase[key] for key in PACE_KEYS},
    }


def _phase_rollout(plan, phase, actor, now):
    """Roll the phase out (as `actor`) and start watching it. Raises ApplicationError if the
    rollout is refused; returns False when no device was left in its scope (phase passes)."""
    try:
        # All at once, or a paced phase's first batch (plans.staging).
        result = phase_rollout(plan, phase, actor, now)
    except ApplicationError as exc:
        if exc.code != "rollout_empty":
            raise
        phase.status = PhaseStatus.PASSED
        phase.started_at = phase.finished_at = now
        phase.save(update_fields=["status", "started_at", "finished_at"])
        decision_record(plan, phase, "skip", actor, reason="no device is left in this phase's scope: nothing to roll out or watch", evidence={"devices": 0})
        return False
    phase.rollout = result.rollout
    phase.status = PhaseStatus.WATCHING
    phase.started_at = now
    phase.finished_at = None
    phase.save(update_fields=["rollout", "status", "started_at", "finished_at"])
    decision_record(
        plan,
        phase,
        "rollout",
        actor,
        reason=result.message,
        evidence={"rollout": result.rollout.pk, "devices": result.count, "skipped": len(result.skipped), "full_group": result.full_group, "staged": phase.staged_count},
    )
    return True


def _advance(plan, phases, start_index, actor, now):
    """Start the next phase that has devices to roll out to, or finish the plan.

    Returns ("started", phase), ("waiting", phase) outside the phase's maintenance window,
    ("finished", None), or raises the rollout's ApplicationError.
    """
    for phase in phases[start_index:]:
        if phase.status == PhaseStatus.PASSED:
            continue
        if window_wait(plan, phase, now):
            return "waiting", phase
        if _phase_rollout(plan, phase, actor, now):
            return "started", phase
    plan.status = Status.FINISHED
    plan.save(update_fields=["status", "updated_at"])
    # The plan is over: its pre-signed rollback must never activate later.
    armed.rollback_disarm(wave=plan.wave, actor=actor, reason="the plan finished")
    decision_record(plan, None, "finish", actor, reason=f"every phase has passed; complete wave {plan.wave.name} when you are ready", evidence={"status": plan.status})
    webhook_on_commit(plan, "plan.finished", {"reason": "every phase has passed"})
    return "finished", None


def _halt(plan, phase, reason, evidence, now, actor=None, *, failure_gate=False):
    """Halt the plan. A halt on a failure gate activates the plan's armed rollback, if any
    (plans.rollback); any other halt (a refused rollout) stays a halt."""
    plan.status = Status.HALTED
    plan.halted_reason = reason[:MAX_REASON]
    plan.save(update_fields=["status", "halted_reason", "updated_at"])
    if phase is not None:
        phase.status = PhaseStatus.FAILED
        phase.finished_at = now
        phase.save(update_fields=["status", "finished_at"])
    decision_record(plan, phase, "halt", actor, reason=reason, evidence=evidence)
    webhook_on_commit(
        plan,
        "plan.halted",
        {
            "reason": reason,
            "phase": None if phase is None else {"position": phase.position, "name": phase.name or phase_label(phase)},
            "evidence": evidence,
        },
    )
    if failure_gate:
        rolled_back = rollback_on_halt(plan, phase, now)
        if rolled_back:
            plan.halted_reason = f"{reason}; {rolled_back}"[:MAX_REASON]
            plan.save(update_fields=["halted_reason", "updated_at"])


def _halt_message(phase, evidence):
    gates = "; ".join(f"{g.label}: {g.observed}" for g in evidence.halting)
    return f"Phase {phase.position} ({phase.name or phase_label(phase)}) failed its gates: {gates}"


def _rollout_refused_message(phase, exc):
    return f"Phase {phase.position} ({phase.name or phase_label(phase)}) could not be rolled out: {exc.message}"


def plan_start(*, wave, actor, now=None, rollback=None):
    """Start a drafted plan: roll out its first phase now, as `actor`, and watch it.

    `rollback` ({scope, signatures, aktualizr_signatures} or {scope, key_archive}) arms a
    pre-signed rollback in the same transaction (plans.rollback): if it is refused, nothing starts.
    """
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    now = now or timezone.now()
    plan = plan_get(wave=wave)
    with transaction.atomic():
        plan = _locked_plan(plan)
        if plan.status != Status.DRAFT:
            raise Conflict(f"The plan of wave {wave.name} is {plan.status}; only a draft plan can start")
        if plan.wave.status != Wave.Status.ACTIVE:
            raise Conflict(f"Wave {wave.name} is {plan.wave.status}; sign it (it must be active) before starting its plan")
        phases = plan_phases(plan)
        if not phases:
            raise ApplicationError(f"The plan of wave {wave.name} has no phases")
        if rollback:
            rollback_arm(
                plan=plan,
                actor=actor,
                scope=rollback.get("scope"),
                signatures=rollback.get("signatures"),
                aktualizr_signatures=rollback.get("aktualizr_signatures"),
                key_archive=rollback.get("key_archive"),
            )
        plan.status = Status.RUNNING
        plan.halted_reason = ""
        plan.save(update_fields=["status", "halted_reason", "updated_at"])
        decision_record(plan, None, "start", actor, reason=counted(len(phases), "phase"), evidence={"status": plan.status})
        try:
            _advance(plan, phases, 0, actor, now)
        except ApplicationError as exc:
            # The person starting the plan is right here: refuse, and change nothing.
            failed = current_phase(phases) or phases[0]
            raise type(exc)(_rollout_refused_message(failed, exc), code=exc.code, extra=exc.extra) from None
    return plan


@dataclass
class Evaluation:
    plan: RolloutPlan
    outcome: str  # idle, wait, batch, advanced, awaiting-approval, halted, finished, canceled
    phase: PlanPhase | None = None
    reason: str = ""
    evidence: Evidence | None = None


def plan_evaluate(*, plan, now=None):
    """Measure the current phase's gates and act: advance, wait, ask for approval, or halt.

    Run by the scheduler (see plan_tasks) with no user: rollouts are made as the plan's author.
    A plan that is not running is left alone.
    """
    now = now or timezone.now()
    with transaction.atomic():
        plan = _locked_plan(plan)
        wave = plan.wave
        if plan.status in (Status.FINISHED, Status.CANCELED):
            return Evaluation(plan, "idle")
        if wave.status in (Wave.Status.COMPLETE, Wave.Status.CANCELED):
            # The wave was completed or canceled by hand (even while the plan was paused or
            # halted): the plan has nothing left to do.
            ended = Status.FINISHED if wave.status == Wave.Status.COMPLETE else Status.CANCELED
            plan.status = ended
            plan.save(update_fields=["status", "updated_at"])
            reason = f"wave {wave.name} was {'completed' if ended == Status.FINISHED else 'canceled'}"
            decision_record(plan, None, "finish" if ended == Status.FINISHED else "cancel", None, reason=reason, evidence={"status": ended})
            return Evaluation(plan, "finished" if ended == Status.FINISHED else "canceled", reason=reason)
        if plan.status != Status.RUNNING:
            return Evaluation(plan, "idle")
        phases = plan_phases(plan)
        phase = current_phase(phases)
        if phase is None:
            _advance(plan, phases, len(phases), None, now)
            return Evaluation(plan, "finished")
        index = phases.index(phase)
        if phase.rollout_id is None and phase.status == PhaseStatus.PENDING:
            return _evaluate_start(plan, phases, index, now)
        evidence = phase_evidence(phase, now=now, wave=wave)
        if evidence.failed and phase.retry_failed and _retry_phase(plan, phase, now, evidence):
            # The retried devices are installing again: judge the gates on what is left.
            evidence = phase_evidence(phase, now=now, wave=wave)
        if evidence.halting:
            reason = _halt_message(phase, evidence)
            _halt(plan, phase, reason, evidence.as_dict(), now, failure_gate=True)
            return Evaluation(plan, "halted", phase, reason, evidence)
        if phase.status == PhaseStatus.AWAITING_APPROVAL:
            return Evaluation(plan, "awaiting-approval", phase, evidence=evidence)
        if batches_pending(phase) and phase.status == PhaseStatus.WATCHING:
            return _evaluate_batch(plan, phase, now, evidence)
        unmet = evidence.unmet
        if unmet:
            _record_wait(plan, phase, evidence)
            return Evaluation(plan, "wait", phase, "; ".join(f"{g.label}: {g.observed}" for g in unmet), evidence)
        if phase.advance == PlanPhase.Advance.APPROVAL:
            phase.status = PhaseStatus.AWAITING_APPROVAL
            phase.save(update_fields=["status"])
            differ = f" other than {actor_name(plan.author)}" if phase.approver_must_differ else ""
            reason = f"every gate is met; waiting for a release manager{differ} to approve"
            decision_record(plan, phase, "await-approval", None, reason=reason, evidence=evidence.as_dict())
            webhook_on_commit(plan, "plan.awaiting-approval", {"reason": reason, "phase": {"position": phase.position, "name": phase.name or phase_label(phase)}})
            return Evaluation(plan, "awaiting-approval", phase, reason, evidence)
        _pass(plan, phase, None, "every gate is met", evidence, now, kind="advance")
        return _evaluate_advance(plan, phases, index + 1, now, evidence)


def _pass(plan, phase, actor, reason, evidence, now, *, kind):
    phase.status = PhaseStatus.PASSED
    phase.finished_at = now
    phase.save(update_fields=["status", "finished_at"])
    decision_record(plan, phase, kind, actor, reason=reason, evidence=evidence.as_dict() if evidence else {})


def _author(plan):
    """Who the scheduler acts as: the plan's author, who must still be allowed to roll out."""
    if plan.author is None:
        raise Forbidden("The plan's author no longer exists; set the plan again to become its author")
    if not plan.author.is_active:
        raise Forbidden(f"The plan's author {plan.author.get_username()} is disabled; set the plan again to become its author")
    return plan.author


def _retry_phase(plan, phase, now, evidence):
    """The phase's `retry_failed` option: offer the wave again, as the plan's author, to the
    phase's failed devices offered it fewer times than that. True if any device was retried."""
    try:
        result = retries.wave_retry_failed(
            wave=plan.wave, actor=_author(plan), devices=phase_devices(phase, plan.wave), max_retries=phase.retry_failed, now=now, by_plan=True
        )
    except ApplicationError as exc:
        # Nothing left to retry, or the retry is refused (a build marked bad): the gates judge.
        if exc.code != "retry_empty":
            logger.warning("plan of wave %s: retrying phase %s refused: %s", plan.wave.name, phase.position, exc.message)
        return False
    # The evaluator's wave row now reads the retry too (waves/outcomes.py checks retried_at).
    plan.wave.retried_at = result.wave.retried_at
    decision_record(
        plan,
        phase,
        "retry",
        None,
        reason=result.message,
        evidence={"failed": evidence.failed, "retried": result.count, "exhausted": result.exhausted, "retry_failed": phase.retry_failed},
    )
    webhook_on_commit(plan, "plan.retried", {"reason": result.message, "phase": {"position": phase.position, "name": phase.name or phase_label(phase)}})
    return True


def _evaluate_start(plan, phases, index, now):
    remaining = [p for p in phases[index:] if p.status != PhaseStatus.PASSED]
    try:
        outcome, started = _advance(plan, phases, index, _author(plan) if remaining else None, now)
    except ApplicationError as exc:
        failed = next(p for p in phases[index:] if p.status != PhaseStatus.PASSED)
        reason = _rollout_refused_message(failed, exc)
        _halt(plan, failed, reason, {"error": exc.message, "code": exc.code}, now)
        return Evaluation(plan, "halted", failed, reason)
    if outcome == "waiting":
        return Evaluation(plan, "wait", started, window_reason(plan, started.group_name, now))
    return Evaluation(plan, "advanced" if outcome == "started" else "finished", started)


def _evaluate_batch(plan, phase, now, evidence):
    """A paced phase whose gates hold stages its next batch, inside its window; a refused
    rollout halts the plan as a refused phase does."""
    waiting = window_wait(plan, phase, now)
    if waiting:
        return Evaluation(plan, "wait", phase, waiting, evidence)
    try:
        reason = batch_next(plan, phase, _author(plan), now)
    except ApplicationError as exc:
        reason = _rollout_refused_message(phase, exc)
        _halt(plan, phase, reason, {"error": exc.message, "code": exc.code}, now)
        return Evaluation(plan, "halted", phase, reason)
    return Evaluation(plan, "batch", phase, reason, evidence)


def _evaluate_advance(plan, phases, index, now, evidence):
    result = _evaluate_start(plan, phases, index, now)
    result.evidence = result.evidence or evidence
    return result


def _record_wait(plan, phase, evidence):
    """A wait is recorded when what the phase waits for changes, not at every evaluation."""
    unmet = sorted(g.key for g in evidence.unmet)
    last = PlanDecision.objects.filter(plan=plan).order_by("-created_at", "-id").first()
    if last is not None and last.kind == "wait" and last.phase_id == phase.pk and last.evidence.get("unmet") == unmet:
        return
    decision_record(
        plan,
        phase,
        "wait",
        None,
        reason="waiting for: " + "; ".join(f"{g.label} ({g.observed})" for g in evidence.unmet),
        evidence={**evidence.as_dict(), "unmet": unmet},
    )


def plan_approve(*, wave, actor, reason, now=None):
    """Approve the phase awaiting approval: it passes and the next phase rolls out as `actor`.

    If the phase's gates no longer hold (devices failed since), the plan halts instead and the
    approval is refused.
    """
    authorize(user=actor, factory=wave.factory, action="plan.approve")
    reason = _reason(reason, required=True, what="approving a phase")
    now = now or timezone.now()
    plan = plan_get(wave=wave)
    halted = None
    with transaction.atomic():
        plan = _locked_plan(plan)
        if plan.status != Status.RUNNING:
            raise Conflict(f"The plan of wave {wave.name} is {plan.status}; only a running plan takes approvals")
        phases = plan_phases(plan)
        phase = current_phase(phases)
        if phase is None or phase.status != PhaseStatus.AWAITING_APPROVAL:
            what = "no phase" if phase is None else f"phase {phase.position} is {phase.status}"
            raise Conflict(f"Nothing to approve in the plan of wave {wave.name}: {what}")
        if phase.approver_must_differ and actor is not None and plan.author_id == actor.pk:
            raise Forbidden(
                f"Phase {phase.position} needs an approval from a release manager other than the plan's author {actor_name(plan.author)}"
            )
        evidence = phase_evidence(phase, now=now, wave=plan.wave)
        if evidence.halting:
            halted = _halt_message(phase, evidence)
            _halt(plan, phase, halted, evidence.as_dict(), now, failure_gate=True)
        else:
            _pass(plan, phase, actor, reason, evidence, now, kind="approve")
            try:
                _advance(plan, phases, phases.index(phase) + 1, actor, now)
            except ApplicationError as exc:
                failed = current_phase(phases)
                _halt(plan, failed, _rollout_refused_message(failed, exc), {"error": exc.message, "code": exc.code}, now, actor=actor)
    if halted:
        raise Conflict(f"Not approved: {halted}; the plan is halted")
    return plan


def plan_force(*, wave, actor, reason, now=None):
    """Advance by hand: the current phase moves on now although it waits for something.

    A phase waiting for its maintenance window rolls out now; a watched phase whose wait gates
    (the wait, devices reporting, the success ratio) are not met yet passes, and the next phase
    rolls out as `actor` (inside its window; outside it, the plan waits for it, or another force).
    Refused, changing nothing: a phase failing a halting gate, awaiting approval (approve it),
    or still releasing paced batches; a plan that is not running.
    """
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    reason = _reason(reason, required=True, what="forcing a phase on")
    now = now or timezone.now()
    plan = plan_get(wave=wave)
    with transaction.atomic():
        plan = _locked_plan(plan)
        if plan.status != Status.RUNNING:
            raise Conflict(f"The plan of wave {wave.name} is {plan.status}; only a running plan's phase can be forced on (resume it first)")
        phases = plan_phases(plan)
        phase = current_phase(phases)
        if phase is None:
            raise Conflict(f"Every phase of the plan of wave {wave.name} has passed: nothing to force")
        where = f"Phase {phase.position} ({phase.name or phase_label(phase)})"
        if phase.status == PhaseStatus.AWAITING_APPROVAL or (phase.rollout_id is not None and phase.advance == PlanPhase.Advance.APPROVAL):
            # The approval is its own check, which may have to come from someone else.
            raise Conflict(f"{where} advances by approval: approve it instead when it asks (breakwater waves plan approve)")
        if phase.rollout_id is None:
            # Held back by its window (or not reached yet): roll it out now, window or not.
            try:
                started = _phase_rollout(plan, phase, actor, now)
            except ApplicationError as exc:
                raise type(exc)(_rollout_refused_message(phase, exc), code=exc.code, extra=exc.extra) from None
            decision_record(plan, phase, "force", actor, reason=reason, evidence={"forced": "rollout", "window": window_reason(plan, phase.group_name, now)})
            if not started:
                _advance(plan, phases, phases.index(phase) + 1, actor, now)
            return plan
        evidence = phase_evidence(phase, now=now, wave=plan.wave)
        if evidence.halting:
            raise Conflict(f"{where} is failing its gates ({_halt_message(phase, evidence)}); it cannot be forced on")
        if batches_pending(phase):
            raise Conflict(
                f"{where} is still releasing its paced batches ({phase.staged_count:,} staged so far); "
                "to release faster, pause the plan and raise the phase's pace"
            )
        # The decision keeps the evidence: which gates were not met when it was forced on.
        _pass(plan, phase, actor, reason, evidence, now, kind="force")
        try:
            _advance(plan, phases, phases.index(phase) + 1, actor, now)
        except ApplicationError as exc:
            failed = current_phase(phases)
            raise type(exc)(_rollout_refused_message(failed, exc), code=exc.code, extra=exc.extra) from None
    return plan


def plan_skip(*, wave, actor, reason, position=None, now=None):
    """Skip a phase that has not rolled out (the current one, or the one at `position`): it
    passes without staging anything. Skipping a running plan's current phase starts the next
    one now, as `actor`, inside its window. A paused or halted plan stays so (resume it)."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    reason = _reason(reason, required=True, what="skipping a phase")
    now = now or timezone.now()
    plan = plan_get(wave=wave)
    with transaction.atomic():
        plan = _locked_plan(plan)
        if plan.status not in (Status.RUNNING, Status.PAUSED, Status.HALTED):
            raise Conflict(f"The plan of wave {wave.name} is {plan.status}; only a started plan's phases can be skipped (edit a draft instead)")
        phases = plan_phases(plan)
        current = current_phase(phases)
        if position is None:
            phase = current
            if phase is None:
                raise Conflict(f"Every phase of the plan of wave {wave.name} has passed: nothing to skip")
        else:
            phase = next((p for p in phases if p.position == position), None)
            if phase is None:
                raise ApplicationError(f"The plan of wave {wave.name} has no phase {position} (it has {len(phases)})")
        where = f"Phase {phase.position} ({phase.name or phase_label(phase)})"
        if phase.status == PhaseStatus.PASSED:
            raise Conflict(f"{where} has already passed")
        if phase.rollout_id is not None:
            raise Conflict(f"{where} has rolled out to devices; it cannot be skipped (force it on instead)")
        phase.status = PhaseStatus.PASSED
        phase.finished_at = now
        phase.save(update_fields=["status", "finished_at"])
        decision_record(plan, phase, "skip", actor, reason=reason, evidence={"skipped": phase.position})
        if phase == current and plan.status == Status.RUNNING:
            try:
                _advance(plan, phases, phases.index(phase) + 1, actor, now)
            except ApplicationError as exc:
                failed = current_phase(phases)
                raise type(exc)(_rollout_refused_message(failed, exc), code=exc.code, extra=exc.extra) from None
    return plan


def plan_pause(*, wave, actor, reason=""):
    """Stop advancing: no phase rolls out and no gate is judged until the plan resumes."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    reason = _reason(reason, required=False, what="pausing")
    plan = plan_get(wave=wave)
    with transaction.atomic():
        plan = _locked_plan(plan)
        if plan.status != Status.RUNNING:
            raise Conflict(f"The plan of wave {wave.name} is {plan.status}; only a running plan can be paused")
        plan.status = Status.PAUSED
        plan.save(update_fields=["status", "updated_at"])
        decision_record(plan, current_phase(plan_phases(plan)), "pause", actor, reason=reason, evidence={"status": plan.status})
    return plan


def plan_resume(*, wave, actor, reason=""):
    """Resume a paused or halted plan. A halted phase is watched again (its gates may have been
    changed with plan_set meanwhile); a phase whose rollout was refused is rolled out again at
    the next evaluation. Resuming a halted plan needs a reason."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    plan = plan_get(wave=wave)
    reason = _reason(reason, required=plan.status == Status.HALTED, what="resuming a halted plan")
    with transaction.atomic():
        plan = _locked_plan(plan)
        if plan.status not in (Status.PAUSED, Status.HALTED):
            raise Conflict(f"The plan of wave {wave.name} is {plan.status}; only a paused or halted plan can resume")
        if plan.wave.status != Wave.Status.ACTIVE:
            raise Conflict(f"Wave {wave.name} is {plan.wave.status}; its plan cannot resume")
        if plan.status == Status.HALTED and not reason:
            raise ApplicationError("Say why (resuming a halted plan): the reason is recorded in the plan and the audit log")
        was = plan.status
        phase = current_phase(plan_phases(plan))
        if phase is not None and phase.status == PhaseStatus.FAILED:
            phase.status = PhaseStatus.WATCHING if phase.rollout_id is not None else PhaseStatus.PENDING
            phase.finished_at = None
            phase.save(update_fields=["status", "finished_at"])
        plan.status = Status.RUNNING
        plan.halted_reason = ""
        plan.save(update_fields=["status", "halted_reason", "updated_at"])
        decision_record(plan, phase, "resume", actor, reason=reason, evidence={"status": plan.status, "was": was})
    return plan


def plan_wave_cancel(*, wave, actor, reason=""):
    """Cancel the plan's wave (see wave_cancel) and end the plan, in one transaction."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    reason = _reason(reason, required=False, what="canceling")
    plan = plan_get(wave=wave)
    with transaction.atomic():
        plan = _locked_plan(plan)
        if plan.status == Status.CANCELED:
            raise Conflict(f"The plan of wave {wave.name} is already canceled")
        wave_services.wave_cancel(wave=plan.wave, actor=actor)
        plan.wave.refresh_from_db()
        plan.status = Status.CANCELED
        plan.save(update_fields=["status", "updated_at"])
        decision_record(plan, current_phase(plan_phases(plan)), "cancel", actor, reason=reason or f"wave {wave.name} canceled", evidence={"status": plan.status})
    return plan


def plans_evaluate_due(*, now=None, claim_seconds=CLAIM_SECONDS):
    """Evaluate every running plan once. Each plan is claimed with a conditional update, so two
    workers (or a slow run overlapping the next tick) never act on the same plan twice."""
    now = now or timezone.now()
    free = Q(evaluating_until__isnull=True) | Q(evaluating_until__lt=now)
    # Running plans, and plans of any other open status whose wave was completed or canceled.
    due = Q(status=Status.RUNNING) | Q(
        status__in=(Status.DRAFT, Status.PAUSED, Status.HALTED), wave__status__in=(Wave.Status.COMPLETE, Wave.Status.CANCELED)
    )
    results = []
    for plan_id in list(RolloutPlan.objects.filter(free & due).order_by("id").values_list("id", flat=True)):
        until = now + timedelta(seconds=claim_seconds)
        # The claim filters on the plan's own row only: a join would turn it into a subquery
        # that PostgreSQL does not re-check against a concurrent claim.
        open_statuses = (Status.RUNNING, Status.DRAFT, Status.PAUSED, Status.HALTED)
        if not RolloutPlan.objects.filter(free, pk=plan_id, status__in=open_statuses).update(evaluating_until=until):
            continue
        rest = None
        try:
            results.append(plan_evaluate(plan=RolloutPlan(pk=plan_id), now=now))
            # Evaluated for this tick: a duplicate tick (a second beat, a redelivered message)
            # finds it taken; the next tick, a minute later, finds it free.
            rest = now + timedelta(seconds=EVALUATED_REST_SECONDS)
        except Exception:
            # One broken plan must not stop the others; the next tick tries it again.
            logger.exception("evaluating rollout plan %s failed", plan_id)
        finally:
            RolloutPlan.objects.filter(pk=plan_id, evaluating_until=until).update(evaluating_until=rest)
    return results
