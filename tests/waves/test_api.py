"""Waves API: init with local or server-side signing, sign, rollout with every option, complete,
cancel, status, list, show, history, factory status and saved device lists."""
import base64
import uuid

from devices.models import Device
from factory.tuf.keys import archive_signatures, key_archive_write, key_generate
from tests.factory.test_api import as_user, assert_error, tokens  # noqa: F401  (fixtures)
from waves.models import SavedDeviceList, Wave, WaveDevice, WaveGroup

from .conftest import TAG


def staged_uuids(wave):
    return {str(u) for u in WaveDevice.objects.filter(wave=wave).values_list("device__uuid", flat=True)}


# --- init and sign ------------------------------------------------------------------------------


def test_init_returns_the_bytes_to_sign_and_local_signatures_activate_the_wave(as_user, factory, builds, offline_key):
    bob = as_user("bob")
    response = bob.post("waves/", {"name": "v2.0-update", "version": 42, "tag": TAG})
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["status"] == "unsigned" and created["signing_payload"]
    payload = base64.b64decode(created["signing_payload"])
    # What the CLI does on the release manager's machine: sign, send only the signatures.
    signatures = archive_signatures(payload=payload, archive_bytes=offline_key)
    # The same key signs the libaktualizr flavour of the same targets in the same step.
    assert created["aktualizr_signing_payload"] and created["aktualizr_signing_payload"] != created["signing_payload"]
    aktualizr = archive_signatures(payload=base64.b64decode(created["aktualizr_signing_payload"]), archive_bytes=offline_key)
    only_tuf = bob.post("waves/v2.0-update/sign", {"signatures": signatures})
    assert only_tuf.status_code == 400 and "aktualizr_signing_payload" in only_tuf.json()["detail"], only_tuf.content
    assert Wave.objects.get(factory=factory, name="v2.0-update").status == "unsigned"
    signed = bob.post("waves/v2.0-update/sign", {"signatures": signatures, "aktualizr_signatures": aktualizr}).json()
    assert signed["aktualizr_signing_payload"] is None
    assert signed["status"] == "active" and signed["signing_payload"] is None
    assert signatures[0]["keyid"] in signed["signed_keyids"]
    assert Wave.objects.get(factory=factory, name="v2.0-update").status == "active"


def test_init_with_a_key_archive_signs_on_the_server_in_one_call(as_user, builds, offline_key):
    body = as_user("bob").post(
        "waves/", {"name": "w", "version": 42, "tag": TAG, "expires_days": 30, "key_archive": base64.b64encode(offline_key).decode()}
    ).json()
    assert body["status"] == "active"


def test_init_dry_run_creates_nothing_and_shows_the_targets(as_user, factory, builds):
    response = as_user("bob").post("waves/", {"name": "w", "version": 42, "tag": TAG, "dry_run": True})
    assert response.status_code == 200
    targets = response.json()["targets"]["signed"]["targets"]
    assert set(targets) == {"intel-corei7-64-lmp-42", "raspberrypi4-64-lmp-42"}
    assert all(t["custom"]["tags"] == [TAG] for t in targets.values())
    assert not Wave.objects.filter(factory=factory).exists()


def test_init_errors(as_user, factory, builds, offline_key):
    bob = as_user("bob")
    assert_error(bob.post("waves/", {"name": "w", "version": 99, "tag": TAG}), 404, "not_found")
    assert_error(bob.post("waves/", {"name": "bad name", "version": 42, "tag": TAG}), 400, "invalid")
    assert_error(bob.post("waves/", {"name": "w", "version": 42, "tag": TAG, "expires_at": "2030-01-01T00:00:00"}), 400, "invalid")
    assert_error(bob.post("waves/", {"name": "w", "version": 42, "tag": TAG, "key_archive": "not base64!"}), 400, "invalid")
    assert not Wave.objects.filter(factory=factory).exists()
    assert bob.post("waves/", {"name": "w", "version": 42, "tag": TAG}).status_code == 201
    assert_error(bob.post("waves/", {"name": "w", "version": 43, "tag": TAG}), 409, "conflict")
    body = assert_error(bob.post("waves/", {"name": "w2", "version": 43, "tag": TAG}), 409, "conflict")
    assert "w" in body["detail"]
    for user in ("carol", "dave"):
        assert_error(as_user(user).post("waves/", {"name": "x", "version": 43, "tag": "t2"}), 403, "forbidden")


