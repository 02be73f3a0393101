"""Property-based testing of the whole API from its OpenAPI schema: generated requests, valid
and invalid, never get a server error, and every answer matches the schema.

Bounded for CI: a fixed number of examples per operation (BREAKWATER_SCHEMATHESIS_EXAMPLES,
default 20), run in process through the WSGI application against one prepared factory.
bench/fuzz_api.py runs the same with a larger budget on PostgreSQL and prints what was tried
(from the JSON this module writes to BREAKWATER_SCHEMATHESIS_REPORT, when set).
"""
import json
import os
import time
import uuid
import zlib
from pathlib import Path

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis import checks

from factory import ratelimit
from factory.project.wsgi import application
from tests.test_authorization_matrix import world  # noqa: F401  (module-scoped fixture)

EXAMPLES = int(os.environ.get("BREAKWATER_SCHEMATHESIS_EXAMPLES", 20))
# Derandomized (the same requests every run, so CI is reproducible) unless set to 0: a longer run
# then tries new requests each time; a failure still prints the curl command that reproduces it.
DERANDOMIZE = os.environ.get("BREAKWATER_SCHEMATHESIS_DERANDOMIZE", "1") != "0"
REPORT = os.environ.get("BREAKWATER_SCHEMATHESIS_REPORT")
TRIED = {}  # operation -> test cases run, status codes answered, seconds (failures: pytest's report)

schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", application)

# No server error, and every answer as documented (status, content type, body, headers); requests
# without the token must be refused. Not checked: that invalid input is refused (unknown query
# parameters are ignored by design) and that valid input succeeds (business rules refuse some:
# an unknown wave is a 404, a second rollout to a whole group a 409).
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.ignored_auth,
]

# Existing objects of `world`, so that some generated requests reach past the lookups.
KNOWN = {"wave": "v2.0-update", "group": "canary", "name": "picks", "tag": "production"}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if REPORT:
        checks_run = [check.__name__ for check in CHECKS]
        summary = {"examples_per_operation": EXAMPLES, "derandomized": DERANDOMIZE, "checks": checks_run, "operations": TRIED}
        Path(REPORT).write_text(json.dumps(summary, indent=1))


@pytest.fixture
def connection_kept():
    """Calling the WSGI application sends request_started/finished, whose handler closes the
    database connection in the middle of the test's transaction (on PostgreSQL). Django's own
    test client detaches it the same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def _steer(case, world):
    """Requests go to the token's factory; half of the other path parameters name real objects."""
    params = case.path_parameters or {}
    if "factory" in params:
        params["factory"] = "acme"
    known = {**KNOWN, "device": world["device"], "rollout": world["rollout"], "prefix": world["token_prefix"]}
    for name, value in list(params.items()):
        if name in known and zlib.crc32(repr(value).encode()) % 2 == 0:
            params[name] = known[name]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))
def test_api_never_fails_with_a_server_error(db, world, connection_kept, case):
    _steer(case, world)
    # ignored_auth sends each case without the token too; past 30 such failures the client's
    # address is throttled (429) and the cases after it would test nothing else.
    ratelimit.NAMESPACE = f"schemathesis-{uuid.uuid4().hex}"
    tried = TRIED.setdefault(case.operation.label, {"cases": 0, "statuses": {}, "seconds": 0.0})
    tried["cases"] += 1
    started = time.perf_counter()
    try:
        response = case.call_and_validate(headers={"Authorization": f"Token {world['tokens']['alice']}"}, checks=CHECKS)
    finally:
        tried["seconds"] += time.perf_counter() - started
    status = str(response.status_code)
    tried["statuses"][status] = tried["statuses"].get(status, 0) + 1
