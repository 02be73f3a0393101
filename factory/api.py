"""The REST API at /api/v1/: one NinjaAPI, per-user tokens scoped to one factory, JSON errors.

Every resource lives under /api/v1/factories/{factory}/. The token's factory must be the one in
the URL (checked once, in `TokenAuth`, for every route), and each endpoint calls the same services
as the dashboard, which check the token user's role. Errors are always {"detail", "code"}.
"""
import json
import logging
from typing import Annotated, Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404
from ninja import NinjaAPI, Router, Status
from ninja.errors import HttpError, ValidationError
from ninja.security.http import HttpAuthBase
from pydantic import Field

from .auth import authorize, role_of
from .errors import ApplicationError, Forbidden, NotFound
from .models import AuditEntry, CiTarget
from .ratelimit import Throttled, api_token_limiter, client_ip
from .schemas import (
    AuditPage,
    CiBuildIn,
    CiBuildOut,
    CiBuildPage,
    ChangeSignIn,
    ErrorOut,
    FactoryName,
    FactoryOut,
    KeysOut,
    OfflineKeyIn,
    ProductionTagOut,
    ProductionTargetsOut,
    RootChangeOut,
    PageNumber,
    PerPage,
    Text,
    Version,
    WhoAmIOut,
)
from .services import api_token_authenticate
from .tuf.services.repository import ci_build_publish
from .tuf import selectors as tuf_selectors
from .tuf.services import root_changes

logger = logging.getLogger(__name__)

TOKEN_HELP = "send the header 'Authorization: Token <token>' (or 'Bearer <token>')"


class Unauthenticated(ApplicationError):
    status = 401
    code = "unauthenticated"


class TokenAuth(HttpAuthBase):
    """`Authorization: Token <t>` or `Bearer <t>`; the token's factory must match the URL's."""

    openapi_scheme = "bearer"

    def __call__(self, request):
        _reject_unstorable_params(request)
        header = request.headers.get("Authorization", "").strip()
        if not header:
            raise Unauthenticated(f"this request has no API token; {TOKEN_HELP}")
        scheme, _, plain = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not plain.strip():
            raise Unauthenticated(f"the Authorization header is malformed; {TOKEN_HELP}")
        limiter, ip = api_token_limiter(), client_ip(request)
        verdict = limiter.check(ip=ip)
        if verdict.blocked:
            raise Throttled(f"{verdict.message} (failed API tokens from {ip})", extra={"retry_after": verdict.retry_after})
        token = api_token_authenticate(plain.strip())
        if token is None:
            limiter.attempt(ip=ip)
            raise Unauthenticated("the API token is not valid: it is unknown, revoked, or its user is disabled")
        match = getattr(request, "resolver_match", None)
        wanted = match.kwargs.get("factory") if match is not None else None
        if wanted is not None and wanted != token.factory.name:
            raise Forbidden(f"this API token belongs to factory {token.factory.name}, not {wanted}")
        if role_of(token.user, token.factory) is None:
            raise Forbidden(f"{token.user.get_username()} no longer has a role in factory {token.factory.name}")
        # Services read the actor from request.user like the dashboard does.
        request.user = token.user
        return token


def _reject_unstorable_params(request):
    # Path and query strings end up in database lookups; a NUL would be a database error.
    values = list(request.GET.values())
    match = getattr(request, "resolver_match", None)
    if match is not None:
        values += [v for v in match.kwargs.values() if isinstance(v, str)]
    if any("\x00" in v for v in values):
        raise ApplicationError("parameters may not contain NUL characters")


class BreakwaterAPI(NinjaAPI):
    def get_openapi_operation_id(self, operation):
        # Function names are unique across the API and read well in generated clients.
        return operation.view_func.__name__


api = BreakwaterAPI(
    title="Breakwater API",
    version="1",
    description=(
        "Production over-the-air updates with waves. Authenticate with a per-user API token: "
        "`Authorization: Token <token>` (or `Bearer`). Every resource is under `/factories/{factory}/`, "
        "the factory the token belongs to. Errors are JSON `{\"detail\", \"code\"}` with status 400, "
        "401, 403, 404 or 409."
    ),
    urls_namespace="api",
    auth=TokenAuth(),
)

ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 429: ErrorOut}


def responses(status, schema=None):
    """The success response plus the error responses every endpoint may give."""
    return {status: schema, **ERRORS}


def error_response(request, status, code, detail, **extra):
    body = {"detail": detail, "code": code, **extra}
    response = api.create_response(request, body, status=status)
    if status == 429 and "retry_after" in extra:
        response["Retry-After"] = str(extra["retry_after"])
    if status == 401:
        response["WWW-Authenticate"] = 'Token realm="breakwater", Bearer realm="breakwater"'
    return response


@api.exception_handler(ApplicationError)
def _application_error(request, exc):
    extra = {k: v for k, v in exc.extra.items() if k not in ("detail", "code")}
    return error_response(request, exc.status, exc.code, exc.message, **extra)


def _loc(error):
    # ("body", "payload", "limit") -> "limit"; ("query", "page") -> "page"
    parts = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "payload", "form", "file")]
    return ".".join(parts) or str(error.get("loc", ("input",))[0])


@api.exception_handler(ValidationError)
def _validation_error(request, exc):
    errors = [{"field": _loc(e), "message": e.get("msg", "invalid")} for e in exc.errors]
    first = errors[0] if errors else {"field": "input", "message": "invalid"}
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    detail = f"{first['field']}: {first['message']}{more}"
    return error_response(request, 400, "invalid", detail, errors=errors)


