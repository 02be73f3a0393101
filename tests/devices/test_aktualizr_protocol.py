"""aktualizr-lite's requests through the gateway (in process, with the device's own certificate):
its headers, its events and its telemetry, from the shapes recorded in tests/fixtures/aktualizr/."""
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from django.urls import reverse

from devices import checkins
from devices.models import DeadLetter, Device, DeviceEvent, DeviceReport
from devices.telemetry import recent_forget
from factory.project.gateway.handler import Gateway
from factory.tuf.services.repository import ci_build_publish
from tests.factory.test_api import as_user, tokens  # noqa: F401  (fixtures)
from tests.factory.test_views import login
from tests.fuzz.harness import buffer_empty, call, der_of, environ_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "aktualizr"
HWID = "intel-corei7-64"


def fixture(name):
    return (FIXTURES / name).read_text()


def events_body():
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return fixture("events-update.json").replace("DEVICE_TIME", now).encode()


@pytest.fixture
def aklite(db, factory, register):
    buffer_empty()
    recent_forget()
    files = register(factory, production=False, tag="main")
    device = Device.objects.get(uuid=files.uuid)
    gateway = Gateway(device_cache_seconds=0)
    der = der_of(files.response["certificate"])

    def send(path, *, method="GET", headers=None, body=b"", content_length=None):
        return call(gateway, environ_for(der, method=method, path=path, headers=headers, body=body, content_length=content_length))

    send.device = device
    yield send
    buffer_empty()
    recent_forget()


def client_facts(device):
    row = DeviceReport.objects.filter(device=device, kind=DeviceReport.Kind.CLIENT).first()
    return json.loads(row.content) if row else {}


# --- headers ------------------------------------------------------------------------------------


def test_a_fresh_device_sending_initial_target_is_served_and_has_no_current_target(aklite, factory):
    ci_build_publish(factory=factory, version=42, hardware_ids=[HWID], tags=["main"])
    headers = json.loads(fixture("headers-tuf-fresh.json"))
    for path in ("/repo/1.root.json", "/repo/timestamp.json", "/repo/snapshot.json", "/repo/targets.json", "/device"):
        answer = aklite(path, headers=headers)
        assert answer.status == 200, (path, answer.body)
    checkins.flush()
    device = Device.objects.get(pk=aklite.device.pk)
    assert (device.tag, device.target_name, device.target_version) == ("main", "", None)
    assert device.last_seen is not None and device.targets_version_seen is not None
    assert client_facts(device) == {"user_agent": headers["User-Agent"], "ostree_hash": headers["x-ats-ostreehash"]}
    assert aklite("/device", headers=headers).json()["Name"] == device.name  # what `aktualizr-lite status` shows


def test_telemetry_headers_name_the_first_tag_and_record_the_apps_and_ignore_unknown_ostree_hash(aklite):
    headers = json.loads(fixture("headers-telemetry.json"))
    assert aklite("/device", headers=headers).status == 200
    checkins.flush()
    device = Device.objects.get(pk=aklite.device.pk)
    # The first tag is the one the client's TUF fetches send: the view it is served.
    assert (device.tag, device.target_name, device.target_version) == ("main", f"{HWID}-lmp-42", 42)
    assert client_facts(device) == {"user_agent": headers["User-Agent"], "docker_apps": "shellhttpd,fiotest"}


@pytest.mark.parametrize(
    "header, value",
    [
        ("User-Agent", "Aktualizr/1\x1b[2J"),
        ("User-Agent", "A" * 300),
        ("User-Agent", "Aktualizr/\xff"),  # a latin-1 byte that is not UTF-8
        ("x-ats-ostreehash", "zz" * 32),
        ("x-ats-ostreehash", "a" * 65),
        ("x-ats-dockerapps", "app," * 300),
        ("x-ats-dockerapps", "app\u0085"),
    ],
)
def test_a_bad_optional_header_is_ignored_not_refused(aklite, header, value):
    good = {"User-Agent": "Aktualizr/2024.12", "x-ats-ostreehash": "ab" * 32, "x-ats-dockerapps": "shellhttpd"}
    assert aklite("/device", headers=good).status == 200
    answer = aklite("/device", headers={**good, header: value})
    assert answer.status == 200, answer.body
    checkins.flush()
    facts = client_facts(aklite.device)
    assert facts == {"user_agent": "Aktualizr/2024.12", "ostree_hash": "ab" * 32, "docker_apps": "shellhttpd"}


