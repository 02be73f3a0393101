"""The REST API at /api/v1/: one NinjaAPI, per-user tokens scoped to one factory, JSON errors.

Every resource lives under /api/v1/factories/{factory}/. The token's factory must be the one in
the URL (checked once, in `TokenAuth`, for every route), and each endpoint calls the same services
as the dashboard, which check the token user's role. Errors are always {"detail", "code"}.
This root sits above the apps: it mounts their routers, which import nothing from here.
"""
import logging

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI
from ninja.errors import HttpError, ValidationError

from devices.api import router as devices_router
from factory.api import identity
from factory.api import router as factory_router
from factory.api_support import TokenAuth
from factory.errors import ApplicationError
from factory.plurals import counted
from factory.tuf.api import keys as keys_router
from factory.tuf.api import router as targets_router
from waves.api import router as waves_router
from waves.build_pruning_api import router as pruning_router
from waves.plan_api import router as plans_router
from waves.status_api import router as status_router

logger = logging.getLogger(__name__)


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
    more = f" (and {counted(len(errors) - 1, 'more problem')})" if len(errors) > 1 else ""
    detail = f"{first['field']}: {first['message']}{more}"
    return error_response(request, 400, "invalid", detail, errors=errors)


@api.exception_handler(Http404)
def _not_found(request, exc):
    return error_response(request, 404, "not_found", str(exc) or "Not found")


@api.exception_handler(PermissionDenied)
def _permission_denied(request, exc):
    return error_response(request, 403, "forbidden", str(exc) or "You may not do this")


@api.exception_handler(RequestDataTooBig)
def _too_big(request, exc):
    return error_response(request, 400, "too_large", "The request body is too large (at most 5 MB)")


@api.exception_handler(SuspiciousOperation)
def _suspicious(request, exc):
    return error_response(request, 400, "invalid", "The request is malformed")


@api.exception_handler(HttpError)
def _http_error(request, exc):
    codes = {400: "invalid", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 409: "conflict", 429: "throttled"}
    return error_response(request, exc.status_code, codes.get(exc.status_code, "error"), str(exc))


@api.exception_handler(Exception)
def _server_error(request, exc):
    # A bug, not bad input: log it with the traceback and answer in the API's shape.
    logger.exception("API error on %s %s", request.method, request.path)
    return error_response(request, 500, "server_error", "The server failed to handle this request; the error was logged")


api.add_router("/", identity)
api.add_router("/factories/{factory}/", factory_router)
api.add_router("/factories/{factory}/", targets_router)
api.add_router("/factories/{factory}/", pruning_router)
api.add_router("/factories/{factory}/", keys_router)
api.add_router("/factories/{factory}/", devices_router)
api.add_router("/factories/{factory}/", waves_router)
api.add_router("/factories/{factory}/", status_router)
api.add_router("/factories/{factory}/", plans_router)


@csrf_exempt  # else a POST, PATCH or DELETE to an unknown path gets the CSRF failure's HTML 403
def api_not_found(request, rest=""):
    # Unknown API paths answer in the API's error shape, not with the dashboard's HTML 404 page.
    return JsonResponse({"detail": f"No API endpoint at {request.path}", "code": "not_found"}, status=404)
