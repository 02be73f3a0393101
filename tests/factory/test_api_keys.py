"""Retiring an offline targets key through the API: the change it starts, and bad input that changes
nothing (malformed, unknown or ambiguous key ids, the root key, the last offline key, wrong role)."""
import base64

import pytest

from factory.models import AuditEntry
from factory.tuf import keys as tuf_keys
from factory.tuf import selectors as tuf_selectors
from factory.tuf.models import TufKey, TufRootChange
from tests.factory.test_api import as_user, assert_error, tokens  # noqa: F401  (fixtures)
from tests.tuf_helpers import offline_targets_key


@pytest.fixture
def two_keys(factory, bob):
    """The factory's two offline targets keys (first, second); nothing is signed by either yet."""
    ids = []
    for _ in range(2):
        [(_, signer)] = tuf_keys.key_archive_read(offline_targets_key(factory=factory, actor=bob))
        ids.append(signer.public_key.keyid)
    return ids


def unchanged(factory):
    return (
        list(TufKey.objects.filter(factory=factory).order_by("keyid").values_list("keyid", "retired_at")),
        TufRootChange.objects.filter(factory=factory).count(),
        AuditEntry.objects.filter(action__startswith="tuf.key.retire").count(),
    )


def test_retiring_a_key_by_its_prefix_applies_a_new_root_without_it(as_user, factory, two_keys):  # noqa: F811
    bob = as_user("bob")
    before = bob.get("keys/").json()
    response = bob.post(f"keys/offline/{two_keys[1][:10].upper()}/retire")
    assert response.status_code == 200, response.content
    change = response.json()
    assert change["status"] == "applied" and change["action"] == "key.retire.targets" and change["details"]["keyid"] == two_keys[1]
    after = bob.get("keys/").json()
    assert after["root_version"] == before["root_version"] + 1
    retired = {k["keyid"]: k["retired_at"] for k in after["keys"]}
    assert retired[two_keys[1]] and not retired[two_keys[0]]
    production_root = bob.get("keys/root", {"production": "true"}).json()["signed"]
    assert two_keys[1] not in production_root["roles"]["targets"]["keyids"] and two_keys[0] in production_root["roles"]["targets"]["keyids"]
    assert AuditEntry.objects.filter(action="tuf.key.retire.targets", actor__username="bob").exists()


@pytest.mark.parametrize(
    "keyid, status, words",
    [
        ("not-hex!", 400, "not a key id"),
        ("abc", 400, "not a key id"),  # too short to name one key
        ("f" * 65, 400, "not a key id"),
        ("0" * 64, 404, "not an offline key of this factory"),
        ("%00" + "a" * 10, 400, "NUL"),
    ],
)
def test_a_bad_key_id_changes_nothing(as_user, factory, two_keys, keyid, status, words):  # noqa: F811
    before = unchanged(factory)
    body = assert_error(as_user("bob").post(f"keys/offline/{keyid}/retire"), status)
    assert words in body["detail"]
    assert unchanged(factory) == before


def _sign(change, signer):
    from factory.tuf.services import root_changes

    signatures = [
        {"document": p["document"], **tuf_keys.payload_sign(signer, base64.b64decode(p["payload"]))}
        for p in tuf_selectors.root_change_payloads(change=change)
        if signer.public_key.keyid in p["keyids"]
    ]
    return root_changes.root_change_sign(factory=change.factory, actor=change.created_by, signatures=signatures)


def test_the_root_key_the_last_offline_key_and_other_roles_are_refused(as_user, factory, bob, two_keys):  # noqa: F811
    from factory.tuf.services import root_changes

    client = as_user("bob")
    before = unchanged(factory)
    for user in ("carol", "dave", "eve"):
        assert_error(as_user(user).post(f"keys/offline/{two_keys[0]}/retire"), 403, "forbidden")
    assert unchanged(factory) == before
    # The root key goes offline: until that change is signed, no other change may begin.
    root_signer = tuf_keys.key_generate()
    public = {k: v for k, v in root_signer.public_key.to_dict().items() if k in ("keytype", "scheme", "keyval")}
    change = root_changes.offline_key_add(factory=factory, actor=bob, role="root", public_key=public)
    busy = assert_error(client.post(f"keys/offline/{two_keys[0]}/retire"), 409, "conflict")
    assert "waiting for offline signatures" in busy["detail"]
    assert _sign(change, root_signer).status == "applied"
    root = assert_error(client.post(f"keys/offline/{root_signer.public_key.keyid}/retire"), 400, "invalid")
    assert "replaced, not removed" in root["detail"]
    # With the root key offline, the new roots wait for its signature.
    pending = client.post(f"keys/offline/{two_keys[1]}/retire").json()
    assert pending["status"] == "pending" and any(d["missing"].startswith("root keys") for d in pending["documents"])
    assert _sign(TufRootChange.objects.get(status="pending"), root_signer).status == "applied"
    last = assert_error(client.post(f"keys/offline/{two_keys[0]}/retire"), 400, "invalid")
    assert "only offline targets key" in last["detail"]
    # Retired already: no longer an offline key of the factory.
    assert_error(client.post(f"keys/offline/{two_keys[1]}/retire"), 404, "not_found")


def test_rotating_an_online_key_through_the_api(as_user, factory):  # noqa: F811
    bob = as_user("bob")
    before = bob.get("keys/").json()
    old = {k["keyid"] for k in before["keys"] if k["role"] == "snapshot" and k["online"]}
    response = bob.post("keys/online/rotate", {"role": "snapshot"})
    assert response.status_code == 200, response.content
    change = response.json()
    assert change["status"] == "applied" and change["action"] == "key.rotate.snapshot" and change["details"]["old_keyids"] == sorted(old)
    after = bob.get("keys/").json()
    assert after["root_version"] == before["root_version"] + 1
    live = {k["keyid"] for k in after["keys"] if k["role"] == "snapshot" and not k["retired_at"]}
    assert live == {change["details"]["keyid"]}
    assert bob.get("keys/root").json()["signed"]["roles"]["snapshot"]["keyids"] == [change["details"]["keyid"]]
    assert AuditEntry.objects.filter(action="tuf.key.rotate.snapshot", actor__username="bob").exists()


def test_a_bad_online_key_rotation_changes_nothing(as_user, factory):  # noqa: F811
    def state():
        return list(TufKey.objects.filter(factory=factory).order_by("keyid").values_list("keyid", "retired_at")), TufRootChange.objects.count()

    before = state()
    for body in ({"role": "root"}, {"role": "bogus"}, {}, {"role": ["targets"]}):
        assert_error(as_user("bob").post("keys/online/rotate", body), 400)
    assert_error(as_user("carol").post("keys/online/rotate", {"role": "targets"}), 403, "forbidden")
    assert_error(as_user("eve").post("keys/online/rotate", {"role": "targets"}), 403)
    assert state() == before
    # Another change pending: 409, and the pending change stays as it was.
    public = {k: v for k, v in tuf_keys.key_generate().public_key.to_dict().items() if k in ("keytype", "scheme", "keyval")}
    pending = as_user("bob").post("keys/offline", {"role": "root", "public_key": public}).json()
    assert pending["status"] == "pending"  # the new root key has not signed yet
    before = state()
    assert "waiting for offline signatures" in assert_error(as_user("bob").post("keys/online/rotate", {"role": "timestamp"}), 409, "conflict")["detail"]
    assert state() == before
