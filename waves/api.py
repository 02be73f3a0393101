"""Waves API: init (with the bytes to sign), sign, rollout, complete, cancel, status, list, show;
factory status; saved device lists."""
import base64
import binascii
import json
from typing import Annotated, Literal

from ninja import Router, Status
from pydantic import Field

from factory.api import actor_scope, responses
from factory.errors import ApplicationError
from factory.schemas import FactoryName, PageNumber, PerPage, Text

from . import selectors
from .schemas import (
    FactoryStatusOut,
    RolloutDevicesOut,
    RolloutIn,
    RolloutResultOut,
    RolloutSummaryOut,
    WaveInitIn,
    WaveOut,
    WavePage,
    WaveSignIn,
    WaveStatusOut,
)

router = Router(tags=["waves"])


class _Services:
    """waves.services, imported on first use so the URL configuration loads even while the TUF
    layer it depends on is unavailable (e.g. a partial checkout)."""

    def __getattr__(self, name):
        from . import services as module

        return getattr(module, name)


services = _Services()

ThresholdHours = Annotated[float, Field(gt=0, le=24 * 365, description="Hours without a check-in before a device counts as offline.")]


def _targets_json(wave):
    if not wave.targets:
        return None
    try:
        return json.loads(bytes(wave.targets))
    except ValueError:
        return None


def wave_out(wave, *, rollouts=None, targets=False):
    signed = _targets_json(wave) or {}
    payload = None
    if wave.status == wave.Status.UNSIGNED and wave.targets:
        payload = base64.b64encode(selectors.wave_signing_payload(wave)).decode()
    return {
        "name": wave.name,
        "version": wave.version,
        "tag": wave.tag,
        "source_tag": wave.source_tag,
        "status": wave.status,
        "pruned_versions": wave.pruned_versions,
        "expires_at": wave.expires_at,
        "created_at": wave.created_at,
        "created_by": wave.created_by.get_username() if wave.created_by else "",
        "activated_at": wave.activated_at,
        "finished_at": wave.finished_at,
        "finished_by": wave.finished_by.get_username() if wave.finished_by else "",
        "signing_payload": payload,
        "signed_keyids": [s.get("keyid", "") for s in signed.get("signatures", [])],
        "rollouts": rollouts or [],
        "targets": signed if targets else None,
    }


def _decode_archive(text):
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApplicationError("key_archive is not valid base64") from None


def _wave(request, name, action="view"):
    factory_obj, user = actor_scope(request, action)
    return selectors.wave_get(factory=factory_obj, name=name), user


@router.get("/waves/", response=responses(200, WavePage), summary="Waves, open ones first, newest first")
def waves_list(
    request,
    factory: FactoryName,
    status: Literal["unsigned", "active", "complete", "canceled"] | None = None,
    tag: Text | None = None,
    page: PageNumber = 1,
    per_page: Annotated[int, Field(ge=1, le=200)] = 20,
):
    factory_obj, _ = actor_scope(request)
    result = selectors.wave_list(factory=factory_obj, status=status, tag=tag, page=page, per_page=per_page)
    paginator = result.paginator
    # The paginator clamps an out-of-range page to the last one; the API answers an empty page.
    items = [wave_out(w) for w in result.object_list] if result.number == page else []
    return {
        "total": paginator.count,
        "page": page,
        "per_page": per_page,
        "next": page + 1 if page < paginator.num_pages else None,
        "items": items,
    }


@router.post("/waves/", response=responses(201, WaveOut) | {200: WaveOut}, summary="Initialize a wave from a CI build")
def waves_init(request, factory: FactoryName, payload: WaveInitIn):
    """Creates an unsigned wave and returns its `signing_payload`: sign it with your offline targets
    key and POST the signatures to `/waves/{wave}/sign`, or give `signatures` / `key_archive` here.
    With `dry_run`, nothing is created and the targets it would have are returned."""
    factory_obj, user = actor_scope(request, "wave.manage")
    archive = _decode_archive(payload.key_archive)
    wave = services.wave_init(
        factory=factory_obj,
        actor=user,
        name=payload.name,
        version=payload.version,
        tag=payload.tag,
        prune=payload.prune,
        expires_days=payload.expires_days,
        expires_at=payload.expires_at,
        source_tag=payload.source_tag,
        dry_run=payload.dry_run,
    )
    if payload.dry_run:
        return Status(200, wave_out(wave, targets=True))
    if payload.signatures or archive:
        signatures = [s.dict() for s in payload.signatures] if payload.signatures else None
        wave = services.wave_sign(wave=wave, actor=user, signatures=signatures, key_archive=archive)
    return Status(201, wave_out(wave))


def _rollouts(wave):
    return selectors.wave_show(wave=wave)["rollouts"]


@router.get("/waves/{wave}", response=responses(200, WaveOut), summary="A wave, its rollout history and optionally its targets")
def waves_show(request, factory: FactoryName, wave: str, targets: bool = False):
    wave_obj, _ = _wave(request, wave)
    return wave_out(wave_obj, rollouts=_rollouts(wave_obj), targets=targets)


