"""Signed state follows what CI and release managers create, never the tags devices name.

Every request goes through the device gateway's WSGI app with the device's own certificate and
an `x-ats-tags` header of the test's choosing; python-tuf's ngclient (and tuf-js, a second,
independent client) verify what it serves.
"""
import base64
import secrets
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.fleet import fleet_seed
from devices.models import Device
from factory.errors import ApplicationError, Conflict
from factory.tuf import keys as tuf_keys
from factory.tuf.models import EMPTY_TAG, TufRoot, TufView
from factory.tuf.services import refresh
from factory.tuf.services.repository import ci_build_publish
from waves.models import Wave
from waves.services import wave_complete, wave_init, wave_rollout

from .test_api import as_user, tokens  # noqa: F401  (fixtures)
from .tuf_client import BASE_URL, GatewayFetcher, TufDevice, TufJsDevice, offline_targets_key, tufjs_missing

TAG = "production"
NEW_TAG = "brand-new"
HWIDS = ["intel-corei7-64"]
SPAM_TAGS = 2000


@pytest.fixture
def archive(factory, bob):
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    ci_build_publish(factory=factory, version=50, hardware_ids=HWIDS, tags=[NEW_TAG])
    return offline_targets_key(factory=factory, actor=bob)


def _device(factory, *, tag, production=True):
    fleet_seed(factory=factory, tag=tag, ungrouped=1 if production else 0, test_devices=0 if production else 1, hardware_ids=HWIDS)
    return Device.objects.select_related("factory", "group").filter(factory=factory, tag=tag, is_production=production).latest("id")


def _signed_state(factory):
    """Every signed document the factory serves: view rows with their bytes' tokens, and roots."""
    views = sorted(TufView.objects.filter(factory=factory).values_list("kind", "tag", "wave_id", "version", "token"), key=repr)
    return views, TufRoot.objects.filter(factory=factory).count()


def _random_tags(count):
    return [f"spam-{secrets.token_hex(8)}" for _ in range(count)]


def _poll(device, tag, filename="timestamp.json"):
    return b"".join(GatewayFetcher(device, tag=tag)._fetch(BASE_URL + filename))


def test_a_device_naming_thousands_of_tags_makes_the_server_sign_nothing(factory, archive, tmp_path):
    device = _device(factory, tag=TAG)
    # The factory's first device on a tag without a release: its one shared empty view, once.
    first = _poll(device, "not-released")
    before = _signed_state(factory)
    served = {_poll(device, tag) for tag in _random_tags(SPAM_TAGS)}
    assert served == {first}
    assert _signed_state(factory) == before
    assert TufView.objects.filter(factory=factory, kind="production").exclude(tag=EMPTY_TAG).count() == 0
    # What it gets is metadata python-tuf accepts, granting nothing.
    for tag in _random_tags(5):
        client = TufDevice(device, tmp_path / tag, via_gateway=True, tag=tag)
        assert client.refresh() == {}
    assert _signed_state(factory) == before


