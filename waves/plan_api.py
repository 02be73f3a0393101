"""Rollout plans API: a wave's plan (show, set, start, approve, pause, resume, cancel) and plan
templates. Every endpoint calls the services in waves.plans, which check the token user's role."""
import base64
from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Router, Schema, Status
from pydantic import ConfigDict, Field

from devices.uuids import MAX_UUIDS
from factory.api_support import actor_scope, key_archive_decode, responses
from factory.errors import ApplicationError
from factory.names import api_name
from factory.schemas import FactoryName, Text

from . import selectors
from .schemas import Base64, SignatureIn
from .plans.decisions import MAX_REASON
from .plans.pacing import MAX_FACTOR, MAX_PACE
from .plans.phases import DEFAULT_WAIT_MINUTES, MAX_MINUTES, MAX_PHASES, PHASE_NAME_MAX, phase_as_input
from .plans.selectors import plan_get
from .retries import MAX_RETRIES
from .plans import forecast
from .plans import rollback as plan_rollback
from .plans import services as plan_services
from .plans import templates as plan_templates

router = Router(tags=["rollout plans"])

Ratio = Annotated[float, Field(ge=0, le=1)] | Annotated[Text, Field(max_length=10, description="e.g. '95%'")]
Minutes = Annotated[int, Field(ge=0, le=MAX_MINUTES)]
Count = Annotated[int, Field(ge=0, le=10_000_000)]
Reason = Annotated[Text, Field(max_length=MAX_REASON)]


class PhaseIn(Schema):
    """One phase: a scope (as `waves rollout` takes it) and the gates that let the plan go on."""

    model_config = ConfigDict(extra="forbid")

    name: api_name("A phase name", max_length=PHASE_NAME_MAX, required=False) | None = None
    group: Annotated[Text, Field(max_length=64)] | None = Field(None, description="Device group; alone, the whole group (now and later).")
    limit: Annotated[int, Field(ge=1, le=MAX_UUIDS)] | Annotated[Text, Field(max_length=16)] | None = Field(None, description="N devices or N%.")
    saved_list: Annotated[Text, Field(max_length=100)] | None = Field(None, description="A saved device list's name (its UUIDs when the phase rolls out).")
    uuids: list[Annotated[Text, Field(max_length=60)]] | Annotated[Text, Field(max_length=500_000)] | None = Field(None, description="Exact device UUIDs.")
    wait_minutes: Minutes | None = Field(None, description=f"Wait and watch at least this long (default {DEFAULT_WAIT_MINUTES}).")
    min_reporting: Count | None = Field(None, description="At least K devices reporting (all staged devices when fewer).")
    min_success_ratio: Ratio | None = Field(None, description="Share of the phase's devices updated, at least.")
    max_failure_ratio: Ratio | None = Field(None, description="Share failed or stuck, at most: above it the plan halts.")
    max_unhealthy: Count | None = Field(None, description="Updated devices silent for stuck_after_minutes, at most: above it the plan halts.")
    stuck_after_minutes: Annotated[int, Field(ge=1, le=MAX_MINUTES)] | None = Field(
        None, description="A staged device silent this long is stuck (failed); an updated one, unhealthy."
    )
    advance: Literal["auto", "approval"] | None = None
    approver_must_differ: bool | None = Field(None, description="Approval phases: the approver may not be the plan's author.")
    retry_failed: Annotated[int, Field(ge=0, le=MAX_RETRIES)] | None = Field(
        None, description="Offer the wave again to a device that failed, up to this many times, before its failure counts against the gates."
    )
    pace_per_minute: Annotated[int, Field(ge=1, le=MAX_PACE)] | None = Field(None, description="Stage at most this many devices a minute, in batches.")
    pace_start: Annotated[int, Field(ge=1, le=MAX_PACE)] | None = Field(None, description="Exponential pacing: the first batch.")
    pace_factor: Annotated[float, Field(gt=1, le=MAX_FACTOR)] | None = Field(None, description="Exponential pacing: each minute's batch grows by this factor.")
    pace_ceiling: Annotated[int, Field(ge=1, le=MAX_PACE)] | None = Field(None, description="Exponential pacing: the largest batch.")


WindowText = Annotated[Text, Field(max_length=200, description="e.g. 'mon-fri 02:00-05:00'")]


class WindowIn(Schema):
    model_config = ConfigDict(extra="forbid")

    days: list[Annotated[Text, Field(max_length=12)]] | Annotated[Text, Field(max_length=60)] = Field(description="e.g. ['mon', 'tue'] or 'mon-fri'.")
    start: Annotated[Text, Field(max_length=5)] = Field(description="HH:MM in the plan's time zone.")
    end: Annotated[Text, Field(max_length=5)] = Field(description="HH:MM; not after start: the window crosses midnight.")


