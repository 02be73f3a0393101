"""Waves API: init (with the bytes to sign), revert (a re-release of an earlier build), sign, rollout, complete, cancel, status, list, show;
factory status; saved device lists."""
import base64
import json
from typing import Annotated, Literal

from django.conf import settings
from ninja import Router, Status
from pydantic import Field

from devices.models import Device
from devices.selectors import uuids_in
from factory.api_support import actor_scope, bad_build_out, key_archive_decode, paginate, responses
from factory.builds import bad_builds
from factory.errors import ApplicationError, NotFound
from factory.schemas import FactoryName, PageNumber, PerPage, Text

from . import devicelists, expiry, retries, selectors, services, status_table
from .models import SavedDeviceList
from .schemas import (
    DeviceListIn,
    DeviceListOut,
    DeviceListUpdateIn,
    FactoryStatusOut,
    RetryIn,
    RetryResultOut,
    RolloutDevicePage,
    RolloutDevicesOut,
    RolloutIn,
    RolloutResultOut,
    RolloutSummaryOut,
    WaveInitIn,
    WaveOut,
    WavePage,
    WaveRevertIn,
    WaveSignIn,
    WaveStatus,
    WaveStatusOut,
)

router = Router(tags=["waves"])



ThresholdHours = Annotated[float, Field(gt=0, le=24 * 365, description="Hours without a check-in before a device counts as offline.")]


def _targets_json(wave):
    if not wave.targets:
        return None
    try:
        return json.loads(bytes(wave.targets))
    except ValueError:
        return None


def _bads(waves):
    """{build version: BadBuild} for the waves' builds, in one query."""
    waves = list(waves)
    if not waves:
        return {}
    return bad_builds(factory=waves[0].factory, versions={w.build_version for w in waves})


def wave_out(wave, *, rollouts=None, targets=False, bads=None):
    """`bads`: the waves' bad builds when a list was read at once (see _bads); else read here."""
    if bads is None:
        bads = _bads([wave])
    signed = _targets_json(wave) or {}
    payload = aktualizr_payload = None
    if wave.status == wave.Status.UNSIGNED and wave.targets:
        payload = base64.b64encode(selectors.wave_signing_payload(wave)).decode()
        aktualizr_payload = base64.b64encode(selectors.wave_aktualizr_signing_payload(wave)).decode()
    return {
        "name": wave.name,
        "version": wave.version,
        "rerelease_of": wave.rerelease_of,
        "build_version": wave.build_version,
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
        "aktualizr_signing_payload": aktualizr_payload,
        "signed_keyids": [s.get("keyid", "") for s in signed.get("signatures", [])],
        "rollouts": rollouts or [],
        "targets": signed if targets else None,
        "bad": bad_build_out(bads.get(wave.build_version)),
    }


def _wave(request, name, action="view"):
    factory_obj, user = actor_scope(request, action)
    return selectors.wave_get(factory=factory_obj, name=name), user


