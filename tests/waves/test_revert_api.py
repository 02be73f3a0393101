"""POST /waves/revert/: a tag taken back to an earlier build through the REST API, signed on the
release manager's machine or on the server, with clear refusals that change nothing."""
import base64

import pytest

from factory.models import AuditEntry, RereleaseVersion
from factory.tuf.keys import archive_signatures
from tests.factory.test_api import API, as_user, assert_error, tokens  # noqa: F401  (fixtures)
from waves.models import Wave
from waves.services import wave_complete

from .conftest import HWIDS, TAG, make_wave


@pytest.fixture
def bad_release(factory, bob, builds, offline_key):
    """41 then 42 completed on the production tag: 42 is the bad build to go back from."""
    wave_complete(wave=make_wave(factory, bob, offline_key, "v41", 41), actor=bob)
    return wave_complete(wave=make_wave(factory, bob, offline_key, "v42", 42), actor=bob)


def test_revert_returns_the_re_release_to_sign_and_local_signatures_activate_it(as_user, factory, bad_release, offline_key):
    bob = as_user("bob")
    response = bob.post("waves/revert/", {"name": "back-to-41", "tag": TAG, "to_version": 41, "prune": [42]})
    assert response.status_code == 201, response.content
    created = response.json()
    # CI published 40-43: the re-release takes 44, the next number of the one sequence.
    assert (created["version"], created["rerelease_of"], created["build_version"], created["status"]) == (44, 41, 41, "unsigned")
    body = {
        "signatures": archive_signatures(payload=base64.b64decode(created["signing_payload"]), archive_bytes=offline_key),
        "aktualizr_signatures": archive_signatures(payload=base64.b64decode(created["aktualizr_signing_payload"]), archive_bytes=offline_key),
    }
    signed = bob.post("waves/back-to-41/sign", body).json()
    assert signed["status"] == "active" and signed["rerelease_of"] == 41
    targets = bob.get("waves/back-to-41?targets=true").json()["targets"]["signed"]["targets"]
    for hwid in HWIDS:
        assert targets[f"{hwid}-lmp-44"]["hashes"] == targets[f"{hwid}-lmp-41"]["hashes"]
        assert targets[f"{hwid}-lmp-44"]["custom"]["rerelease_of"] == {"target": f"{hwid}-lmp-41", "version": 41}
        assert f"{hwid}-lmp-42" not in targets
    listed = bob.get("waves/").json()["items"][0]
    assert (listed["name"], listed["rerelease_of"], listed["build_version"]) == ("back-to-41", 41, 41)
    assert AuditEntry.objects.filter(action="wave.revert", target="back-to-41").exists()


def test_a_dry_run_then_its_signatures_create_the_re_release_signed_in_one_call(as_user, factory, bad_release, offline_key):
    bob = as_user("bob")
    ask = {"name": "back", "tag": TAG, "to_version": 41, "expires_days": 30}
    preview = bob.post("waves/revert/", {**ask, "dry_run": True})
    assert preview.status_code == 200 and preview.json()["version"] == 44
    assert not RereleaseVersion.objects.exists() and not Wave.objects.filter(name="back").exists()
    preview = preview.json()
    body = {
        "name": "back", "tag": TAG, "to_version": 41, "expires_at": preview["expires_at"],
        "signatures": archive_signatures(payload=base64.b64decode(preview["signing_payload"]), archive_bytes=offline_key),
        "aktualizr_signatures": archive_signatures(payload=base64.b64decode(preview["aktualizr_signing_payload"]), archive_bytes=offline_key),
    }  # fmt: skip
    created = bob.post("waves/revert/", body)
    assert created.status_code == 201, created.content
    assert created.json()["status"] == "active"


def test_revert_with_a_key_archive_signs_on_the_server(as_user, bad_release, offline_key):
    body = {"name": "back", "tag": TAG, "to_version": 41, "key_archive": base64.b64encode(offline_key).decode()}
    assert as_user("bob").post("waves/revert/", body).json()["status"] == "active"


def test_revert_errors_change_nothing(as_user, factory, bad_release, offline_key):
    bob = as_user("bob")
    assert "neither in the production targets" in assert_error(bob.post("waves/revert/", {"name": "b", "tag": TAG, "to_version": 99}), 404, "not_found")["detail"]
    assert "Cannot prune 40" in assert_error(bob.post("waves/revert/", {"name": "b", "tag": TAG, "to_version": 41, "prune": [40]}), 400)["detail"]
    assert_error(bob.post("waves/revert/", {"name": "bad name", "tag": TAG, "to_version": 41}), 400, "invalid")
    assert_error(bob.post("waves/revert/", {"name": "b", "tag": TAG, "to_version": 41, "key_archive": "not base64!"}), 400, "invalid")
    assert_error(bob.post("waves/revert/", {"name": "b", "tag": TAG}), 400, "invalid")
    assert "already exists" in assert_error(bob.post("waves/revert/", {"name": "v42", "tag": TAG, "to_version": 41}), 409, "conflict")["detail"]
    stranger_sigs = [{"keyid": "ab" * 32, "sig": "cd" * 64}]
    assert bob.post("waves/revert/", {"name": "b", "tag": TAG, "to_version": 41, "signatures": stranger_sigs}).status_code in (400, 403)
    assert Wave.objects.count() == 2 and not RereleaseVersion.objects.exists()
    assert bob.post("waves/revert/", {"name": "b", "tag": TAG, "to_version": 41}).status_code == 201
    body = assert_error(bob.post("waves/revert/", {"name": "c", "tag": TAG, "to_version": 40}), 409, "conflict")
    assert "Wave b is still unsigned" in body["detail"]
    assert list(RereleaseVersion.objects.values_list("version", flat=True)) == [44]


@pytest.mark.parametrize("user", ["carol", "dave"])
def test_roles_that_may_not_release_get_403_and_nothing_changes(as_user, factory, bad_release, offline_key, user):
    body = {"name": "back", "tag": TAG, "to_version": 41, "key_archive": base64.b64encode(offline_key).decode()}
    assert_error(as_user(user).post("waves/revert/", body), 403, "forbidden")
    assert_error(as_user(user).post("waves/revert/", {**body, "dry_run": True}), 403, "forbidden")
    assert Wave.objects.count() == 2 and not RereleaseVersion.objects.exists()
    assert not AuditEntry.objects.filter(action="wave.revert").exists()


def test_the_revert_path_and_the_re_release_fields_are_in_the_openapi_schema(client):
    schema = client.get(f"{API}/openapi.json").json()
    operation = schema["paths"]["/api/v1/factories/{factory}/waves/revert/"]["post"]
    assert operation["operationId"] == "waves_revert"
    assert {"201", "400", "403", "404", "409"} <= set(operation["responses"])
    wave_out = schema["components"]["schemas"]["WaveOut"]["properties"]
    assert {"rerelease_of", "build_version"} <= set(wave_out)
