"""The REST API's framework: token authentication, factory scoping, JSON errors, OpenAPI schema,
CI targets and the audit log. Helpers here are shared by the other API test modules."""
import json

import pytest
from django.test import Client

from factory.models import AuditEntry, CiTarget
from factory.services import api_token_create, api_token_revoke
from factory.tuf.services.repository import ci_build_publish

API = "/api/v1"


class ApiClient:
    """Django's test client speaking JSON with a token, paths relative to the factory."""

    def __init__(self, client, token=None, factory="acme", scheme="Token"):
        self.client = client
        self.token = token
        self.factory = factory
        self.scheme = scheme

    def url(self, path):
        return path if path.startswith(API) else f"{API}/factories/{self.factory}/{path.lstrip('/')}"

    def _headers(self):
        return {"HTTP_AUTHORIZATION": f"{self.scheme} {self.token}"} if self.token else {}

    def get(self, path, params=None):
        return self.client.get(self.url(path), params or {}, **self._headers())

    def post(self, path, payload=None):
        return self.client.post(self.url(path), json.dumps(payload if payload is not None else {}), content_type="application/json", **self._headers())

    def patch(self, path, payload):
        return self.client.patch(self.url(path), json.dumps(payload), content_type="application/json", **self._headers())

    def delete(self, path):
        return self.client.delete(self.url(path), **self._headers())


def token_of(user, factory):
    return api_token_create(user=user, factory=factory)[1]


@pytest.fixture
def tokens(factory, other_factory, alice, bob, carol, dave, eve):
    return {
        "alice": token_of(alice, factory),
        "bob": token_of(bob, factory),
        "carol": token_of(carol, factory),
        "dave": token_of(dave, factory),
        "eve": token_of(eve, other_factory),
    }


@pytest.fixture
def as_user(client, tokens):
    return lambda name, **kwargs: ApiClient(client, tokens[name], **kwargs)


def assert_error(response, status, code=None):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    if code:
        assert body["code"] == code, body
    return body


# --- authentication and scoping ----------------------------------------------------------------