Windows = list[WindowIn | WindowText] | WindowText


class PlanSetIn(Schema):
    model_config = ConfigDict(extra="forbid")

    phases: list[PhaseIn] | None = Field(None, max_length=MAX_PHASES)
    template: Annotated[Text, Field(max_length=100)] | None = Field(None, description="Apply this plan template instead of giving phases.")
    groups: list[Annotated[Text, Field(max_length=64)]] | None = Field(None, max_length=200, description="Groups for a per-group ({group}) template.")
    webhook_url: Annotated[Text, Field(max_length=200)] | None = Field(None, description="POSTed JSON on halts, approvals needed and the end; '' removes it.")
    windows: Windows | None = Field(None, description="Maintenance windows: phases release devices only inside them; [] removes them (unset: kept).")
    timezone: Annotated[Text, Field(max_length=64)] | None = Field(None, description="The windows' time zone, e.g. Europe/Berlin (default UTC).")
    group_windows: dict[Annotated[Text, Field(max_length=64)], Windows] | None = Field(
        None, description="A group's own windows, replacing the plan's for that group's phases; {} removes them."
    )


class ReasonIn(Schema):
    reason: Reason = ""


class ApproveIn(Schema):
    reason: Reason = Field(description="Why the phase may go on; recorded with the approver's name.")


class ForceIn(Schema):
    model_config = ConfigDict(extra="forbid")

    reason: Reason = Field(description="Why the phase moves on without what it waits for; recorded with your name.")


class SkipIn(Schema):
    model_config = ConfigDict(extra="forbid")

    reason: Reason = Field(description="Why the phase is skipped; recorded with your name.")
    phase: Annotated[int, Field(ge=1, le=MAX_PHASES)] | None = Field(None, description="The phase's position (default: the current phase).")


class GateOut(Schema):
    key: str
    label: str
    met: bool
    observed: str
    on_fail: Literal["wait", "halt"]


class EvidenceOut(Schema):
    staged: int
    updated: int
    failed: int
    stuck: int
    in_progress: int
    reporting: int
    unhealthy: int
    success_ratio: float | None
    failure_ratio: float | None
    wait_ends_at: datetime | None
    gates: list[GateOut]


class PhaseOut(Schema):
    position: int
    name: str
    label: str
    group: str
    limit: str
    saved_list: str
    uuids: list[str]
    wait_minutes: int
    min_reporting: int
    min_success_ratio: float | None
    max_failure_ratio: float | None
    max_unhealthy: int | None
    stuck_after_minutes: int | None
    advance: str
    approver_must_differ: bool
    retry_failed: int = 0
    status: str
    rollout: int | None
    started_at: datetime | None
    finished_at: datetime | None
    pace_per_minute: int | None = None
    pace_start: int | None = None
    pace_factor: float | None = None
    pace_ceiling: int | None = None
    pace: str = Field("", description="e.g. '10 a minute'; '' for a phase staged at once.")
    pace_progress: str = Field("", description="e.g. 'staged 30 of 100 at 10 a minute'.")
    staged_count: int = 0
    batches_done: bool = False
    last_batch_at: datetime | None = None
    windows: list[dict[str, Any]] = Field(default_factory=list, description="The windows that apply to this phase (its group's, else the plan's).")
    window_text: str = Field("", description="Those windows as text, e.g. 'mon-fri 02:00-05:00'; '' when the phase may release at any time.")
    window_wait: str | None = Field(
        None, description="For the current phase, when it has devices to release and its window is shut: e.g. 'waiting for the maintenance window: opens Tue 02:00 UTC'."
    )
    estimated_devices: int | None = Field(None, description="For a phase yet to start: about how many devices it would stage now.")
    evidence: EvidenceOut | None = None


class DecisionOut(Schema):
    id: int
    created_at: datetime
    kind: str
    phase: int | None
    actor: str
    reason: str
    evidence: dict[str, Any]


class ForecastPhaseOut(Schema):
    position: int
    ends_at: datetime
    starts_at: datetime | None = None
    pace: str = ""
    window_delay: bool = Field(False, description="The phase waits for a maintenance window to start.")


class ForecastOut(Schema):
    completion_at: datetime | None
    remaining_minutes: int | None
    updates_last_hour: int
    typical_update_minutes: float | None
    slow_update_minutes: float | None
    observed_updates: int
    approvals_ahead: int
    basis: str
    phases: list[ForecastPhaseOut] = []