@router.get("/waves/", response=responses(200, WavePage), summary="Waves, open ones first, newest first")
def waves_list(
    request,
    factory: FactoryName,
    status: WaveStatus | None = None,
    tag: Text | None = None,
    page: PageNumber = 1,
    per_page: Annotated[int, Field(ge=1, le=200)] = 20,
):
    factory_obj, _ = actor_scope(request)
    result = selectors.wave_list(factory=factory_obj, status=status, tag=tag, page=page, per_page=per_page)
    paginator = result.paginator
    # The paginator clamps an out-of-range page to the last one; the API answers an empty page.
    waves = list(result.object_list) if result.number == page else []
    bads = _bads(waves)
    items = [wave_out(w, bads=bads) for w in waves]
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
    key and POST the signatures to `/waves/{wave}/sign` (with the same keys' `aktualizr_signatures`
    over `aktualizr_signing_payload`, the flavour aktualizr-lite devices verify), or give `signatures` / `key_archive` here:
    then the wave is created signed, or (a signature or archive that does not sign) not at all.
    With `dry_run`, nothing is created and the targets it would have are returned, with the
    `signing_payload` that signatures given with the same inputs and `expires_at` must sign."""
    factory_obj, user = actor_scope(request, "wave.manage")
    archive = key_archive_decode(payload.key_archive)
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
        signatures=[s.dict() for s in payload.signatures] if payload.signatures else None,
        aktualizr_signatures=[s.dict() for s in payload.aktualizr_signatures] if payload.aktualizr_signatures else None,
        key_archive=archive,
    )
    if payload.dry_run:
        return Status(200, wave_out(wave, targets=True))
    return Status(201, wave_out(wave))


@router.post("/waves/revert/", response=responses(201, WaveOut) | {200: WaveOut}, summary="Take a tag back to an earlier build (a re-release)")
def waves_revert(request, factory: FactoryName, payload: WaveRevertIn):
    """Creates a wave that re-releases build `to_version`'s content (the same hashes, the same
    OSTree commit) under new target names at the next number of the factory's one sequence of
    builds and re-releases, above everything the tag has served: devices only ever move up, so
    going back is a release. It is signed and rolled out like any wave (see `POST /waves/`): sign
    its `signing_payload` and `aktualizr_signing_payload`, or give `signatures` made over a dry
    run with the same inputs and `expires_at`, or a `key_archive`. A dry run claims no number."""
    factory_obj, user = actor_scope(request, "wave.manage")
    archive = key_archive_decode(payload.key_archive)
    wave = services.wave_revert(
        factory=factory_obj,
        actor=user,
        name=payload.name,
        tag=payload.tag,
        to_version=payload.to_version,
        prune=payload.prune,
        expires_days=payload.expires_days,
        expires_at=payload.expires_at,
        source_tag=payload.source_tag,
        dry_run=payload.dry_run,
        signatures=[s.dict() for s in payload.signatures] if payload.signatures else None,
        aktualizr_signatures=[s.dict() for s in payload.aktualizr_signatures] if payload.aktualizr_signatures else None,
        key_archive=archive,
    )
    if payload.dry_run:
        return Status(200, wave_out(wave, targets=True))
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
    aktualizr_signatures = [s.dict() for s in payload.aktualizr_signatures] if payload.aktualizr_signatures else None
    wave_obj = services.wave_sign(
        wave=wave_obj, actor=user, signatures=signatures, aktualizr_signatures=aktualizr_signatures,
        key_archive=key_archive_decode(payload.key_archive),
    )  # fmt: skip
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
    devices = result.devices
    if result.full_group and not devices and result.rollout is not None and result.count is not None:
        # A group small enough to count in the request is small enough to list; a larger one is
        # paged from the rollout's device list.
        devices = _staged_devices(result.rollout)
    return {
        "message": result.message,
        "dry_run": result.dry_run,
        "count": result.count,
        "group": result.group_name,
        "full_group": result.full_group,
        "rollout": result.rollout.pk if result.rollout else None,
        "devices": [{k: d[k] for k in ("uuid", "name", "group", "target_version", "online")} for d in devices],
        "skipped": result.skipped,
    }


@router.post("/waves/{wave}/retry", response=responses(200, RetryResultOut), summary="Offer the wave again to devices that failed it")
def waves_retry(request, factory: FactoryName, wave: str, payload: RetryIn):
    """Every device that reported a failure of the wave (or the listed ones, each of which must
    have): its failure is set aside, it is installing again, and it sees new metadata at its next
    poll. QA may preview (dry_run); retrying needs a release manager."""
    wave_obj, user = _wave(request, wave)
    result = retries.wave_retry_failed(wave=wave_obj, actor=user, uuids=payload.uuids, dry_run=payload.dry_run)
    return {
        "message": result.message,
        "dry_run": result.dry_run,
        "count": result.count,
        "exhausted": result.exhausted,
        "devices": [{k: d[k] for k in ("uuid", "name", "retries")} for d in result.devices],
    }


def _staged_devices(rollout):
    """The devices a full-group rollout staged, in the same shape as the other rollouts' rows."""
    cutoff = selectors.offline_cutoff()
    uuids = selectors.rollout_device_uuids(rollout=rollout)
    rows = Device.objects.filter(factory_id=rollout.wave.factory_id, uuid__in=uuids_in(uuids)).order_by("name", "id")
    return [
        {
            "uuid": str(d.uuid),
            "name": d.name,
            "group": rollout.group_name,
            "target_version": d.target_version,
            "online": bool(d.last_seen and d.last_seen >= cutoff),
        }
        for d in rows
    ]


@router.get("/waves/{wave}/rollouts", response=responses(200, list[RolloutSummaryOut]), summary="A wave's rollout history")
def waves_rollouts(request, factory: FactoryName, wave: str):
    wave_obj, _ = _wave(request, wave)
    return _rollouts(wave_obj)


@router.get("/waves/{wave}/rollouts/{rollout}", response=responses(200, RolloutDevicesOut), summary="The exact devices one rollout staged")
def waves_rollout_devices(request, factory: FactoryName, wave: str, rollout: Annotated[int, Field(ge=1, le=2**63 - 1)]):
    wave_obj, _ = _wave(request, wave)
    rollout_obj = wave_obj.rollouts.filter(pk=rollout).first()
    if rollout_obj is None:
        raise NotFound(f"Wave {wave_obj.name} has no rollout {rollout}")
    return {"rollout": rollout_obj.pk, "uuids": selectors.rollout_device_uuids(rollout=rollout_obj)}


