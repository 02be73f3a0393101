"""The registration endpoint: a new device, which has no certificate yet, trades a registration
token and a CSR for its certificate, its tag and group, and where to find the gateway."""
import json

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from factory.errors import ApplicationError

from .gateway_identity import gateway_endpoint
from .services import device_register

MAX_BODY = 32 * 1024


def _error(message, status, code="invalid"):
    return JsonResponse({"error": message, "code": code}, status=status)


@csrf_exempt  # devices authenticate with the token in the body, not with a session cookie
@require_POST
def register(request):
    """POST {"token", "csr", "name"?, "hardware_id"?} -> 201 with the device's certificate."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return _error("the Content-Length header is not a number", 400)
    if length > MAX_BODY:
        return _error(f"the request is larger than {MAX_BODY} bytes", 413, "too_large")
    try:
        data = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: arrays nested thousands deep
        return _error("the body must be a JSON object", 400)
    if not isinstance(data, dict):
        return _error("the body must be a JSON object", 400)
    fields = {"token": data.get("token"), "csr": data.get("csr"), "name": data.get("name") or "", "hardware_id": data.get("hardware_id") or ""}
    for key, value in fields.items():
        if not isinstance(value, str):
            return _error(f"{key} must be a string", 400)
    if not fields["token"]:
        return _error("a registration token is required", 400)
    if not fields["csr"]:
        return _error("a CSR is required", 400)
    try:
        registration = device_register(**fields)
    except ApplicationError as exc:
        return _error(exc.message, exc.status, exc.code)
    device = registration.device
    return JsonResponse(
        {
            "uuid": str(device.uuid),
            "name": device.name,
            "factory": device.factory.name,
            "production": device.is_production,
            "tag": device.tag,
            "group": device.group.name if device.group_id else None,
            "hardware_id": device.hardware_id,
            "certificate": registration.certificate,
            "ca_certificate": registration.ca_certificate,
            "gateway": gateway_endpoint(),
        },
        status=201,
    )
