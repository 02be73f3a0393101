"""The TUF repository's API routers: CI builds and production targets, and the factory's TUF keys
and roots (key changes and their offline signatures). Mounted by the API root,
factory/project/api.py."""
import json
import tempfile
from typing import Annotated, Any

from ninja import Path, Query, Router, Status
from pydantic import Field

from factory.api_support import actor_scope, bad_build_out, paginate, paginate_list, responses
from factory.builds import bad_builds, build_mark_bad, build_unmark_bad
from factory.downloads import attachment
from factory.errors import ApplicationError, NotFound
from factory import ostree
from factory.models import CiTarget
from factory.schemas import (
    BadBuildIn,
    CiBuildIn,
    CiBuildOut,
    CiBuildPage,
    ChangeSignIn,
    FactoryName,
    KeysOut,
    OfflineKeyIn,
    OnlineKeyRotateIn,
    ProductionTagOut,
    ProductionTargetsOut,
    RootChangeOut,
    RootVersionOut,
    TargetsTagIn,
    TargetsTagOut,
    PageNumber,
    PerPage,
    Text,
    Version,
)
from .services.ci_targets import ci_targets_tag
from .services.repository import ci_build_publish, ostree_build_publish

from . import selectors as tuf_selectors
from .services import root_changes

# --- CI builds and production targets -----------------------------------------------------------

# Tagged "factory" as before the TUF repository had routers of its own: generated clients keep
# their grouping.
router = Router(tags=["factory"])


def _builds(factory, versions):
    targets = CiTarget.objects.filter(factory=factory, version__in=versions).order_by("-version", "hardware_id")
    by_version = {}
    for target in targets:
        by_version.setdefault(target.version, []).append(target)
    bad = bad_builds(factory=factory, versions=versions)
    builds = []
    for version in versions:
        rows = by_version.get(version, [])
        builds.append(
            {
                "version": version,
                "tags": sorted({tag for t in rows for tag in t.tags}),
                "hardware_ids": [t.hardware_id for t in rows],
                "created_at": min(t.created_at for t in rows),
                "targets": [_target_out(t) for t in rows],
                "bad": bad_build_out(bad.get(version)),
            }
        )
    return builds


def _target_out(target):
    return {
        "name": target.name,
        "version": target.version,
        "hardware_id": target.hardware_id,
        "sha256": target.sha256,
        "length": target.length,
        "tags": target.tags,
        "custom": target.custom,
        "created_at": target.created_at,
    }


@router.get("/targets/", response=responses(200, CiBuildPage), summary="CI builds, newest first")
def targets_list(
    request,
    factory: FactoryName,
    version: Version | None = None,
    tag: Text | None = None,
    hardware_id: Text | None = None,
    page: PageNumber = 1,
    per_page: PerPage = 20,
):
    factory_obj, _ = actor_scope(request)
    rows = CiTarget.objects.filter(factory=factory_obj)
    if version is not None:
        rows = rows.filter(version=version)
    if hardware_id:
        rows = rows.filter(hardware_id=hardware_id)
    versions = rows.order_by("-version").values_list("version", flat=True).distinct()
    if tag:
        # Tags live in a JSON list; filter in Python over the (few) builds rather than per backend.
        matching = sorted({t.version for t in rows.only("version", "custom") if tag in t.tags}, reverse=True)
        result = paginate_list(matching, page=page, per_page=per_page)
    else:
        result = paginate(versions, page=page, per_page=per_page)
    result["items"] = _builds(factory_obj, result["items"])
    return result


@router.post("/targets/", response=responses(201, CiBuildOut), summary="Publish a CI build (for CI systems)")
def targets_publish(request, factory: FactoryName, payload: CiBuildIn):
    factory_obj, user = actor_scope(request)
    targets = {hwid: meta.dict() for hwid, meta in (payload.targets or {}).items()}
    unknown = sorted(set(targets) - set(payload.hardware_ids))
    if unknown:
        raise ApplicationError(f"The targets list hardware IDs that are not in hardware_ids: {', '.join(unknown)}")
    ci_build_publish(
        factory=factory_obj,
        version=payload.version,
        hardware_ids=payload.hardware_ids,
        tags=payload.tags,
        targets=targets,
        custom=payload.custom,
        actor=user,
    )
    return Status(201, _builds(factory_obj, [payload.version])[0])


@router.post("/targets/{version}/bad", response=responses(200, CiBuildOut), summary="Mark a CI build bad")
def targets_mark_bad(request, factory: FactoryName, version: Version, payload: BadBuildIn):
    """A build marked bad goes into no new wave, re-release or rollout on any tag, and no wave of
    it can be completed, until it is unmarked. Waves already serving it keep their staged
    devices: cancel them, or revert the tag. 404 for an unknown build, 409 if already marked."""
    factory_obj, user = actor_scope(request, "wave.manage")
    build_mark_bad(factory=factory_obj, actor=user, version=version, reason=payload.reason)
    return _builds(factory_obj, [version])[0]