class RollbackIn(Schema):
    """A rollback signed when the plan starts: signatures made locally over the payloads of
    `plan/rollback/prepare`, or a key archive used in memory once."""

    model_config = ConfigDict(extra="forbid")

    scope: Literal["staged", "failed"] = Field(description="On a halt, move back every device the wave staged, or only those that failed.")
    signatures: list[SignatureIn] | None = Field(None, description="Offline signatures over the prepared signing_payload.")
    aktualizr_signatures: list[SignatureIn] | None = Field(None, description="The same keys' signatures over the prepared aktualizr_signing_payload.")
    key_archive: Base64 | None = Field(None, description="A keys .tgz to sign with on the server, used in memory once. The CLI signs locally instead.")


class PlanStartIn(Schema):
    model_config = ConfigDict(extra="forbid")

    rollback: RollbackIn | None = Field(None, description="Arm a pre-signed rollback: if a failure gate halts the plan, devices move back by themselves.")


class RollbackPrepareIn(Schema):
    model_config = ConfigDict(extra="forbid")

    scope: Literal["staged", "failed"]


class RollbackDraftOut(Schema):
    name: str
    tag: str
    version: int
    build_version: int
    scope: str
    expires_at: datetime
    targets: str = Field(description="Base64 of the rollback's targets as the server will store them (online signature only).")
    signing_payload: str = Field(description="Base64 of the canonical bytes each offline key signs.")
    aktualizr_signing_payload: str = Field(description="Base64 of the aktualizr flavour's bytes the same keys sign.")


class RollbackOut(Schema):
    wave: str
    version: int
    build: int | None
    scope: str
    state: str = Field(description="armed, active (it took over on a halt), complete, or canceled (disarmed).")
    expires_at: datetime
    description: str


class PlanOut(Schema):
    wave: str
    status: str
    author: str
    rollback: RollbackOut | None = None
    webhook_url: str
    halted_reason: str
    current_phase: int | None
    created_at: datetime
    updated_at: datetime
    windows: list[dict[str, Any]]
    timezone: str
    group_windows: dict[str, list[dict[str, Any]]]
    windows_summary: str = Field(description="e.g. 'mon-fri 02:00-05:00 (Europe/Berlin)'.")
    next_opening: datetime | None = Field(None, description="When the current phase may next release devices (now when open).")
    phases: list[PhaseOut]
    decisions: list[DecisionOut]
    forecast: ForecastOut | None


class TemplateIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: api_name("A template name", max_length=plan_templates.TEMPLATE_NAME_MAX, forbidden=plan_templates.TEMPLATE_NAME_FORBIDDEN)
    phases: list[PhaseIn] | None = Field(None, max_length=MAX_PHASES, description="The phases; a group may be '{group}'.")
    wave: Annotated[Text, Field(max_length=64)] | None = Field(None, description="Save this wave's plan instead.")
    replace: bool = Field(False, description="Replace a template of the same name.")


class TemplateOut(Schema):
    name: str
    phases: list[dict[str, Any]]
    created_by: str
    created_at: datetime


def _phases_in(phases):
    return None if phases is None else [p.model_dump(exclude_none=True) for p in phases]


def _windows_in(value):
    """Windows (or a group -> windows map) as plain data for plans.windows to check."""
    if isinstance(value, dict):
        return {group: _windows_in(windows) for group, windows in value.items()}
    if isinstance(value, list):
        return [w.model_dump() if isinstance(w, Schema) else w for w in value]
    return value


def plan_out(shown):
    plan = shown["plan"]
    phases = []
    for row in shown["phases"]:
        phase, evidence = row["phase"], row["evidence"]
        data = phase_as_input(phase)
        phases.append(
            {
                **data,
                "uuids": [u for u in data["uuids"].split() if u],
                "position": phase.position,
                "label": row["label"],
                "status": phase.status,
                "rollout": phase.rollout_id,
                "started_at": phase.started_at,
                "finished_at": phase.finished_at,
                "estimated_devices": row["estimate"],
                "pace": row["pace"],
                "pace_progress": row["pace_progress"],
                "staged_count": phase.staged_count,
                "batches_done": phase.batches_done,
                "last_batch_at": phase.last_batch_at,
                "windows": row["windows"],
                "window_text": row["window_text"],
                "window_wait": row["window_wait"],
                "evidence": None if evidence is None else {**evidence.as_dict(), "wait_ends_at": evidence.wait_ends_at},
            }
        )
    current = shown["current"]
    return {
        "wave": plan.wave.name,
        "status": plan.status,
        "author": plan.author.get_username() if plan.author else "",
        "webhook_url": plan.webhook_url,
        "halted_reason": plan.halted_reason,
        "current_phase": current.position if current is not None else None,
        "created_at": plan.created_at,
        "updated_at": plan.updated_at,
        "windows": plan.windows,
        "timezone": plan.timezone,
        "group_windows": plan.group_windows,
        "windows_summary": shown["windows"],
        "next_opening": shown["next_opening"],
        "phases": phases,
        "decisions": [
            {
                "id": d.pk,
                "created_at": d.created_at,
                "kind": d.kind,
                "phase": d.phase.position if d.phase_id else None,
                "actor": d.actor.get_username() if d.actor else "system",
                "reason": d.reason,
                "evidence": d.evidence,
            }
            for d in shown["decisions"]
        ],
        "forecast": shown["forecast"],
        "rollback": plan_rollback.rollback_summary(plan),
    }