def test_the_client_facts_are_written_only_when_they_change(aklite):
    headers = json.loads(fixture("headers-telemetry.json"))
    aklite("/device", headers=headers)
    checkins.flush()
    stamp = DeviceReport.objects.get(device=aklite.device, kind=DeviceReport.Kind.CLIENT).received_at
    for _ in range(3):
        aklite("/device", headers=headers)
    checkins.flush()
    assert DeviceReport.objects.get(device=aklite.device, kind=DeviceReport.Kind.CLIENT).received_at == stamp
    aklite("/device", headers={**headers, "User-Agent": "Aktualizr/2025.1"})
    checkins.flush()
    assert client_facts(aklite.device)["user_agent"] == "Aktualizr/2025.1"


# --- events -------------------------------------------------------------------------------------


def test_aktualizr_events_map_onto_breakwater_event_types(aklite):
    answer = aklite("/events", method="POST", body=events_body(), headers={"Content-Type": "application/json"})
    assert answer.status == 202, answer.body
    assert answer.json() == {"accepted": 5}  # MetadataUpdateCompleted is accepted and not recorded
    checkins.flush()
    events = {e.event_type: e for e in DeviceEvent.objects.filter(device=aklite.device)}
    assert sorted(events) == sorted(["download-started", "download-completed", "install-started", "install-applied", "install-completed"])
    assert {(e.target_name, e.target_version) for e in events.values()} == {(f"{HWID}-lmp-43", 43)}
    assert events["install-completed"].success is True and events["install-started"].success is None
    assert events["download-started"].detail == f"Updating from {HWID}-lmp-42 to {HWID}-lmp-43"
    assert events["download-started"].event_id == "5f0c8a0e-7a43-4d6e-9a53-0e9b3c2f7d11"


def test_a_re_sent_batch_counts_once_within_a_flush_and_across_flushes(aklite):
    body = events_body()
    for _ in range(2):  # both copies in one buffer drain
        assert aklite("/events", method="POST", body=body).status == 202
    checkins.flush()
    assert DeviceEvent.objects.filter(device=aklite.device).count() == 5
    assert aklite("/events", method="POST", body=body).status == 202  # after the first was written
    checkins.flush()
    assert DeviceEvent.objects.filter(device=aklite.device).count() == 5
    assert not DeadLetter.objects.exists()


def test_a_copy_written_by_another_flusher_meanwhile_is_no_dead_letter(aklite, monkeypatch):
    body = events_body()
    aklite("/events", method="POST", body=body)
    checkins.flush()
    aklite("/events", method="POST", body=body)
    fresh = json.loads(body)[0] | {"id": "0a0a0a0a-0000-4000-8000-000000000001"}
    aklite("/events", method="POST", body=json.dumps([fresh]).encode())
    # As if another flusher wrote the copies between the lookup and the insert: the insert is
    # refused, bisected, and the copies are recognised, not set aside.
    monkeypatch.setattr(checkins, "_already_stored", lambda events: set())
    checkins.flush()
    assert DeviceEvent.objects.filter(device=aklite.device).count() == 6
    assert not DeadLetter.objects.exists()


def test_an_event_id_newer_clients_send_is_accepted_and_not_recorded(aklite):
    event = {"id": "1b2c3d4e-0000-4000-8000-000000000000", "deviceTime": datetime.now(timezone.utc).isoformat(), "eventType": {"id": "EcuFutureStep", "version": 3}, "event": {"ecu": "x"}}
    answer = aklite("/events", method="POST", body=json.dumps([event]).encode())
    assert answer.status == 202 and answer.json() == {"accepted": 0}