def test_openapi_schema_is_served_without_a_token(client):
    response = client.get(f"{API}/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "Breakwater API"
    assert f"{API}/factories/{{factory}}/waves/{{wave}}/rollout" in schema["paths"]
    assert schema["components"]["securitySchemes"]["TokenAuth"]["scheme"] == "bearer"


def test_whoami_with_token_and_bearer_schemes(client, tokens):
    for scheme in ("Token", "Bearer", "token"):
        body = ApiClient(client, tokens["bob"], scheme=scheme).get(f"{API}/whoami").json()
        assert body["user"] == "bob" and body["factory"] == "acme" and body["role"] == "release-manager"


@pytest.mark.parametrize(
    "header",
    [None, "", "Token", "Token ", "Basic Ym9iOnB3", "Token bw_nope_nope", "Bearer not-a-breakwater-token", "Token bw_" + "x" * 5000],
)
def test_missing_malformed_or_unknown_token_is_401(client, factory, header):
    headers = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    response = client.get(f"{API}/factories/acme/waves/", **headers)
    body = assert_error(response, 401, "unauthenticated")
    assert "token" in body["detail"].lower()
    assert "Token" in response["WWW-Authenticate"]


def test_revoked_token_is_401(client, factory, bob):
    token, plain = api_token_create(user=bob, factory=factory)
    assert ApiClient(client, plain).get("devices/").status_code == 200
    api_token_revoke(token=token, actor=bob)
    assert_error(ApiClient(client, plain).get("devices/"), 401, "unauthenticated")


def test_disabled_user_token_is_401(client, factory, bob, tokens):
    bob.is_active = False
    bob.save()
    assert_error(ApiClient(client, tokens["bob"]).get("devices/"), 401)


def test_token_of_another_factory_is_403_even_for_an_unknown_factory(as_user):
    eve = as_user("eve")
    body = assert_error(eve.get("devices/"), 403, "forbidden")
    assert "globex" in body["detail"] and "acme" in body["detail"]
    assert_error(as_user("eve", factory="no-such-factory").get("devices/"), 403, "forbidden")
    assert as_user("eve", factory="globex").get("devices/").status_code == 200


def test_token_of_a_user_who_lost_their_role_is_403(as_user, bob, factory):
    from factory.models import Membership

    Membership.objects.filter(user=bob, factory=factory).delete()
    body = assert_error(as_user("bob").get("devices/"), 403, "forbidden")
    assert "no longer has a role" in body["detail"]


def test_unknown_api_path_is_a_json_404(client, tokens):
    assert_error(client.get(f"{API}/no/such/thing"), 404, "not_found")
    # Found by schemathesis: a newline in a path parameter matches no route, and a write to an
    # unknown path met the CSRF check (an HTML 403); as API clients do, this one sends no CSRF token.
    bob = ApiClient(Client(enforce_csrf_checks=True), tokens["bob"])
    for path in ("groups/%0A", "device-lists/a%0Ab", "groups/%C2%88%23%0A7", "no/such/thing"):
        assert_error(bob.get(path), 404, "not_found")
        assert_error(bob.delete(path), 404, "not_found")
        assert_error(bob.patch(path, {"name": "x"}), 404, "not_found")
        assert_error(bob.post(path, {}), 404, "not_found")


# --- input validation never gives a 500 ----------------------------------------------------------


def test_validation_errors_are_400_with_field_names(as_user):
    bob = as_user("bob")
    body = assert_error(bob.get("devices/", {"page": "zero"}), 400, "invalid")
    assert body["detail"].startswith("page:")
    assert body["errors"][0]["field"] == "page"
    assert_error(bob.get("devices/", {"per_page": 100000}), 400, "invalid")
    body = assert_error(bob.post("targets/", {"version": "x", "hardware_ids": [], "tags": ["t"]}), 400, "invalid")
    assert {e["field"] for e in body["errors"]} >= {"version", "hardware_ids"}


def test_malformed_json_body_is_400(client, tokens):
    response = client.post(
        f"{API}/factories/acme/groups/", "{not json", content_type="application/json", HTTP_AUTHORIZATION=f"Token {tokens['bob']}"
    )
    assert_error(response, 400, "invalid")


def test_nul_characters_are_refused_before_reaching_the_database(as_user):
    bob = as_user("bob")
    assert_error(bob.get("devices/", {"tag": "prod\x00uction"}), 400)
    assert_error(bob.post("groups/", {"name": "can\x00ary"}), 400, "invalid")
    assert_error(bob.post("groups/", {"name": "canary", "description": "\ud800"}), 400, "invalid")


def test_huge_integers_are_400_not_a_database_overflow(as_user):
    bob = as_user("bob")
    assert_error(bob.get("targets/", {"version": 2**40}), 400, "invalid")
    assert_error(bob.post("targets/", {"version": 2**40, "hardware_ids": ["hw"], "tags": ["t"]}), 400, "invalid")


# --- CI targets --------------------------------------------------------------------------------


def test_ci_publishes_a_build_and_lists_it(as_user, factory):
    bob = as_user("bob")
    sha = "ab" * 32
    response = bob.post(
        "targets/", {"version": 42, "hardware_ids": ["intel-corei7-64", "raspberrypi4-64"], "tags": ["production"], "targets": {"raspberrypi4-64": {"sha256": sha, "length": 1234}}}
    )
    assert response.status_code == 201, response.content
    build = response.json()
    assert build["version"] == 42
    assert [t["name"] for t in build["targets"]] == ["intel-corei7-64-lmp-42", "raspberrypi4-64-lmp-42"]
    pi = CiTarget.objects.get(factory=factory, name="raspberrypi4-64-lmp-42")
    assert (pi.sha256, pi.length, pi.tags) == (sha, 1234, ["production"])
    assert AuditEntry.objects.filter(factory=factory, action="targets.publish", target="42", actor_name="bob").exists()

    ci_build_publish(factory=factory, version=43, hardware_ids=["intel-corei7-64"], tags=["devel"])
    listing = bob.get("targets/").json()
    assert [b["version"] for b in listing["items"]] == [43, 42]
    assert bob.get("targets/", {"tag": "production"}).json()["items"][0]["version"] == 42
    assert bob.get("targets/", {"hardware_id": "raspberrypi4-64"}).json()["total"] == 1
    page = bob.get("targets/", {"per_page": 1, "page": 1}).json()
    assert page["total"] == 2 and page["next"] == 2 and len(page["items"]) == 1


def test_publishing_a_build_twice_is_409_and_changes_nothing(as_user, factory):
    bob = as_user("bob")
    assert bob.post("targets/", {"version": 7, "hardware_ids": ["hw"], "tags": ["t"]}).status_code == 201
    assert_error(bob.post("targets/", {"version": 7, "hardware_ids": ["hw", "hw2"], "tags": ["t"]}), 409, "conflict")
    assert CiTarget.objects.filter(factory=factory, version=7).count() == 1


@pytest.mark.parametrize(
    "custom, message",
    [
        ({"ratio": 0.5}, "no fractional numbers"),  # found by schemathesis: a 500 while signing the CI targets
        ({"a": [{"b": -1.2e-08}]}, "no fractional numbers"),
        ({"note": "nul\x00inside"}, "NUL"),
        ({"nested": {"key\x00": 1}}, "NUL"),
        ({"s": ["\ud800"]}, "valid Unicode"),
        ({"deep": json.loads("[" * 40 + "]" * 40)}, "levels deep"),
        ({"big": "x" * (65 * 1024)}, "larger than 64 KiB"),
    ],
)
def test_custom_that_signed_metadata_or_the_database_cannot_hold_is_400(as_user, factory, custom, message):
    body = assert_error(as_user("bob").post("targets/", {"version": 8, "hardware_ids": ["hw"], "tags": ["t"], "custom": custom}), 400)
    assert message in body["detail"]
    assert not CiTarget.objects.filter(factory=factory, version=8).exists()


def test_custom_fields_reach_every_target_of_the_build(as_user, factory):
    custom = {"build": {"url": "https://ci.example.com/1", "attempt": 2, "ok": True, "notes": None, "steps": ["a", "b"]}}
    assert as_user("bob").post("targets/", {"version": 9, "hardware_ids": ["hw", "hw2"], "tags": ["t"], "custom": custom}).status_code == 201
    assert [t.custom["build"] for t in CiTarget.objects.filter(factory=factory, version=9)] == [custom["build"]] * 2


def test_artifact_for_an_unlisted_hardware_id_is_400(as_user, factory):
    response = as_user("bob").post("targets/", {"version": 8, "hardware_ids": ["hw"], "tags": ["t"], "targets": {"other": {"sha256": "a" * 64, "length": 1}}})
    assert_error(response, 400, "invalid")
    assert not CiTarget.objects.filter(factory=factory, version=8).exists()


@pytest.mark.parametrize("user", ["carol", "dave"])
def test_qa_and_support_cannot_publish_builds(as_user, factory, user):
    assert_error(as_user(user).post("targets/", {"version": 9, "hardware_ids": ["hw"], "tags": ["t"]}), 403, "forbidden")
    assert not CiTarget.objects.filter(factory=factory, version=9).exists()


# --- audit log ---------------------------------------------------------------------------------


def test_audit_log_is_filtered_paged_and_scoped_to_the_factory(as_user, factory, other_factory):
    ci_build_publish(factory=factory, version=1, hardware_ids=["hw"], tags=["t"])
    ci_build_publish(factory=other_factory, version=1, hardware_ids=["hw"], tags=["t"])
    as_user("bob").post("groups/", {"name": "canary"})
    dave = as_user("dave")
    entries = dave.get("audit/", {"per_page": 100}).json()["items"]
    assert entries[0]["action"] == "group.create" and entries[0]["actor"] == "bob"
    assert all(e["action"] != "factory.create" or e["target"] == "acme" for e in entries)
    published = dave.get("audit/", {"action": "targets."}).json()
    assert published["total"] == 1 and published["items"][0]["target"] == "1"
    assert dave.get("audit/", {"actor": "bob", "action": "group"}).json()["total"] == 1


def test_docs_page_works_offline(client):
    page = client.get(f"{API}/docs")
    assert page.status_code == 200
    assert b"cdn." not in page.content and b"/static/ninja/swagger-ui-bundle.js" in page.content
    bundle = client.get("/static/ninja/swagger-ui-bundle.js")
    # Read to the end, which closes the file the response streams (not left to the garbage collector).
    assert bundle.status_code == 200 and b"SwaggerUIBundle" in b"".join(bundle.streaming_content)
