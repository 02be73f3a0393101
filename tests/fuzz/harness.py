"""What the fuzzing properties share: the budget, a device talking to the gateway's WSGI app in
process with a real certificate, what an answer may look like, and a tally of what was tried
that bench/fuzz_gateway.py reads (BREAKWATER_FUZZ_REPORT).

The gateway server hands the gateway the verified client certificate's DER in the environ
(`environ[PEER_CERTIFICATE]`, after the TLS handshake); in process the tests put a device's
certificate there, exactly as tests/factory/tuf_client.py does.
"""
import io
import json
import logging
import os
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from django.db import DatabaseError, transaction
from hypothesis import HealthCheck, Phase, settings

from devices import checkins
from factory.project.gateway.http1 import PEER_CERTIFICATE
from devices.reports import target_version
from devices.models import Device, DeviceEvent

EXAMPLES = int(os.environ.get("BREAKWATER_FUZZ_EXAMPLES", "25"))
# The real gateway process costs a TLS connection per case: a fifth of the budget.
TLS_EXAMPLES = max(3, EXAMPLES // 5)
# Derandomized in CI (the same cases every run); bench/fuzz_gateway.py --random tries new ones.
DERANDOMIZE = os.environ.get("BREAKWATER_FUZZ_DERANDOMIZE", "1") != "0"
REPORT = os.environ.get("BREAKWATER_FUZZ_REPORT")


def fuzz(examples=None):
    return settings(
        max_examples=examples or EXAMPLES,
        deadline=None,
        derandomize=DERANDOMIZE,
        database=None,
        print_blob=not DERANDOMIZE,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    )


# --- the tally ------------------------------------------------------------------------------------


@dataclass
class Tally:
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    server_errors: int = 0
    events_accepted: int = 0
    events_lost: int = 0


TALLY = defaultdict(Tally)
_tally_lock = threading.Lock()


def count(property_name, *, status=None, accepted=0, lost=0):
    with _tally_lock:
        tally = TALLY[property_name]
        if status is not None:
            tally.statuses[str(status)] += 1
            tally.server_errors += status >= 500
        tally.events_accepted += accepted
        tally.events_lost += lost


def case(property_name):
    with _tally_lock:
        TALLY[property_name].cases += 1


def report_write():
    if not REPORT:
        return
    path = Path(REPORT)
    previous = json.loads(path.read_text()) if path.exists() else {}
    for name, tally in TALLY.items():
        previous[name] = {
            "cases": tally.cases,
            "statuses": dict(tally.statuses),
            "server_errors": tally.server_errors,
            "events_accepted": tally.events_accepted,
            "events_lost": tally.events_lost,
        }
    path.write_text(json.dumps(previous, indent=1))


# --- a device in process -----------------------------------------------------------------------


def der_of(pem_or_cert):
    cert = x509.load_pem_x509_certificate(pem_or_cert.encode()) if isinstance(pem_or_cert, str) else pem_or_cert
    return cert.public_bytes(Encoding.DER)


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes
    logged: list  # what the gateway logged at ERROR while answering (its tracebacks' last lines)

    def json(self):
        return json.loads(self.body)


class _Logged(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.lines = []

    def emit(self, record):
        line = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            line += f": {type(record.exc_info[1]).__name__}: {str(record.exc_info[1])[:200]}"
        self.lines.append(line)


def environ_for(der, *, method="GET", path="/device", headers=None, body=b"", content_length=None, query=""):
    """A WSGI environ as the gateway server builds it: PATH_INFO percent-decoded and read as latin-1,
    headers as HTTP_* latin-1 strings."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "gateway.test",
        "SERVER_PORT": "8443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(body),
        PEER_CERTIFICATE: der,
    }
    if body or content_length is not None:
        environ["CONTENT_LENGTH"] = str(len(body)) if content_length is None else content_length
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        else:
            environ[f"HTTP_{key}"] = value
    return environ


def call(gateway, environ):
    """One request through the gateway's WSGI interface.

    Run inside a savepoint: on PostgreSQL a query the database refuses would otherwise abort the
    test's transaction and every later case with it. The gateway's recovery from a dropped
    connection (closing every connection) would end the test's transaction too, so it is
    recorded instead; the 503 it answers is what the property judges.
    """
    answer = {}
    handler = _Logged()
    log = logging.getLogger("breakwater.gateway")
    log.addHandler(handler)

    def start_response(status, headers):
        answer["status"] = int(status.split()[0])
        answer["headers"] = {k.lower(): v for k, v in headers}

    try:
        with transaction.atomic():
            answer["body"] = b"".join(gateway(environ, start_response))
    except DatabaseError:
        pass  # the savepoint's release failed after the gateway's own failed query: answered already
    finally:
        log.removeHandler(handler)
    return Answer(answer["status"], answer["headers"], answer["body"], handler.lines)


# --- what an answer may be -------------------------------------------------------------------------

DOCUMENTED = {200, 202, 304, 400, 403, 404, 405, 413}


def check_answer(answer, request):
    """Never a server error; a documented status; JSON unless a 304 or a target file's bytes."""
    assert answer.status < 500, f"{answer.status} for {request}; gateway logged {answer.logged}"
    assert answer.status in DOCUMENTED, f"undocumented {answer.status} for {request}"
    if answer.status == 304:
        assert answer.body == b""
        return None
    if answer.status == 200 and answer.headers.get("content-type") == "application/octet-stream":
        return None
    assert answer.headers.get("content-type") == "application/json", f"{answer.headers} for {request}"
    data = json.loads(answer.body)
    if answer.status >= 400:
        assert isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"], f"{data!r} for {request}"
        assert len(data["error"]) < 500, f"error message {data['error'][:300]!r}"
    return data


def reproducer(environ):
    """A short Python line that sends the same request in process (for failure messages)."""
    shown = {k: v for k, v in environ.items() if k.startswith("HTTP_") or k in ("REQUEST_METHOD", "PATH_INFO", "CONTENT_LENGTH")}
    body = environ["wsgi.input"].getvalue()
    return f"environ={shown!r} body={body[:300]!r}{'...' if len(body) > 300 else ''}"


# --- state: what a refused request must leave alone --------------------------------------------------


def buffer_empty():
    """Drop whatever an earlier test left in the check-in buffer (a poisoned row would make every
    later flush fail)."""
    buf = checkins.buffer()
    while buf.drain_events():
        pass
    buf.drain_checkins()


DEVICE_FIELDS = ("name", "is_production", "tag", "group_id", "hardware_id", "target_name", "target_version", "certificate_serial")


def device_rows():
    return {row["id"]: row for row in Device.objects.values("id", *DEVICE_FIELDS, "last_seen", "targets_version_seen")}


def last_event_id():
    return DeviceEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def stored_event(event):
    """An event row as a comparable tuple."""
    return (event.device_id, event.event_type, event.target_name, event.target_version, event.success, event.detail, event.reported_at)


def expected_event(device_id, item):
    """What a 202'd event must become in the database (the gateway's documented defaults)."""
    target = item.get("target") or ""
    reported = item.get("time")
    reported_at = None
    if reported is not None:
        reported_at = datetime.fromisoformat(str(reported).replace("Z", "+00:00"))
        if reported_at.tzinfo is None:
            reported_at = reported_at.replace(tzinfo=timezone.utc)
    return (device_id, item["type"], target, item.get("version", target_version(target)), item.get("success"), item.get("detail") or "", reported_at)