def test_signatures_from_an_untrusted_key_are_refused_and_change_nothing(as_user, factory, builds):
    bob = as_user("bob")
    created = bob.post("waves/", {"name": "w", "version": 42, "tag": TAG}).json()
    stranger = key_archive_write([("targets", key_generate())])
    signatures = archive_signatures(payload=base64.b64decode(created["signing_payload"]), archive_bytes=stranger)
    assert bob.post("waves/w/sign", {"signatures": signatures}).status_code in (400, 403)
    assert_error(bob.post("waves/w/sign", {"signatures": [{"keyid": "ab", "sig": "zz"}]}), 400, "invalid")
    assert Wave.objects.get(factory=factory, name="w").status == "unsigned"


def test_signing_an_active_wave_is_409(as_user, wave, offline_key):
    body = assert_error(as_user("bob").post(f"waves/{wave.name}/sign", {"key_archive": base64.b64encode(offline_key).decode()}), 409)
    assert "active" in body["detail"]


# --- rollout ------------------------------------------------------------------------------------


def test_rollout_to_a_group_is_a_full_group_rollout_listing_its_devices(as_user, fleet100, wave):
    body = as_user("bob").post(f"waves/{wave.name}/rollout", {"group": "canary"}).json()
    assert body["full_group"] is True and body["count"] == 5 and body["dry_run"] is False
    assert body["message"].startswith('A Wave is being rolled out to all 5 devices in group "canary"')
    assert {d["name"] for d in body["devices"]} == {f"canary-{i:04d}" for i in range(1, 6)}
    assert WaveGroup.objects.filter(wave=wave, group__name="canary").exists()


def test_a_group_too_large_to_count_in_the_request_is_paged_from_its_rollout(as_user, fleet100, wave, monkeypatch):
    from waves import rollout_counts

    monkeypatch.setattr(rollout_counts, "INLINE_COUNT_MAX", 3)
    bob = as_user("bob")
    body = bob.post(f"waves/{wave.name}/rollout", {"group": "beta"}).json()
    assert body["full_group"] is True and body["count"] is None and body["devices"] == []
    assert body["message"].startswith('A Wave is being rolled out to every device in group "beta"')
    history = {r["id"]: r for r in bob.get(f"waves/{wave.name}/rollouts").json()}
    assert history[body["rollout"]]["device_count"] is None
    page = bob.get(f"waves/{wave.name}/rollouts/{body['rollout']}/devices", {"per_page": 1000}).json()
    assert page["total"] == 20 and {d["group"] for d in page["items"]} == {"beta"}
    rollout_counts.rollout_group_count(rollout_id=body["rollout"])
    assert {r["id"]: r for r in bob.get(f"waves/{wave.name}/rollouts").json()}[body["rollout"]]["device_count"] == 20


def test_rollout_limit_then_uuids_text_with_skipped_reasons(as_user, fleet100, wave, factory):
    bob = as_user("bob")
    first = bob.post(f"waves/{wave.name}/rollout", {"limit": 10}).json()
    assert first["count"] == 10 and len(staged_uuids(wave)) == 10
    already = first["devices"][0]["uuid"]
    test_device = str(Device.objects.filter(factory=factory, is_production=False).first().uuid)
    fresh = [str(u) for u in Device.objects.filter(factory=factory, is_production=True).exclude(uuid__in=staged_uuids(wave)).values_list("uuid", flat=True)[:3]]
    unknown = str(uuid.uuid4())
    text = f"{fresh[0]};{fresh[1]}|{fresh[2]}\n{already}\r\n{test_device} {unknown}"
    body = bob.post(f"waves/{wave.name}/rollout", {"uuids": text}).json()
    assert body["count"] == 3 and {d["uuid"] for d in body["devices"]} == set(fresh)
    assert {s["uuid"]: s["reason"] for s in body["skipped"]} == {already: "already staged", test_device: "test device", unknown: "unknown device"}
    assert len(staged_uuids(wave)) == 13