def _wave(request, name):
    factory_obj, user = actor_scope(request)
    return selectors.wave_get(factory=factory_obj, name=name), user


def _shown(wave):
    return plan_out(forecast.plan_show(plan=plan_get(wave=wave)))


@router.get("/waves/{wave}/plan", response=responses(200, PlanOut), summary="A wave's rollout plan: phases, gates, decisions, forecast")
def plan_show(request, factory: FactoryName, wave: str):
    wave_obj, _ = _wave(request, wave)
    return _shown(wave_obj)


@router.put("/waves/{wave}/plan", response=responses(200, PlanOut), summary="Set a wave's rollout plan (phases, or a template)")
def plan_set(request, factory: FactoryName, wave: str, payload: PlanSetIn):
    """Creates the plan or replaces its phases; you become its author (the scheduler rolls out as
    you). A paused or halted plan keeps the phases that have started: give them first, unchanged
    in scope."""
    wave_obj, user = _wave(request, wave)
    if (payload.phases is None) == (payload.template is None):
        raise ApplicationError("Give either phases or a template")
    windows = {"windows": _windows_in(payload.windows), "time_zone": payload.timezone, "group_windows": _windows_in(payload.group_windows)}
    if payload.template is not None:
        plan_templates.plan_template_apply(
            wave=wave_obj, actor=user, name=payload.template, groups=payload.groups, webhook_url=payload.webhook_url, **windows
        )
    else:
        if payload.groups:
            raise ApplicationError("Groups go with a template")
        plan_services.plan_set(wave=wave_obj, actor=user, phases=_phases_in(payload.phases), webhook_url=payload.webhook_url, **windows)
    return _shown(wave_obj)


@router.post("/waves/{wave}/plan/start", response=responses(200, PlanOut), summary="Start the plan: roll out its first phase now")
def plan_start(request, factory: FactoryName, wave: str, payload: PlanStartIn | None = None):
    """With `rollback`, a pre-signed rollback is armed in the same step: a signature that does not
    verify, or too few, and nothing starts."""
    wave_obj, user = _wave(request, wave)
    rollback = None
    if payload is not None and payload.rollback is not None:
        given = payload.rollback
        rollback = {
            "scope": given.scope,
            "signatures": [s.dict() for s in given.signatures] if given.signatures else None,
            "aktualizr_signatures": [s.dict() for s in given.aktualizr_signatures] if given.aktualizr_signatures else None,
            "key_archive": key_archive_decode(given.key_archive),
        }
    plan_services.plan_start(wave=wave_obj, actor=user, rollback=rollback)
    return _shown(wave_obj)


@router.post("/waves/{wave}/plan/rollback/prepare", response=responses(200, RollbackDraftOut), summary="The payloads to sign for a plan's pre-signed rollback")
def plan_rollback_prepare(request, factory: FactoryName, wave: str, payload: RollbackPrepareIn):
    """The rollback (a re-release of the tag's production build at the next number) as it would be
    signed now. Sign both payloads with the offline key locally and POST the signatures with
    `plan/start`. Changes nothing and claims no number."""
    wave_obj, user = _wave(request, wave)
    draft = plan_rollback.rollback_prepare(wave=wave_obj, actor=user, scope=payload.scope)
    encode = lambda data: base64.b64encode(bytes(data)).decode()  # noqa: E731
    return {
        "name": draft.name,
        "tag": draft.tag,
        "version": draft.version,
        "build_version": draft.build_version,
        "scope": draft.scope,
        "expires_at": draft.expires_at,
        "targets": encode(draft.targets),
        "signing_payload": encode(draft.signing_payload),
        "aktualizr_signing_payload": encode(draft.aktualizr_signing_payload),
    }