@api.exception_handler(Http404)
def _not_found(request, exc):
    return error_response(request, 404, "not_found", str(exc) or "not found")


@api.exception_handler(PermissionDenied)
def _permission_denied(request, exc):
    return error_response(request, 403, "forbidden", str(exc) or "you may not do this")


@api.exception_handler(RequestDataTooBig)
def _too_big(request, exc):
    return error_response(request, 400, "too_large", "the request body is too large (at most 5 MB)")


@api.exception_handler(SuspiciousOperation)
def _suspicious(request, exc):
    return error_response(request, 400, "invalid", "the request is malformed")


@api.exception_handler(HttpError)
def _http_error(request, exc):
    codes = {400: "invalid", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 409: "conflict", 429: "throttled"}
    return error_response(request, exc.status_code, codes.get(exc.status_code, "error"), str(exc))


@api.exception_handler(Exception)
def _server_error(request, exc):
    # A bug, not bad input: log it with the traceback and answer in the API's shape.
    logger.exception("API error on %s %s", request.method, request.path)
    return error_response(request, 500, "server_error", "the server failed to handle this request; the error was logged")


def actor_scope(request, action="view"):
    """The token's factory and user, after checking the user's role allows `action`."""
    token = request.auth
    authorize(user=token.user, factory=token.factory, action=action)
    return token.factory, token.user


def paginate(queryset, *, page, per_page):
    total = queryset.count()
    start = (page - 1) * per_page
    items = list(queryset[start : start + per_page])
    return {"total": total, "page": page, "per_page": per_page, "next": page + 1 if start + per_page < total else None, "items": items}


# --- identity ---------------------------------------------------------------------------------

identity = Router(tags=["identity"])


@identity.get("/whoami", response=responses(200, WhoAmIOut), summary="The token's user, factory and role")
def whoami(request):
    token = request.auth
    return {"user": token.user.get_username(), "factory": token.factory.name, "role": role_of(token.user, token.factory), "token": token.prefix}


# --- factory: CI targets, audit log -----------------------------------------------------------

router = Router(tags=["factory"])


@router.get("/", response=responses(200, FactoryOut), summary="The factory and your role in it")
def factory_show(request, factory: FactoryName):
    factory_obj, user = actor_scope(request)
    return {"name": factory_obj.name, "role": role_of(user, factory_obj), "created_at": factory_obj.created_at}


def _builds(factory, versions):
    targets = CiTarget.objects.filter(factory=factory, version__in=versions).order_by("-version", "hardware_id")
    by_version = {}
    for target in targets:
        by_version.setdefault(target.version, []).append(target)
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


def paginate_list(values, *, page, per_page):
    start = (page - 1) * per_page
    total = len(values)
    return {"total": total, "page": page, "per_page": per_page, "next": page + 1 if start + per_page < total else None, "items": values[start : start + per_page]}


@router.post("/targets/", response=responses(201, CiBuildOut), summary="Publish a CI build (for CI systems)")
def targets_publish(request, factory: FactoryName, payload: CiBuildIn):
    factory_obj, user = actor_scope(request)
    targets = {hwid: meta.dict() for hwid, meta in (payload.targets or {}).items()}
    unknown = sorted(set(targets) - set(payload.hardware_ids))
    if unknown:
        raise ApplicationError(f"targets lists hardware IDs that are not in hardware_ids: {', '.join(unknown)}")
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


@router.get("/audit/", response=responses(200, AuditPage), summary="The audit log, newest first")
def audit_list(
    request, factory: FactoryName, action: Text | None = None, actor: Text | None = None, target: Text | None = None, page: PageNumber = 1, per_page: PerPage = 50
):
    factory_obj, _ = actor_scope(request)
    entries = AuditEntry.objects.filter(factory=factory_obj).order_by("-created_at", "-id")
    if action:
        entries = entries.filter(action__startswith=action)
    if actor:
        entries = entries.filter(actor_name=actor)
    if target:
        entries = entries.filter(target=target)
    result = paginate(entries, page=page, per_page=per_page)
    result["items"] = [
        {"id": e.id, "created_at": e.created_at, "actor": e.actor_name, "action": e.action, "target": e.target, "details": e.details}
        for e in result["items"]
    ]
    return result


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


# --- keys and roots ----------------------------------------------------------------------------

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


@keys.post("/keys/root/renew", response=responses(200, RootChangeOut), summary="Renew the root (same keys, a year more)")
def keys_root_renew(request, factory: FactoryName):
    factory_obj, user = actor_scope(request)
    return _change_out(root_changes.root_renew(factory=factory_obj, actor=user))


def _pending(factory_obj):
    change = tuf_selectors.root_change_pending(factory=factory_obj)
    if change is None:
        raise NotFound("no key change is waiting for signatures")
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


def _mount():
    from devices.api import router as devices_router
    from waves.api import router as waves_router
    from waves.plan_api import router as plans_router
    from waves.status_api import router as status_router

    api.add_router("/", identity)
    api.add_router("/factories/{factory}/", router)
    api.add_router("/factories/{factory}/", keys)
    api.add_router("/factories/{factory}/", devices_router)
    api.add_router("/factories/{factory}/", waves_router)
    api.add_router("/factories/{factory}/", status_router)
    api.add_router("/factories/{factory}/", plans_router)


_mount()