def test_the_ecu_field_is_no_identity(aklite, factory, register):
    other = register(factory)
    events = json.loads(events_body())
    for event in events:
        event["event"]["ecu"] = other.uuid
    assert aklite("/events", method="POST", body=json.dumps(events).encode()).status == 202
    checkins.flush()
    assert DeviceEvent.objects.filter(device=aklite.device).count() == 5
    assert not DeviceEvent.objects.filter(device__uuid=other.uuid).exists()


def _event(**changes):
    event = json.loads(events_body())[0]
    for key, value in changes.items():
        if key.startswith("event."):
            event["event"][key[6:]] = value
        else:
            event[key] = value
    return event


HOSTILE_EVENTS = {
    "no id": (_event(id=None), "id"),
    "id with a control character": (_event(id="abc\x07"), "id"),
    "eventType not an object": (_event(eventType="EcuDownloadStarted"), "eventType"),
    "time far in the future": (_event(deviceTime="2999-01-01T00:00:00Z"), "deviceTime"),
    "details not text": (_event(**{"event.details": ["a"]}), "details"),
    "details too long": (_event(**{"event.details": "x" * 4097}), "details"),
    "escape sequence in the target": (_event(**{"event.targetName": "lmp-\x1b[2J43"}), "targetName"),
    "control character in the ecu": (_event(**{"event.ecu": "ecu\x00"}), "ecu"),
    "version not a number": (_event(**{"event.version": "forty-three"}), "version"),
    "success a string": (_event(**{"event.success": "true"}), "success"),
    "target with a slash": (_event(**{"event.targetName": "../etc/passwd"}), "targetName"),
    "event a list": (_event(event=[1]), "event"),
}


@pytest.mark.parametrize("case", list(HOSTILE_EVENTS))
def test_a_hostile_aktualizr_event_is_a_400_naming_the_event_and_field_and_stores_nothing(aklite, case):
    bad, field = HOSTILE_EVENTS[case]
    good = _event(id="77777777-0000-4000-8000-000000000000")
    answer = aklite("/events", method="POST", body=json.dumps([good, bad]).encode())
    assert answer.status == 400, answer.body
    assert (answer.json()["event"], answer.json()["field"]) == (1, field)
    checkins.flush()
    assert not DeviceEvent.objects.filter(device=aklite.device).exists()


def test_control_characters_in_details_are_replaced_so_the_batch_is_not_re_sent_for_ever(aklite):
    # Failed installs report the tools' own output (colours, progress with carriage returns).
    event = _event(**{"event.details": "docker: \x1b[31mError\x1b[0m\r\nretry\rdone\t\ud800ok"})
    assert aklite("/events", method="POST", body=json.dumps([event]).encode()).status == 202
    checkins.flush()
    detail = DeviceEvent.objects.get(device=aklite.device).detail
    assert detail == "docker: \ufffd[31mError\ufffd[0m\nretry\ufffddone\t\ufffdok"
    assert "x" * 2048 + "[TRUNCATED]" == _stored_detail(aklite, "x" * 2048 + "[TRUNCATED]")


def _stored_detail(aklite, details):
    event = _event(id=str(uuid.uuid4()), **{"event.details": details})
    assert aklite("/events", method="POST", body=json.dumps([event]).encode()).status == 202
    checkins.flush()
    return DeviceEvent.objects.get(device=aklite.device, event_id=event["id"]).detail


def test_deeply_nested_aktualizr_events_are_refused_before_parsing(aklite):
    body = b'[{"id": "a", "eventType": {"id": "EcuDownloadStarted"}, "event": ' + b"[" * 5000 + b"]" * 5000 + b"}]"
    assert aklite("/events", method="POST", body=body).status == 400
    checkins.flush()
    assert not DeviceEvent.objects.exists()


# --- telemetry ----------------------------------------------------------------------------------

TELEMETRY = [
    ("PUT", "/system_info", "system_info.json", DeviceReport.Kind.SYSTEM_INFO),
    ("PUT", "/system_info/network", "network.json", DeviceReport.Kind.NETWORK),
    ("PUT", "/system_info/config", "config.toml", DeviceReport.Kind.CONFIG),
    ("POST", "/apps-states", "apps-states.json", DeviceReport.Kind.APPS_STATES),
]


