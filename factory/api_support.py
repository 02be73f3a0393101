"""What every API router shares: token authentication, the error responses an endpoint declares,
the role check that gives an endpoint its factory and user, page-number paging, and the decoding
of an uploaded key archive.

The routers import this module and the API root (factory/project/api.py) mounts them, so imports
run one way: root -> routers -> this module.
"""
import base64
import binascii

from ninja.security.http import HttpAuthBase

from .auth import authorize, role_of
from .errors import ApplicationError, Forbidden
from .ratelimit import Throttled, api_token_limiter, client_ip
from .schemas import ErrorOut
from .services import api_token_authenticate

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
            raise Unauthenticated(f"This request has no API token; {TOKEN_HELP}")
        scheme, _, plain = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not plain.strip():
            raise Unauthenticated(f"The Authorization header is malformed; {TOKEN_HELP}")
        limiter, ip = api_token_limiter(), client_ip(request)
        verdict = limiter.check(ip=ip)
        if verdict.blocked:
            raise Throttled(f"{verdict.message} (failed API tokens from {ip})", extra={"retry_after": verdict.retry_after})
        token = api_token_authenticate(plain.strip())
        if token is None:
            limiter.attempt(ip=ip)
            raise Unauthenticated("The API token is not valid: it is unknown, revoked, or its user is disabled")
        match = getattr(request, "resolver_match", None)
        wanted = match.kwargs.get("factory") if match is not None else None
        if wanted is not None and wanted != token.factory.name:
            raise Forbidden(f"This API token belongs to factory {token.factory.name}, not {wanted}")
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
        raise ApplicationError("Parameters may not contain NUL characters")


ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 429: ErrorOut}


def responses(status, schema=None):
    """The success response plus the error responses every endpoint may give."""
    return {status: schema, **ERRORS}


def actor_scope(request, action="view"):
    """The token's factory and user, after checking the user's role allows `action`."""
    token = request.auth
    authorize(user=token.user, factory=token.factory, action=action)
    return token.factory, token.user


def bad_build_out(bad):
    """A BadBuild row as the API's `bad` field (null when the build is not marked bad)."""
    if bad is None:
        return None
    return {"version": bad.version, "reason": bad.reason, "by": bad.marked_by_name, "at": bad.marked_at}


def paginate(queryset, *, page, per_page):
    total = queryset.count()
    start = (page - 1) * per_page
    items = list(queryset[start : start + per_page])
    return {"total": total, "page": page, "per_page": per_page, "next": page + 1 if start + per_page < total else None, "items": items}


def paginate_list(values, *, page, per_page):
    start = (page - 1) * per_page
    total = len(values)
    return {"total": total, "page": page, "per_page": per_page, "next": page + 1 if start + per_page < total else None, "items": values[start : start + per_page]}


def key_archive_decode(text):
    """A request's base64 `key_archive` as bytes (held in memory only), or None when not given."""
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApplicationError("The key_archive field is not valid base64") from None
