"""Moving a device to another tag from the server (`devices config updates --tag`): python-tuf
devices through the gateway follow the new tag with versions that never go down, the gateway
hands them the config fragment, their own check-ins do not move them back; refusals change
nothing. Through the service, the API and the audit log."""
import json

import pytest
from django.urls import reverse
from django.utils import timezone

from devices import checkins
from devices.fleet import fleet_seed
from devices.models import Device
from devices.tag_moves import CONFIG_FRAGMENT, device_tag_set
from factory.errors import ApplicationError, Conflict, Forbidden
from factory.models import AuditEntry
from factory.project.gateway.http1 import PEER_CERTIFICATE
from factory.tuf.models import TufView
from factory.tuf.services.repository import ci_build_publish
from factory.tuf.services.signed_views import tag_republish
from tests.factory.test_api import as_user, assert_error, tokens  # noqa: F401  (fixtures)
from tests.factory.test_views import login
from tests.factory.tuf_client import GatewayFetcher, TufDevice, offline_targets_key
from waves.services import wave_complete, wave_init

HWID = "intel-corei7-64"


@pytest.fixture
def released(factory, bob):
    """Build 41 released on "production", 42 on "staging"; "devel" has a CI build only."""
    ci_build_publish(factory=factory, version=41, hardware_ids=[HWID], tags=["production"])
    ci_build_publish(factory=factory, version=42, hardware_ids=[HWID], tags=["production", "staging"])
    ci_build_publish(factory=factory, version=43, hardware_ids=[HWID], tags=["devel"])
    archive = offline_targets_key(factory=factory, actor=bob)
    for name, version, tag in (("p41", 41, "production"), ("s42", 42, "staging")):
        wave_complete(wave=wave_init(factory=factory, actor=bob, name=name, version=version, tag=tag, key_archive=archive), actor=bob)
    # The old tag re-signed last: its timestamp is the newest, as it may well be in the field.
    tag_republish(factory_id=factory.id, tag="production")
    return archive


def registered(factory, *, production=True, tag="production"):
    fleet_seed(factory=factory, tag=tag, ungrouped=1 if production else 0, test_devices=0 if production else 1, hardware_ids=[HWID])
    device = Device.objects.select_related("factory", "group").filter(factory=factory, is_production=production).latest("id")
    device.target_version = 40
    device.save(update_fields=["target_version"])
    return device


def gateway_get(device, path, tag=None):
    fetcher = GatewayFetcher(device, tag=tag)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, PEER_CERTIFICATE: fetcher.der}
    if tag:
        environ["HTTP_X_ATS_TAGS"] = tag
    status = {}
    body = b"".join(fetcher.gateway(environ, lambda s, h: status.setdefault("code", int(s.split()[0]))))
    return status["code"], json.loads(body)


def never_down(history):
    for before, after in zip(history, history[1:]):
        assert all(after[role] >= before[role] for role in before), (before, after)