def test_rollout_percentage_and_group_with_limit(as_user, fleet100, wave):
    bob = as_user("bob")
    body = bob.post(f"waves/{wave.name}/rollout", {"group": "beta", "limit": "10%"}).json()
    assert body["count"] == 2 and all(d["group"] == "beta" for d in body["devices"]) and not body["full_group"]


def test_dry_run_is_allowed_for_qa_and_changes_nothing(as_user, fleet100, wave):
    body = as_user("carol").post(f"waves/{wave.name}/rollout", {"limit": 7, "dry_run": True}).json()
    assert body["dry_run"] and body["count"] == 7 and body["message"].startswith("A Wave would be rolled out to 7 devices")
    assert body["rollout"] is None and not staged_uuids(wave)
    assert_error(as_user("carol").post(f"waves/{wave.name}/rollout", {"limit": 7}), 403, "forbidden")
    assert_error(as_user("dave").post(f"waves/{wave.name}/rollout", {"limit": 7, "dry_run": True}), 403, "forbidden")
    assert not staged_uuids(wave)


def test_rollout_errors(as_user, fleet100, wave):
    bob = as_user("bob")
    assert_error(bob.post(f"waves/{wave.name}/rollout", {}), 400, "invalid")
    assert_error(bob.post(f"waves/{wave.name}/rollout", {"limit": "lots"}), 400, "invalid")
    assert_error(bob.post(f"waves/{wave.name}/rollout", {"limit": 20000}), 400, "invalid")
    body = assert_error(bob.post(f"waves/{wave.name}/rollout", {"uuids": "nope,also-nope"}), 400, "uuids_invalid")
    assert "nope" in body["detail"]
    assert_error(bob.post(f"waves/{wave.name}/rollout", {"group": "no-such-group"}), 404, "not_found")
    assert_error(bob.post("waves/no-such-wave/rollout", {"limit": 1}), 404, "not_found")
    assert bob.post(f"waves/{wave.name}/rollout", {"group": "canary"}).status_code == 200
    assert_error(bob.post(f"waves/{wave.name}/rollout", {"group": "canary"}), 409, "conflict")
    assert_error(bob.post(f"waves/{wave.name}/rollout", {"uuids": [str(uuid.uuid4())]}), 400, "rollout_empty")
    assert len(staged_uuids(wave)) == 0 and WaveGroup.objects.filter(wave=wave).count() == 1


# --- complete, cancel, status, list, show ---------------------------------------------------------


def test_complete_then_cancel_is_409_and_production_targets_follow(as_user, fleet100, wave):
    bob = as_user("bob")
    assert as_user("carol").post(f"waves/{wave.name}/complete").status_code == 403
    done = bob.post(f"waves/{wave.name}/complete").json()
    assert done["status"] == "complete" and done["finished_by"] == "bob"
    body = assert_error(bob.post(f"waves/{wave.name}/cancel"), 409, "conflict")
    assert "complete" in body["detail"]
    production = bob.get(f"targets/production/{TAG}").json()
    assert production["version"] == 42 and {t["name"] for t in production["targets"]} >= {"intel-corei7-64-lmp-42"}
    assert bob.get("targets/production").json() == [{"tag": TAG, "version": 42}]


def test_cancel_then_complete_is_409(as_user, wave):
    bob = as_user("bob")
    assert bob.post(f"waves/{wave.name}/cancel").json()["status"] == "canceled"
    assert_error(bob.post(f"waves/{wave.name}/complete"), 409, "conflict")


def test_status_counts_per_group(as_user, fleet100, wave):
    bob = as_user("bob")
    bob.post(f"waves/{wave.name}/rollout", {"group": "canary"})
    Device.objects.filter(group__name="canary", name__in=["canary-0001", "canary-0002"]).update(target_version=42)
    status = as_user("dave").get(f"waves/{wave.name}/status").json()
    groups = {g["group"]: g for g in status["groups"]}
    assert status["groups"][0]["group"] == "canary"
    assert groups["canary"]["on_wave"] == 2 and groups["canary"]["scheduled"] == 3 and groups["canary"]["rollout_time"]
    assert groups["beta"]["scheduled"] == 0 and groups["(No Group)"]["total"] == 75
    assert groups["canary"]["versions"] == {"42": 2, "41": 3}
    assert status["totals"]["total"] == 100
    assert_error(bob.get(f"waves/{wave.name}/status", {"offline_threshold": 0}), 400, "invalid")