def test_test_devices_naming_tags_make_the_server_sign_nothing(factory, archive, tmp_path):
    device = _device(factory, tag=TAG, production=False)
    _poll(device, TAG)
    before = _signed_state(factory)
    for tag in _random_tags(SPAM_TAGS // 2):
        _poll(device, tag, "targets.json")
    assert _signed_state(factory) == before
    tag = "ci-only"
    client = TufDevice(device, tmp_path, via_gateway=True, tag=tag)
    client.refresh()
    assert not [t for t in client.targets().values() if tag in t["tags"]]
    # CI builds for the tag: the same client moves up to it.
    ci_build_publish(factory=factory, version=60, hardware_ids=HWIDS, tags=[tag])
    versions = client.versions()
    client.refresh()
    assert [t["version"] for t in client.targets().values() if tag in t["tags"]] == [60]
    assert all(client.versions()[role] > versions[role] for role in ("timestamp", "snapshot", "targets"))


def _resign_empty_view_later(factory, hours=13):
    """The shared empty view re-signed as it nears expiry, hours ahead of now: its versions are
    then above what a view signed now would take from the clock."""
    empty = TufView.objects.get(factory=factory, kind="production", tag=EMPTY_TAG)
    assert refresh.tag_views_refresh(anchor_id=empty.pk, now=timezone.now() + timedelta(hours=hours))
    empty.refresh_from_db()
    return empty.version


def test_a_device_on_a_new_tag_moves_up_when_the_tag_gets_a_wave(factory, bob, archive, tmp_path):
    staged, waiting = _device(factory, tag=NEW_TAG), _device(factory, tag=NEW_TAG)
    clients = {d.pk: TufDevice(d, tmp_path, via_gateway=True, tag=NEW_TAG) for d in (staged, waiting)}
    for client in clients.values():
        assert client.refresh() == {}
    empty_version = _resign_empty_view_later(factory)
    for client in clients.values():
        client.refresh()
        assert client.versions()["timestamp"] == empty_version
    before = {pk: c.versions() for pk, c in clients.items()}
    wave = wave_init(factory=factory, actor=bob, name="first-release", version=50, tag=NEW_TAG, key_archive=archive)
    assert wave.status == Wave.Status.ACTIVE
    wave_rollout(wave=wave, actor=bob, uuids=[str(staged.uuid)])
    for pk, client in clients.items():
        client.refresh()  # no rollback error
        assert client.versions()["timestamp"] > before[pk]["timestamp"] and client.versions()["snapshot"] > before[pk]["snapshot"]
    assert list(clients[staged.pk].targets()) == ["intel-corei7-64-lmp-50"] and clients[waiting.pk].targets() == {}
    assert clients[staged.pk].update() == 50
    wave_complete(wave=wave, actor=bob)
    assert clients[waiting.pk].update() == 50


def test_a_second_client_tuf_js_accepts_the_empty_view_and_the_move_to_a_wave(factory, bob, archive, tmp_path):
    missing = tufjs_missing()
    if missing:
        pytest.skip(missing)
    device = _device(factory, tag=NEW_TAG)
    client = TufJsDevice(device, tmp_path, tag=NEW_TAG)
    first = client.refresh()
    assert first["ok"], first
    assert first["targets"] == []
    empty_version = _resign_empty_view_later(factory)
    second = client.refresh()
    assert second["ok"] and second["versions"]["timestamp"] == empty_version, second
    wave = wave_init(factory=factory, actor=bob, name="first-release", version=50, tag=NEW_TAG, key_archive=archive)
    wave_rollout(wave=wave, actor=bob, uuids=[str(device.uuid)])
    third = client.refresh()
    assert third["ok"], third
    assert third["targets"] == ["intel-corei7-64-lmp-50"]
    assert all(third["versions"][role] > second["versions"][role] for role in ("timestamp", "snapshot", "targets"))
    # tuf-js refuses what it should: a damaged timestamp signature.
    def damage(name, data):
        return data.replace(b'"sig":"', b'"sig":"00', 1) if name == "timestamp.json" else data

    result = TufJsDevice(device, tmp_path / "tampered", tag=NEW_TAG).refresh(tamper=damage)
    assert not result["ok"] and result["error"] == "UnsignedMetadataError", result


def test_waves_init_on_a_real_new_tag_works_after_devices_spammed_tags(factory, bob, archive, settings):
    settings.BREAKWATER_TUF_MAX_TAGS = 2
    device = _device(factory, tag=TAG)
    for tag in _random_tags(200):
        _poll(device, tag)
    wave = wave_init(factory=factory, actor=bob, name="first-release", version=50, tag=NEW_TAG, key_archive=archive)
    assert wave.status == Wave.Status.ACTIVE
    wave = wave_init(factory=factory, actor=bob, name="v41", version=41, tag=TAG, key_archive=archive)
    assert wave.status == Wave.Status.ACTIVE
    assert sorted(TufView.objects.filter(factory=factory, kind="production").exclude(tag=EMPTY_TAG).values_list("tag", flat=True)) == [
        NEW_TAG, TAG,
    ]  # fmt: skip


@pytest.fixture
def api(as_user):  # noqa: F811
    return as_user("bob")


def test_the_tag_limit_counts_real_tags_only_and_refuses_cleanly(factory, bob, archive, settings, api):
    settings.BREAKWATER_TUF_MAX_TAGS = 1
    ci_build_publish(factory=factory, version=51, hardware_ids=HWIDS, tags=["third"])
    wave_init(factory=factory, actor=bob, name="v41", version=41, tag=TAG, key_archive=archive)
    before = _signed_state(factory)
    waves = Wave.objects.count()
    with pytest.raises(Conflict, match=r"already has 1 production tags \(BREAKWATER_TUF_MAX_TAGS\); tag brand-new would be one more"):
        wave_init(factory=factory, actor=bob, name="first-release", version=50, tag=NEW_TAG, key_archive=archive)
    # An unsigned wave on a new tag counts too: it will need a view once it is signed.
    settings.BREAKWATER_TUF_MAX_TAGS = 2
    wave_init(factory=factory, actor=bob, name="first-release", version=50, tag=NEW_TAG)
    response = api.post("waves/", {"name": "third", "version": 51, "tag": "third", "key_archive": base64.b64encode(archive).decode()})
    assert response.status_code == 409 and "BREAKWATER_TUF_MAX_TAGS" in response.json()["detail"]
    assert Wave.objects.count() == waves + 1 and not Wave.objects.filter(name="third").exists()
    assert _signed_state(factory) == before


def test_a_failing_sign_step_in_waves_init_leaves_no_wave(factory, bob, archive, api):
    _device(factory, tag=NEW_TAG)
    before = _signed_state(factory)
    wrong_key = tuf_keys.key_archive_write([("targets", tuf_keys.key_generate())])
    for bad in (b"not a key archive", wrong_key):
        response = api.post("waves/", {"name": "first-release", "version": 50, "tag": NEW_TAG, "key_archive": base64.b64encode(bad).decode()})
        assert response.status_code == 400, response.json()
        assert not Wave.objects.filter(factory=factory).exists()
        with pytest.raises(ApplicationError):
            wave_init(factory=factory, actor=bob, name="first-release", version=50, tag=NEW_TAG, key_archive=bad)
        assert not Wave.objects.filter(factory=factory).exists()
        assert not factory.audit_entries.filter(action__startswith="wave.").exists()
        assert _signed_state(factory) == before
    # The same init with the right key: one signed wave.
    response = api.post("waves/", {"name": "first-release", "version": 50, "tag": NEW_TAG, "key_archive": base64.b64encode(archive).decode()})
    assert response.status_code == 201 and response.json()["status"] == "active"