@router.get(
    "/waves/{wave}/rollouts/{rollout}/devices", response=responses(200, RolloutDevicePage), summary="The exact devices one rollout staged, paged"
)
def waves_rollout_device_page(
    request, factory: FactoryName, wave: str, rollout: Annotated[int, Field(ge=1, le=2**63 - 1)], page: PageNumber = 1, per_page: PerPage = 500
):
    """Each device's UUID, name and group, by name; 500 a page unless `per_page` (as `devices
    list`). A full-group rollout lists the group's production devices on the tag staged through it now."""
    wave_obj, _ = _wave(request, wave)
    rollout_obj = wave_obj.rollouts.filter(pk=rollout).select_related("wave").first()
    if rollout_obj is None:
        raise NotFound(f"Wave {wave_obj.name} has no rollout {rollout}")
    rows = selectors.rollout_devices(rollout=rollout_obj).values_list("uuid", "name", "group__name")
    result = paginate(rows, page=page, per_page=per_page)
    result["items"] = [{"uuid": u, "name": n, "group": g or ""} for u, n, g in result["items"]]
    return {**result, "rollout": rollout_obj.pk}


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
    status = status_table.wave_status(wave=wave_obj, offline_threshold_hours=offline_threshold)
    return {
        "name": wave_obj.name,
        "version": wave_obj.version,
        "rerelease_of": wave_obj.rerelease_of,
        "build_version": wave_obj.build_version,
        "version_labels": status["version_labels"],
        "tag": wave_obj.tag,
        "status": wave_obj.status,
        "created_at": wave_obj.created_at,
        "finished_at": wave_obj.finished_at,
        "offline_cutoff": status["offline_cutoff"],
        "groups": [
            {**{k: v for k, v in g.items() if k not in ("group_id", "versions", "version_chips")}, "versions": _versions(g["versions"])}
            for g in status["groups"]
        ],
        "totals": status["totals"],
        "bad": bad_build_out(_bads([wave_obj]).get(wave_obj.build_version)),
        "warnings": expiry.wave_expiring_targets(wave=wave_obj),
    }


@router.get("/status", response=responses(200, FactoryStatusOut), summary="Factory status: devices per tag, production and test apart")
def factory_status(request, factory: FactoryName, offline_threshold: ThresholdHours | None = None):
    factory_obj, _ = actor_scope(request)
    tags = selectors.factory_status(factory=factory_obj, offline_threshold_hours=offline_threshold)
    active = list(selectors.wave_list(factory=factory_obj, status="active", per_page=200).object_list)
    bads = _bads(active)
    return {
        "factory": factory_obj.name,
        "offline_threshold_hours": offline_threshold or settings.BREAKWATER_OFFLINE_THRESHOLD_HOURS,
        "tags": [{**t, "versions": _versions(t["versions"])} for t in tags],
        "active_waves": [wave_out(w, bads=bads) for w in active],
        "warnings": expiry.expiring_targets(factory=factory_obj),
    }


# --- saved device lists -------------------------------------------------------------------------


def _list_out(saved):
    uuids = devicelists.device_list_uuids(saved)
    return {
        "name": saved.name,
        "uuids": uuids,
        "count": len(uuids),
        "created_by": saved.created_by.get_username() if saved.created_by else "",
        "created_at": saved.created_at,
        "updated_at": saved.updated_at,
    }


def _saved_list(factory_obj, name):
    saved = SavedDeviceList.objects.select_related("created_by", "factory").filter(factory=factory_obj, name=name).first()
    if saved is None:
        raise NotFound(f"Device list {name} does not exist")
    return saved


@router.get("/device-lists/", response=responses(200, list[DeviceListOut]), summary="Saved device lists")
def device_lists_list(request, factory: FactoryName):
    factory_obj, _ = actor_scope(request)
    return [_list_out(saved) for saved in SavedDeviceList.objects.filter(factory=factory_obj).select_related("created_by").order_by("name")]


@router.post("/device-lists/", response=responses(201, DeviceListOut), summary="Save a device list")
def device_lists_create(request, factory: FactoryName, payload: DeviceListIn):
    factory_obj, user = actor_scope(request)
    saved = devicelists.device_list_create(factory=factory_obj, actor=user, name=payload.name, uuids=payload.uuids)
    return Status(201, _list_out(saved))


@router.get("/device-lists/{path:name}", response=responses(200, DeviceListOut), summary="A saved device list")
def device_lists_show(request, factory: FactoryName, name: str):
    factory_obj, _ = actor_scope(request)
    return _list_out(_saved_list(factory_obj, name))


@router.patch("/device-lists/{path:name}", response=responses(200, DeviceListOut), summary="Rename a saved list or replace its UUIDs")
def device_lists_update(request, factory: FactoryName, name: str, payload: DeviceListUpdateIn):
    factory_obj, user = actor_scope(request)
    saved = devicelists.device_list_update(device_list=_saved_list(factory_obj, name), actor=user, name=payload.name, uuids=payload.uuids)
    return _list_out(saved)


@router.delete("/device-lists/{path:name}", response=responses(204, None), summary="Delete a saved device list")
def device_lists_delete(request, factory: FactoryName, name: str):
    factory_obj, user = actor_scope(request)
    devicelists.device_list_delete(device_list=_saved_list(factory_obj, name), actor=user)
    return Status(204, None)