def test_a_production_device_moved_to_another_tag_follows_it_through_the_gateway(as_user, factory, bob, released, tmp_path):  # noqa: F811
    device = registered(factory)
    # The device keeps naming its old tag, as it does until it applies the config fragment.
    client = TufDevice(device, tmp_path, via_gateway=True, tag="production")
    assert client.update() == 41
    assert gateway_get(device, "/config", tag="production") == (200, {})

    response = as_user("bob").post(f"devices/{device.uuid}/config/updates", {"tag": "staging"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["tag"] == "staging" and body["previous_tag"] == "production" and body["production"] is True
    assert 'tags = "staging"' in body["config"][CONFIG_FRAGMENT]["Value"]

    client.device.refresh_from_db()
    assert client.update() == 42  # served staging's production targets, the header notwithstanding
    never_down(client.history)
    code, config = gateway_get(device, "/config", tag="production")
    assert code == 200 and config[CONFIG_FRAGMENT]["Value"] == '[pacman]\ntags = "staging"\n'
    # Its own check-ins naming the old tag do not move it back.
    checkins.checkins_write({device.pk: checkins.Checkin(seen=timezone.now().timestamp(), tag="production")})
    device.refresh_from_db()
    assert device.tag == device.config_tag == "staging"
    entry = AuditEntry.objects.get(factory=factory, action="device.tag")
    assert entry.actor == bob and entry.target == str(device.uuid) and entry.details["from"] == "production" and entry.details["to"] == "staging"


def test_a_test_device_moves_to_a_ci_tag(factory, bob, released, tmp_path):
    device = registered(factory, production=False)
    client = TufDevice(device, tmp_path, via_gateway=True, tag="production")
    assert client.update() == 42
    device_tag_set(device=device, tag="devel", actor=bob)
    client.device.refresh_from_db()
    assert client.update() == 43
    never_down(client.history)


def test_bad_tag_moves_change_nothing(as_user, factory, bob, carol, released):  # noqa: F811
    device = registered(factory, tag="staging")
    device.targets_version_seen = 42
    device.save(update_fields=["targets_version_seen"])

    def state():
        device.refresh_from_db()
        views = list(TufView.objects.filter(factory=factory).values_list("id", "token").order_by("id"))
        return device.tag, device.config_tag, views, AuditEntry.objects.filter(action="device.tag").count()

    before = state()
    with pytest.raises(ApplicationError, match="not a tag of this factory"):
        device_tag_set(device=device, tag="prodution", actor=bob)  # a typo
    with pytest.raises(ApplicationError, match="printable characters"):
        device_tag_set(device=device, tag="two tags", actor=bob)
    with pytest.raises(Forbidden):
        device_tag_set(device=device, tag="production", actor=carol)
    # Production targets 41 on "production", below the 42 it was served: a TUF rollback.
    with pytest.raises(Conflict, match="refuse them as a rollback"):
        device_tag_set(device=device, tag="production", actor=bob)
    assert state() == before
    bob_api = as_user("bob")
    assert "not a tag of this factory" in assert_error(bob_api.post(f"devices/{device.uuid}/config/updates", {"tag": "nope"}), 400)["detail"]
    assert_error(bob_api.post(f"devices/{device.uuid}/config/updates", {"tag": ""}), 400)
    assert_error(bob_api.post(f"devices/{device.uuid}/config/updates", {}), 400)
    assert_error(bob_api.post(f"devices/{device.uuid}/config/updates", {"tag": "production"}), 409, "conflict")
    assert_error(as_user("carol").post(f"devices/{device.uuid}/config/updates", {"tag": "devel"}), 403)
    assert_error(as_user("eve").post(f"devices/{device.uuid}/config/updates", {"tag": "devel"}), 403)
    assert_error(bob_api.post("devices/00000000-0000-0000-0000-000000000000/config/updates", {"tag": "devel"}), 404)
    assert state() == before


def test_the_device_page_moves_a_device_for_roles_that_may(client, factory, bob, carol, eve, released):
    device = registered(factory)
    page = reverse("device-detail", args=[device.uuid])
    form_url = reverse("device-tag-update", args=[device.uuid])
    assert form_url not in login(client, carol).get(page).content.decode()  # QA sees no form...
    assert login(client, carol).post(form_url, {"tag": "staging"}).status_code == 403  # ...and may not post one
    html = login(client, bob).get(page).content.decode()
    assert form_url in html and '<option value="staging">' in html and '<option value="production" selected>' in html
    response = login(client, bob).post(form_url, {"tag": "staging"}, follow=True)
    assert "moved from tag production to staging" in response.content.decode()
    device.refresh_from_db()
    assert device.tag == "staging" and "(set from the server)" in login(client, bob).get(page).content.decode()
    # A tag that is not the factory's, and markup in it: an error shown as text; nothing changes.
    response = login(client, bob).post(form_url, {"tag": "<b>x</b>"}, follow=True)
    assert "&lt;b&gt;x&lt;/b&gt; is not a tag of this factory" in response.content.decode() and "<b>x</b>" not in response.content.decode()
    device.refresh_from_db()
    assert device.tag == "staging"
    assert login(client, eve).post(form_url, {"tag": "production"}).status_code == 404  # another factory's device
    device.refresh_from_db()
    assert device.tag == "staging"