@router.post("/waves/{wave}/sign", response=responses(200, WaveOut), summary="Add offline signatures to an unsigned wave")
def waves_sign(request, factory: FactoryName, wave: str, payload: WaveSignIn):
    wave_obj, user = _wave(request, wave)
    signatures = [s.dict() for s in payload.signatures] if payload.signatures else None
    wave_obj = services.wave_sign(wave=wave_obj, actor=user, signatures=signatures, key_archive=_decode_archive(payload.key_archive))
    return wave_out(wave_obj, rollouts=_rollouts(wave_obj))


@router.post("/waves/{wave}/rollout", response=responses(200, RolloutResultOut), summary="Roll a wave out (or preview it with dry_run)")
def waves_rollout(request, factory: FactoryName, wave: str, payload: RolloutIn):
    """At least one of group, limit and uuids. A group alone is a full-group rollout: devices that
    join the group later get the wave too. QA may preview (dry_run); rolling out needs a release manager."""
    wave_obj, user = _wave(request, wave)
    limit = str(payload.limit) if payload.limit is not None else None
    result = services.wave_rollout(
        wave=wave_obj, actor=user, group=payload.group, limit=limit, uuids=payload.uuids, dry_run=payload.dry_run
    )
    return {
        "message": result.message,
        "dry_run": result.dry_run,
        "count": result.count,
        "group": result.group_name,
        "full_group": result.full_group,
        "rollout": result.rollout.pk if result.rollout else None,
        "devices": [{k: d[k] for k in ("uuid", "name", "group", "target_version", "online")} for d in result.devices],
        "skipped": result.skipped,
    }


@router.get("/waves/{wave}/rollouts", response=responses(200, list[RolloutSummaryOut]), summary="A wave's rollout history")
def waves_rollouts(request, factory: FactoryName, wave: str):
    wave_obj, _ = _wave(request, wave)
    return _rollouts(wave_obj)


@router.get("/waves/{wave}/rollouts/{rollout}", response=responses(200, RolloutDevicesOut), summary="The exact devices one rollout staged")
def waves_rollout_devices(request, factory: FactoryName, wave: str, rollout: Annotated[int, Field(ge=1, le=2**63 - 1)]):
    wave_obj, _ = _wave(request, wave)
    rollout_obj = wave_obj.rollouts.filter(pk=rollout).first()
    if rollout_obj is None:
        from factory.errors import NotFound

        raise NotFound(f"wave {wave_obj.name} has no rollout {rollout}")
    return {"rollout": rollout_obj.pk, "uuids": selectors.rollout_device_uuids(rollout=rollout_obj)}


@router.post("/waves/{wave}/complete", response=responses(200, WaveOut), summary="Make the wave the tag's production targets")
def waves_complete(request, factory: FactoryName, wave: str):
    wave_obj, user = _wave(request, wave)
    wave_obj = services.wave_complete(wave=wave_obj, actor=user)
    return wave_out(wave_obj, rollouts=_rollouts(wave_obj))


@router.post("/waves/{wave}/cancel", response=responses(200, WaveOut), summary="Stop serving the wave")
def waves_cancel(request, factory: FactoryName, wave: str):
    wave_obj, user = _wave(request, wave)
    wave_obj = services.wave_cancel(wave=wave_obj, actor=user)
    return wave_out(wave_obj, rollouts=_rollouts(wave_obj))


def _versions(versions):
    return {("none" if v is None else str(v)): n for v, n in versions.items()}


@router.get("/waves/{wave}/status", response=responses(200, WaveStatusOut), summary="Per-group progress of a wave")
def waves_status(request, factory: FactoryName, wave: str, offline_threshold: ThresholdHours | None = None):
    wave_obj, _ = _wave(request, wave)
    status = selectors.wave_status(wave=wave_obj, offline_threshold_hours=offline_threshold)
    return {
        "name": wave_obj.name,
        "version": wave_obj.version,
        "tag": wave_obj.tag,
        "status": wave_obj.status,
        "created_at": wave_obj.created_at,
        "finished_at": wave_obj.finished_at,
        "offline_cutoff": status["offline_cutoff"],
        "groups": [{**{k: v for k, v in g.items() if k not in ("group_id", "versions")}, "versions": _versions(g["versions"])} for g in status["groups"]],
        "totals": status["totals"],
    }


@router.get("/status", response=responses(200, FactoryStatusOut), summary="Factory status: devices per tag, production and test apart")
def factory_status(request, factory: FactoryName, offline_threshold: ThresholdHours | None = None):
    from django.conf import settings

    factory_obj, _ = actor_scope(request)
    tags = selectors.factory_status(factory=factory_obj, offline_threshold_hours=offline_threshold)
    active = selectors.wave_list(factory=factory_obj, status="active", per_page=200).object_list
    return {
        "factory": factory_obj.name,
        "offline_threshold_hours": offline_threshold or settings.BREAKWATER_OFFLINE_THRESHOLD_HOURS,
        "tags": [{**t, "versions": _versions(t["versions"])} for t in tags],
        "active_waves": [wave_out(w) for w in active],
    }