def test_list_show_and_history(as_user, fleet100, wave, factory, bob, offline_key):
    carol = as_user("carol")
    bob_api = as_user("bob")
    first = bob_api.post(f"waves/{wave.name}/rollout", {"group": "canary", "limit": 3}).json()
    bob_api.post(f"waves/{wave.name}/rollout", {"group": "beta"})
    listing = carol.get("waves/", {"status": "active"}).json()
    assert [w["name"] for w in listing["items"]] == [wave.name] and listing["total"] == 1
    assert carol.get("waves/", {"status": "complete"}).json()["items"] == []
    assert_error(carol.get("waves/", {"status": "bogus"}), 400, "invalid")
    assert carol.get("waves/", {"page": 5}).json()["items"] == []
    shown = carol.get(f"waves/{wave.name}", {"targets": "true"}).json()
    assert [r["device_count"] for r in shown["rollouts"]] == [3, 20] and shown["rollouts"][1]["full_group"]
    assert "intel-corei7-64-lmp-42" in shown["targets"]["signed"]["targets"]
    assert carol.get(f"waves/{wave.name}").json()["targets"] is None
    history = carol.get(f"waves/{wave.name}/rollouts").json()
    devices = carol.get(f"waves/{wave.name}/rollouts/{history[0]['id']}").json()
    assert set(devices["uuids"]) == {d["uuid"] for d in first["devices"]}
    assert_error(carol.get(f"waves/{wave.name}/rollouts/999999"), 404, "not_found")


def test_factory_status_per_tag_with_active_waves(as_user, fleet100, wave):
    status = as_user("dave").get("status").json()
    rows = {(t["tag"], t["production"]): t for t in status["tags"]}
    assert rows[(TAG, True)]["total"] == 100 and rows[(TAG, False)]["total"] == 10
    assert [w["name"] for w in status["active_waves"]] == [wave.name]
    assert status["offline_threshold_hours"] == 4
    assert isinstance(status["warnings"], list)


# --- saved device lists -----------------------------------------------------------------------------


def test_saved_device_lists_for_qa(as_user, fleet100, factory):
    carol = as_user("carol")
    uuids = [str(u) for u in Device.objects.filter(factory=factory, is_production=True).values_list("uuid", flat=True)[:3]]
    created = carol.post("device-lists/", {"name": "canary picks", "uuids": ",".join(uuids + uuids[:1])})
    assert created.status_code == 201 and created.json()["count"] == 3
    assert carol.get("device-lists/canary picks").json()["uuids"] == uuids
    assert carol.patch("device-lists/canary picks", {"uuids": uuids[:1], "name": "one"}).json() == {**carol.get("device-lists/one").json()}
    assert_error(carol.post("device-lists/", {"name": "one", "uuids": uuids}), 409)
    assert_error(carol.post("device-lists/", {"name": "bad", "uuids": "x"}), 400, "uuids_invalid")
    assert_error(as_user("dave").post("device-lists/", {"name": "d", "uuids": uuids}), 403, "forbidden")
    assert [x["name"] for x in as_user("dave").get("device-lists/").json()] == ["one"]
    assert carol.delete("device-lists/one").status_code == 204
    assert not SavedDeviceList.objects.filter(factory=factory).exists()
    assert_error(carol.get("device-lists/one"), 404, "not_found")


def test_device_list_names_are_checked_at_the_api_and_nothing_changes(as_user, factory):
    carol = as_user("carol")
    uuids = [str(uuid.uuid4())]
    assert carol.post("device-lists/", {"name": "kept", "uuids": uuids}).status_code == 201
    for name in ('x"; filename=evil.sh\r\nX-Evil: 1', "tab\there", "a/b", ""):
        body = assert_error(carol.post("device-lists/", {"name": name, "uuids": uuids}), 400, "invalid")
        assert body["detail"].startswith("name: "), body
        assert_error(carol.patch("device-lists/kept", {"name": name}), 400, "invalid")
    assert list(SavedDeviceList.objects.filter(factory=factory).values_list("name", flat=True)) == ["kept"]