@router.delete("/targets/{version}/bad", response=responses(200, CiBuildOut), summary="Unmark a bad CI build")
def targets_unmark_bad(request, factory: FactoryName, version: Version, payload: BadBuildIn):
    """Takes the mark off (the reason, in the JSON body, is recorded in the audit log): the build
    can go into waves and rollouts again. 409 if the build is not marked bad."""
    factory_obj, user = actor_scope(request, "wave.manage")
    build_unmark_bad(factory=factory_obj, actor=user, version=version, reason=payload.reason)
    return _builds(factory_obj, [version])[0]


@router.post("/targets/tags", response=responses(200, TargetsTagOut), summary="Set (or add to) the tags of CI targets")
def targets_tag(request, factory: FactoryName, payload: TargetsTagIn):
    """Like `fioctl targets tag`: each of `targets` (a target name, or a build version for all of
    its targets) gets `tags`, or with `append` its tags plus `tags`. The CI targets are re-signed,
    so test devices on a new tag see the targets and those on a dropped tag no longer do.
    Production targets are not touched (they change only through waves): naming a production-only
    or pruned target is a 404 that changes nothing."""
    factory_obj, user = actor_scope(request, "targets.publish")
    changes = ci_targets_tag(factory=factory_obj, actor=user, refs=payload.targets, tags=payload.tags, append=payload.append)
    return {"changed": [c for c in changes if c["before"] != c["after"]], "unchanged": [c for c in changes if c["before"] == c["after"]]}


@router.post(
    "/targets/ostree",
    response=responses(201, CiBuildOut),
    summary="Publish an OSTree CI build: the body is `ostree static-delta generate --empty --inline --to=COMMIT --filename=F`",
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}, "required": True}},
)
def targets_publish_ostree(
    request,
    factory: FactoryName,
    commit: Annotated[str, Query(pattern=r"^[0-9a-f]{64}$")],
    version: Version,
    hardware_id: Annotated[list[Annotated[Text, Field(min_length=1, max_length=128)]], Query(min_length=1, max_length=100)],
    tag: Annotated[list[Annotated[Text, Field(min_length=1, max_length=64)]], Query(min_length=1, max_length=50)],
):
    factory_obj, user = actor_scope(request)
    # Streamed to disk, never whole in memory; the cap is counted, not taken from Content-Length.
    with tempfile.NamedTemporaryFile(prefix="bw-ostree-upload-") as upload:
        received = 0
        while chunk := request.read(1024 * 1024):
            received += len(chunk)
            if received > ostree.UPLOAD_MAX_BYTES:
                raise ApplicationError(f"The upload is larger than {ostree.UPLOAD_MAX_BYTES // 1024**3} GiB")
            upload.write(chunk)
        upload.flush()
        if not received:
            raise ApplicationError("The body is empty: send the file of `ostree static-delta generate --empty --inline --to=COMMIT --filename=F`")
        ostree_build_publish(
            factory=factory_obj, commit=commit, upload=upload.name, version=version, hardware_ids=hardware_id, tags=tag, actor=user
        )
    return Status(201, _builds(factory_obj, [version])[0])


@router.get("/targets/production", response=responses(200, list[ProductionTagOut]), summary="Tags with production targets")
def targets_production_tags(request, factory: FactoryName):
    factory_obj, _ = actor_scope(request)
    return tuf_selectors.production_tags(factory=factory_obj)


@router.get("/targets/production/{tag}", response=responses(200, ProductionTargetsOut), summary="A tag's production targets")
def targets_production(request, factory: FactoryName, tag: str):
    factory_obj, _ = actor_scope(request)
    return {
        "tag": tag,
        "version": tuf_selectors.production_targets_version(factory=factory_obj, tag=tag),
        "targets": tuf_selectors.production_targets(factory=factory_obj, tag=tag),
    }


# --- keys and roots -----------------------------------------------------------------------------

keys = Router(tags=["keys"])


def _change_out(change):
    pending = change.status == change.Status.PENDING
    return {
        "action": change.action,
        "status": change.status,
        "created_at": change.created_at,
        "created_by": change.created_by.get_username() if change.created_by else "",
        "details": change.details,
        "documents": tuf_selectors.root_change_payloads(change=change) if pending else [],
    }


@keys.get("/keys/", response=responses(200, KeysOut), summary="The factory's TUF keys, root facts and any key change waiting for signatures")
def keys_list(request, factory: FactoryName):
    factory_obj, _ = actor_scope(request)
    pending = tuf_selectors.root_change_pending(factory=factory_obj)
    return {
        **tuf_selectors.repository_summary(factory=factory_obj),
        "keys": tuf_selectors.key_list(factory=factory_obj),
        "pending_change": _change_out(pending) if pending else None,
    }