@router.post("/waves/{wave}/plan/approve", response=responses(200, PlanOut), summary="Approve the phase awaiting approval")
def plan_approve(request, factory: FactoryName, wave: str, payload: ApproveIn):
    wave_obj, user = _wave(request, wave)
    plan_services.plan_approve(wave=wave_obj, actor=user, reason=payload.reason)
    return _shown(wave_obj)


@router.post("/waves/{wave}/plan/force", response=responses(200, PlanOut), summary="Force the current phase on now")
def plan_force(request, factory: FactoryName, wave: str, payload: ForceIn):
    """A phase held by its maintenance window rolls out now; a watched phase whose wait gates are
    not met passes and the next one rolls out. Refused for a phase failing a halting gate, one
    awaiting approval, or one still releasing paced batches."""
    wave_obj, user = _wave(request, wave)
    plan_services.plan_force(wave=wave_obj, actor=user, reason=payload.reason)
    return _shown(wave_obj)


@router.post("/waves/{wave}/plan/skip", response=responses(200, PlanOut), summary="Skip a phase that has not rolled out")
def plan_skip(request, factory: FactoryName, wave: str, payload: SkipIn):
    """The phase passes without staging anything; skipping a running plan's current phase starts
    the next one now (inside its window)."""
    wave_obj, user = _wave(request, wave)
    plan_services.plan_skip(wave=wave_obj, actor=user, reason=payload.reason, position=payload.phase)
    return _shown(wave_obj)


@router.post("/waves/{wave}/plan/pause", response=responses(200, PlanOut), summary="Pause the plan: nothing advances or halts")
def plan_pause(request, factory: FactoryName, wave: str, payload: ReasonIn | None = None):
    wave_obj, user = _wave(request, wave)
    plan_services.plan_pause(wave=wave_obj, actor=user, reason=payload.reason if payload else "")
    return _shown(wave_obj)


@router.post("/waves/{wave}/plan/resume", response=responses(200, PlanOut), summary="Resume a paused or halted plan")
def plan_resume(request, factory: FactoryName, wave: str, payload: ReasonIn | None = None):
    """A halted plan needs a reason."""
    wave_obj, user = _wave(request, wave)
    plan_services.plan_resume(wave=wave_obj, actor=user, reason=payload.reason if payload else "")
    return _shown(wave_obj)


@router.post("/waves/{wave}/plan/cancel", response=responses(200, PlanOut), summary="Cancel the plan's wave and end the plan")
def plan_cancel(request, factory: FactoryName, wave: str, payload: ReasonIn | None = None):
    wave_obj, user = _wave(request, wave)
    plan_services.plan_wave_cancel(wave=wave_obj, actor=user, reason=payload.reason if payload else "")
    return _shown(wave_obj)


def _template_out(template):
    return {
        "name": template.name,
        "phases": template.phases,
        "created_by": template.created_by.get_username() if template.created_by else "",
        "created_at": template.created_at,
    }


@router.get("/plan-templates/", response=responses(200, list[TemplateOut]), summary="Plan templates")
def plan_templates_list(request, factory: FactoryName):
    factory_obj, _ = actor_scope(request)
    return [_template_out(t) for t in plan_templates.plan_template_list(factory=factory_obj)]


@router.post("/plan-templates/", response=responses(201, TemplateOut), summary="Save phases, or a wave's plan, as a template")
def plan_templates_save(request, factory: FactoryName, payload: TemplateIn):
    factory_obj, user = actor_scope(request)
    if (payload.phases is None) == (payload.wave is None):
        raise ApplicationError("Give either phases or a wave whose plan to save")
    wave_obj = selectors.wave_get(factory=factory_obj, name=payload.wave) if payload.wave else None
    template = plan_templates.plan_template_save(
        factory=factory_obj, actor=user, name=payload.name, phases=_phases_in(payload.phases), wave=wave_obj, replace=payload.replace
    )
    return Status(201, _template_out(template))


@router.get("/plan-templates/{name}", response=responses(200, TemplateOut), summary="A plan template")
def plan_templates_show(request, factory: FactoryName, name: str):
    factory_obj, _ = actor_scope(request)
    return _template_out(plan_templates.plan_template_get(factory=factory_obj, name=name))


@router.delete("/plan-templates/{name}", response=responses(204, None), summary="Delete a plan template")
def plan_templates_delete(request, factory: FactoryName, name: str):
    factory_obj, user = actor_scope(request)
    plan_templates.plan_template_delete(factory=factory_obj, actor=user, name=name)
    return Status(204, None)
