"""The registration endpoints: a new device, which has no certificate yet, trades a registration
token and a CSR for its certificate, its tag and group, and where to find the gateway.

`register` is Breakwater's own; `lmp_register` answers lmp-device-register (FoundriesFactory's
tool) as it expects: token in a header, its fields, 201 with the files it writes to its config
directory."""
import base64
import binascii
import json
import re

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from factory.errors import ApplicationError

from .gateway_identity import gateway_endpoint
from .services import REGISTRATION_TOKEN_PREFIX, device_register
from .sota_config import sota_toml

MAX_BODY = 32 * 1024


def _error(message, status, code="invalid"):
    return JsonResponse({"error": message, "code": code}, status=status)


def _oversized(request):
    """The error for a body too large to read (judged by Content-Length, before reading), or None."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return _error("The Content-Length header is not a number", 400)
    if length > MAX_BODY:
        return _error(f"The request is larger than {MAX_BODY} bytes", 413, "too_large")
    return None


@csrf_exempt  # devices authenticate with the token in the body, not with a session cookie
@require_POST
def register(request):
    """POST {"token", "csr", "name"?, "hardware_id"?} -> 201 with the device's certificate."""
    oversized = _oversized(request)
    if oversized:
        return oversized
    try:
        data = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: arrays nested thousands deep
        return _error("The body must be a JSON object", 400)
    if not isinstance(data, dict):
        return _error("The body must be a JSON object", 400)
    fields = {"token": data.get("token"), "csr": data.get("csr"), "name": data.get("name") or "", "hardware_id": data.get("hardware_id") or ""}
    for key, value in fields.items():
        if not isinstance(value, str):
            return _error(f"{key} must be a string", 400)
    if not fields["token"]:
        return _error("A registration token is required", 400)
    if not fields["csr"]:
        return _error("A CSR is required", 400)
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


LMP_FIELDS = ("uuid", "name", "hardware-id", "csr", "group", "sota-config-dir", "use-ostree-server")
# An absolute path of plain segments: it goes into sota.toml and names where the device keeps
# its key; nothing there needs quotes, spaces or "..".
CONFIG_DIR = re.compile(r"^/(?:[A-Za-z0-9_.-]+/?)*\Z")
MAX_TEXT_FIELD = 256
MAX_OVERRIDE = 1024


def _lmp_token(request):
    """The registration token of an lmp-device-register request: `OSF-TOKEN: <token>`, or
    `Authorization: Bearer <token>` (its OAuth flow sends the token base64-encoded)."""
    token = request.headers.get("OSF-Token", "").strip()
    if token:
        return token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return ""
    if value.startswith(f"{REGISTRATION_TOKEN_PREFIX}_"):
        return value
    try:
        decoded = base64.b64decode(value, validate=True).decode("ascii").strip()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return value
    return decoded if decoded.startswith(f"{REGISTRATION_TOKEN_PREFIX}_") else value


def _overrides_check(overrides):
    """lmp-device-register's overrides: {"section": {"key": "value"}} of strings. Checked and not
    applied: the token decides the tag and Breakwater the servers (a device cannot pick them)."""
    if overrides in (None, "", {}):
        return None
    if not isinstance(overrides, dict):
        return "overrides must be an object of sections"
    for section, values in overrides.items():
        if not isinstance(values, dict) or not all(isinstance(v, str) and len(v) <= MAX_OVERRIDE for v in values.values()):
            return f"overrides.{section[:40]} must be an object of strings"
    return None


@csrf_exempt  # lmp-device-register authenticates with its token header, not a session cookie
@require_http_methods(["HEAD", "POST"])
def lmp_register(request):
    """POST lmp-device-register's JSON -> 201 {"client.pem", "root.crt", "sota.toml"}."""
    if request.method == "HEAD":
        # The tool pings the URL before it registers: a quiet "here" rather than a 405 that
        # every registration would log as a warning.
        return HttpResponse(status=204)
    oversized = _oversized(request)
    if oversized:
        return oversized
    token = _lmp_token(request)
    if not token:
        return _error("Send the registration token in an OSF-TOKEN header (or Authorization: Bearer)", 401, "unauthenticated")
    try:
        data = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _error("The body must be a JSON object", 400)
    if not isinstance(data, dict):
        return _error("The body must be a JSON object", 400)
    fields = {}
    for key in LMP_FIELDS:
        value = data.get(key, "")
        # lmp-device-register writes every value as a JSON string ("true", not true).
        if not isinstance(value, str):
            return _error(f"{key} must be a string", 400)
        if key != "csr" and (len(value) > MAX_TEXT_FIELD or not value.isprintable()):
            return _error(f"{key} must be at most {MAX_TEXT_FIELD} printable characters", 400)
        fields[key] = value.strip()
    problem = _overrides_check(data.get("overrides"))
    if problem:
        return _error(problem, 400)
    for required in ("uuid", "csr", "hardware-id"):
        if not fields[required]:
            return _error(f"{required} is required", 400)
    config_dir = fields["sota-config-dir"] or "/var/sota"
    if not CONFIG_DIR.match(config_dir) or ".." in config_dir.split("/") or len(config_dir) > 200:
        return _error("The sota-config-dir field must be an absolute path of letters, digits and . _ - segments", 400)
    if fields["use-ostree-server"] not in ("", "true", "false"):
        return _error('The use-ostree-server field must be "true" or "false"', 400)
    try:
        registration = device_register(
            token=token,
            csr=fields["csr"],
            name=fields["name"],
            hardware_id=fields["hardware-id"],
            expected_uuid=fields["uuid"],
            expected_group=fields["group"],
        )
    except ApplicationError as exc:
        return _error(exc.message, exc.status, exc.code)
    device = registration.device
    # Flat {file name: content}: the tool writes each as a file in sota-config-dir.
    return JsonResponse(
        {
            "client.pem": registration.certificate + registration.ca_certificate,
            "root.crt": gateway_endpoint()["ca_certificate"],
            "sota.toml": sota_toml(tag=device.tag, hardware_id=device.hardware_id, config_dir=config_dir),
        },
        status=201,
    )