@keys.get("/keys/root", response=responses(200, dict[str, Any]), summary="The CI root (test devices) or the production root, as signed TUF metadata")
def keys_root(request, factory: FactoryName, production: bool = False, version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None):
    factory_obj, _ = actor_scope(request)
    channel = "production" if production else "ci"
    return json.loads(tuf_selectors.root_get(factory=factory_obj, channel=channel, version=version))


RootVersion = Annotated[int, Path(ge=1, le=2**31 - 1)]


@keys.get("/keys/roots", response=responses(200, list[RootVersionOut]), summary="Every version of the CI root (test devices) or the production root, oldest first")
def keys_roots(request, factory: FactoryName, production: bool = False):
    """What `breakwater keys download-roots` saves: a device trusts 1.root.json and walks up to
    the newest, so an offline copy of all of them lets anyone check the chain."""
    factory_obj, _ = actor_scope(request)
    return tuf_selectors.root_versions(factory=factory_obj, channel="production" if production else "ci")


@keys.get(
    "/keys/roots/{version}",
    response=responses(200, None),
    summary="One root version as N.root.json, the exact bytes the TUF repository serves devices",
    openapi_extra={"responses": {"200": {"description": "N.root.json", "content": {"application/json": {"schema": {"type": "object"}}}}}},
)
def keys_root_download(request, factory: FactoryName, version: RootVersion, production: bool = False):
    factory_obj, _ = actor_scope(request)
    data = tuf_selectors.root_get(factory=factory_obj, channel="production" if production else "ci", version=version)
    return attachment(data, filename=f"{version}.root.json", content_type="application/json")


@keys.post("/keys/offline", response=responses(200, RootChangeOut), summary="Add a user-held offline key (targets signing key or the new root key)")
def keys_offline_add(request, factory: FactoryName, payload: OfflineKeyIn):
    """Starts a key change: new roots, and any production targets the new root makes invalid. It is
    applied at once when the server can sign everything; otherwise it waits (status "pending") for
    the offline signatures listed in `documents`, sent to `/keys/change/sign`."""
    factory_obj, user = actor_scope(request)
    change = root_changes.offline_key_add(
        factory=factory_obj, actor=user, role=payload.role, public_key=payload.public_key.dict(), threshold=payload.threshold
    )
    return _change_out(change)


@keys.post("/keys/offline/{keyid}/retire", response=responses(200, RootChangeOut), summary="Retire an offline targets key (its holder left, it was lost or replaced)")
def keys_offline_retire(request, factory: FactoryName, keyid: str):
    """`keyid`: the key's id, or its first 8 characters or more. Starts a key change: new roots
    without the key, and the production targets it signed, which the remaining offline keys must
    re-sign (status "pending"; `documents` say what each still needs). The factory's last offline
    targets key cannot be retired, nor can the root key (add a new one instead)."""
    factory_obj, user = actor_scope(request)
    return _change_out(root_changes.offline_key_retire(factory=factory_obj, actor=user, keyid=keyid))


@keys.post("/keys/online/rotate", response=responses(200, RootChangeOut), summary="Replace an online key (targets, snapshot or timestamp) with a new one")
def keys_online_rotate(request, factory: FactoryName, payload: OnlineKeyRotateIn):
    """The server generates the new key and starts a key change: new roots that trust it instead
    of the old one. Applied at once while the root key is online; otherwise it waits (status
    "pending") for the root key's signatures, sent to `/keys/change/sign`. Once applied, every
    view is re-signed with the new key; devices follow at their next poll. 409 while another key
    change is pending, or (targets) while a wave is open."""
    factory_obj, user = actor_scope(request)
    return _change_out(root_changes.online_key_rotate(factory=factory_obj, actor=user, role=payload.role))


@keys.post("/keys/root/renew", response=responses(200, RootChangeOut), summary="Renew the root (same keys, a year more)")
def keys_root_renew(request, factory: FactoryName):
    factory_obj, user = actor_scope(request)
    return _change_out(root_changes.root_renew(factory=factory_obj, actor=user))


def _pending(factory_obj):
    change = tuf_selectors.root_change_pending(factory=factory_obj)
    if change is None:
        raise NotFound("No key change is waiting for signatures")
    return change


@keys.get("/keys/change", response=responses(200, RootChangeOut), summary="The key change waiting for offline signatures")
def keys_change(request, factory: FactoryName):
    factory_obj, _ = actor_scope(request)
    return _change_out(_pending(factory_obj))


@keys.post("/keys/change/sign", response=responses(200, RootChangeOut), summary="Add offline signatures to the pending key change")
def keys_change_sign(request, factory: FactoryName, payload: ChangeSignIn):
    factory_obj, user = actor_scope(request)
    change = root_changes.root_change_sign(factory=factory_obj, actor=user, signatures=[s.dict() for s in payload.signatures])
    return _change_out(change)


@keys.delete("/keys/change", response=responses(204, None), summary="Abandon the pending key change")
def keys_change_abandon(request, factory: FactoryName):
    factory_obj, user = actor_scope(request)
    root_changes.root_change_abandon(factory=factory_obj, actor=user)
    return Status(204, None)
