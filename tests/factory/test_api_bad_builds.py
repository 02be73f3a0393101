"""The REST API of bad builds: mark and unmark (POST/DELETE /targets/{version}/bad), the `bad`
field of builds, waves and wave status, and the refusals as JSON errors."""
import json

import pytest

from factory.builds import build_bad, build_mark_bad
from factory.models import AuditEntry
from factory.project.api import api
from factory.tuf.services.repository import ci_build_publish
from tests.tuf_helpers import offline_targets_key
from waves.services import wave_init, wave_sign

from .test_api import as_user, assert_error, tokens  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db

HWIDS = ["intel-corei7-64", "raspberrypi4-64"]


@pytest.fixture
def builds(factory):
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=["production"])


def unmark(client, reason):
    # DELETE with a JSON body: the reason for unmarking is recorded in the audit log.
    return client.client.delete(client.url("targets/42/bad"), json.dumps({"reason": reason}), content_type="application/json", **client._headers())


def test_a_release_manager_marks_and_unmarks_a_build_and_the_build_list_says_so(factory, builds, as_user):
    bob = as_user("bob")
    response = bob.post("targets/42/bad", {"reason": "boot loop <script>alert(1)</script>"})
    assert response.status_code == 200, response.content
    bad = response.json()["bad"]
    assert bad["reason"] == "boot loop <script>alert(1)</script>" and bad["by"] == "bob" and bad["at"]
    listing = {b["version"]: b["bad"] for b in bob.get("targets/").json()["items"]}
    assert listing[41] is None and listing[42]["reason"].startswith("boot loop")
    assert bob.get("targets/", {"version": 42}).json()["items"][0]["bad"]["by"] == "bob"

    response = unmark(bob, "false alarm")
    assert response.status_code == 200, response.content
    assert response.json()["bad"] is None and build_bad(factory=factory, version=42) is None
    assert [e.action for e in AuditEntry.objects.filter(action__startswith="build.").order_by("id")] == ["build.mark-bad", "build.unmark-bad"]


def test_errors_unknown_build_404_already_marked_409_bad_reason_400(factory, builds, as_user):
    bob = as_user("bob")
    assert_error(bob.post("targets/99/bad", {"reason": "x"}), 404, "not_found")
    assert_error(bob.post("targets/42/bad", {"reason": ""}), 400)
    assert_error(bob.post("targets/42/bad", {"reason": "  "}), 400, "invalid")
    assert_error(bob.post("targets/42/bad", {"reason": "x" * 501}), 400)
    assert_error(bob.post("targets/42/bad", {"reason": "a\x00b"}), 400)
    assert_error(bob.post("targets/42/bad", {}), 400)
    assert_error(unmark(bob, "x"), 409, "conflict")
    assert bob.post("targets/42/bad", {"reason": "first"}).status_code == 200
    body = assert_error(bob.post("targets/42/bad", {"reason": "second"}), 409, "conflict")
    assert "already marked bad (first, by bob" in body["detail"]


@pytest.mark.parametrize("who", ["carol", "dave"])
def test_other_roles_get_403_and_change_nothing(factory, bob, builds, as_user, who):
    client = as_user(who)
    assert_error(client.post("targets/42/bad", {"reason": "x"}), 403, "forbidden")
    assert build_bad(factory=factory, version=42) is None
    build_mark_bad(factory=factory, actor=bob, version=42, reason="kept")
    assert_error(unmark(client, "x"), 403, "forbidden")
    assert build_bad(factory=factory, version=42).reason == "kept"
    assert client.get("targets/").json()["items"][0]["bad"]["reason"] == "kept"  # but they may see it


def test_waves_of_a_bad_build_carry_it_and_refusals_name_the_build_reason_and_who(factory, bob, builds, as_user):
    archive = offline_targets_key(factory=factory, actor=bob)
    wave_sign(wave=wave_init(factory=factory, actor=bob, name="v42", version=42, tag="production"), actor=bob, key_archive=archive)
    client = as_user("bob")
    assert client.get("waves/v42").json()["bad"] is None
    build_mark_bad(factory=factory, actor=bob, version=42, reason="boot loop")
    for shown in (client.get("waves/v42").json(), client.get("waves/").json()["items"][0], client.get("status").json()["active_waves"][0]):
        assert shown["bad"]["reason"] == "boot loop" and shown["bad"]["by"] == "bob"
    assert client.get("waves/v42/status").json()["bad"]["reason"] == "boot loop"

    body = assert_error(client.post("waves/v42/rollout", {"limit": 1, "dry_run": True}), 409, "build_bad")
    assert body["detail"].startswith("Build 42 is marked bad (boot loop, by bob on ") and body["detail"].endswith("): unmark it first")
    assert_error(client.post("waves/v42/rollout", {"limit": 1}), 409, "build_bad")
    assert_error(client.post("waves/v42/complete"), 409, "build_bad")
    client.post("waves/v42/cancel")
    assert_error(client.post("waves/", {"name": "again", "version": 42, "tag": "production", "dry_run": True}), 409, "build_bad")


def test_the_openapi_schema_documents_both_doors_and_the_bad_field():
    schema = api.get_openapi_schema()
    path = schema["paths"]["/api/v1/factories/{factory}/targets/{version}/bad"]
    assert set(path) == {"post", "delete"} and 409 in path["post"]["responses"] and 403 in path["delete"]["responses"]
    components = schema["components"]["schemas"]
    assert "bad" in components["CiBuildOut"]["properties"] and "bad" in components["WaveOut"]["properties"]
    assert set(components["BadBuildOut"]["properties"]) == {"version", "reason", "by", "at"}