def test_telemetry_is_stored_latest_of_each_kind_and_shown_escaped(aklite, client, dave, as_user):
    headers = json.loads(fixture("headers-telemetry.json"))
    for method, path, name, _ in TELEMETRY:
        answer = aklite(path, method=method, body=fixture(name).encode(), headers=headers)
        assert answer.status == 200, (path, answer.body)
    network = {"local_ipv4": "10.0.0.7", "mac": "02:42:ac:11:00:03", "hostname": "renamed"}
    assert aklite("/system_info/network", method="PUT", body=json.dumps(network).encode()).status == 200
    checkins.flush()
    stored = {r.kind: r.content for r in DeviceReport.objects.filter(device=aklite.device)}
    assert set(stored) == {kind for *_, kind in TELEMETRY} | {DeviceReport.Kind.CLIENT}
    assert json.loads(stored[DeviceReport.Kind.NETWORK])["hostname"] == "renamed"
    assert stored[DeviceReport.Kind.CONFIG] == fixture("config.toml")
    assert json.loads(stored[DeviceReport.Kind.SYSTEM_INFO]) == json.loads(fixture("system_info.json"))

    page = login(client, dave).get(reverse("device-detail", args=[aklite.device.uuid])).content.decode()
    assert "Reported by the device" in page and "renamed" in page and "shellhttpd,fiotest" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    detail = as_user("dave").get(f"devices/{aklite.device.uuid}").json()
    assert detail["client"]["docker_apps"] == "shellhttpd,fiotest"
    reports = {r["kind"]: r for r in detail["reports"]}
    assert json.loads(reports["network"]["content"])["hostname"] == "renamed"
    assert "<script>alert(1)</script>" in reports["system-info"]["content"]  # JSON is data; the API does not escape for HTML


HOSTILE_TELEMETRY = {
    "oversize (by Content-Length, before reading)": ("PUT", "/system_info", b"{}", str(70 * 1024), 413),
    "oversize body": ("PUT", "/system_info/network", b'{"a": "' + b"x" * (70 * 1024) + b'"}', None, 413),
    "deep JSON": ("PUT", "/system_info", b"[" * 30 + b"]" * 30, None, 400),
    "control character in a value": ("PUT", "/system_info/network", b'{"hostname": "a\\u001b[2Jb"}', None, 400),
    "control character in a key": ("POST", "/apps-states", b'{"apps\\u0000": {}}', None, 400),
    "lone surrogate": ("PUT", "/system_info", b'{"product": "\\ud800"}', None, 400),
    "NaN": ("PUT", "/system_info", b'{"width": NaN}', None, 400),
    "duplicate key": ("PUT", "/system_info/network", b'{"mac": "a", "mac": "b"}', None, 400),
    "not JSON": ("POST", "/apps-states", b"apps: all good", None, 400),
    "a bare string": ("PUT", "/system_info", b'"lshw"', None, 400),
    "config not UTF-8": ("PUT", "/system_info/config", b"[tls]\nserver = \"\xff\"\n", None, 400),
    "config with NUL": ("PUT", "/system_info/config", b"[tls]\x00\n", None, 400),
    "config with an escape sequence": ("PUT", "/system_info/config", b"[tls]\n\x1b[2J\n", None, 400),
    "wrong method": ("POST", "/system_info", b"{}", None, 405),
}


@pytest.mark.parametrize("case", list(HOSTILE_TELEMETRY))
def test_hostile_telemetry_is_refused_and_stores_nothing(aklite, case):
    method, path, body, length, status = HOSTILE_TELEMETRY[case]
    answer = aklite(path, method=method, body=body, content_length=length)
    assert answer.status == status, answer.body
    assert answer.json()["error"]
    assert not DeviceReport.objects.filter(device=aklite.device).exclude(kind=DeviceReport.Kind.CLIENT).exists()
