"""The gateway's strict schema, through the real gateway process: each class of hostile report is
a 400 (413 for size and counts) whose JSON names the event and field, stores nothing of that
request, and holds back no other device's report in the same flush."""
import json
from datetime import datetime, timedelta, timezone

import pytest

from devices.models import Device, DeviceEvent

from .conftest import device_pool, wait_for

HWID = "intel-corei7-64"
GOOD = {"type": "install-started", "target": f"{HWID}-lmp-42"}


def soon(**delta):
    return (datetime.now(timezone.utc) + timedelta(**delta)).isoformat()


def post(pool, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return pool.request("POST", "/events", body=data, headers={"Content-Type": "application/json"})


BODIES = {
    "NUL in detail": ([{**GOOD, "detail": "boot\x00failed"}], 400, "detail"),
    "lone surrogate": (b'[{"type": "install-started", "detail": "bad \\ud800 text"}]', 400, "detail"),
    "escape sequence in detail": ([{**GOOD, "detail": "\x1b[2J\x1b[Hall good"}], 400, "detail"),
    "control character in target": ([{**GOOD, "target": "lmp\x01-42"}], 400, "target"),
    "+23:00 offset": ([{**GOOD, "time": "2030-01-01T00:00:00+23:00"}], 400, "time"),
    "year 9999 west of UTC": ([{**GOOD, "time": "9999-12-31T23:00-05:00"}], 400, "time"),
    "far future": ([{**GOOD, "time": soon(days=3)}], 400, "time"),
    "far past": ([{**GOOD, "time": soon(days=-30)}], 400, "time"),
    "time as a number": ([{**GOOD, "time": 1700000000}], 400, "time"),
    "type a list": ([{**GOOD, "type": ["install-started"]}], 400, "type"),
    "type an object": ([{**GOOD, "type": {"id": "install-started"}}], 400, "type"),
    "type a number": ([{**GOOD, "type": 3}], 400, "type"),
    "version past 32 bits": ([{**GOOD, "version": 2**31}], 400, "version"),
    "20,000-deep nesting": (b"[" * 20_000 + b"]" * 20_000, 400, None),
    "deep nesting in an unknown field": ([{**GOOD, "extra": json.loads("[" * 10 + "]" * 10)}], 400, None),
    "oversized body": ([{**GOOD, "detail": "x" * 1000}] * 70, 413, None),
    "too many events": ([GOOD] * 101, 413, None),
    "long detail": ([{**GOOD, "detail": "x" * 2001}], 400, "detail"),
    "non-object item": ([GOOD, "install-started"], 400, None),
    "bad event after good ones": ([GOOD, GOOD, {**GOOD, "success": "yes"}], 400, "success"),
    "duplicate field": (b'[{"type": "install-started", "type": "exploded"}]', 400, None),
    "not UTF-8": (b'[{"type": "install-started", "detail": "\xff\xfe"}]', 400, None),
    "NaN": (b'[{"type": "install-started", "version": NaN}]', 400, None),
}


@pytest.mark.parametrize("case", list(BODIES))
def test_a_hostile_event_report_is_refused_and_stores_nothing(gateway, factory, register, case):
    body, status, field = BODIES[case]
    hostile, neighbour = register(factory), register(factory)
    response = post(device_pool(gateway, hostile), body)
    assert response.status == status, response.data
    answer = response.json()
    assert answer["error"]
    if field is not None:
        assert answer["field"] == field and answer["event"] is not None
        # One sentence naming both: "In event 2, success must be true, false or absent".
        assert answer["error"].startswith(f"In event {answer['event']}, {field} ")
    # A good report of another device, in the same flush, is written; the hostile one never is.
    assert post(device_pool(gateway, neighbour), [GOOD]).status == 202
    assert wait_for(lambda: DeviceEvent.objects.filter(device__uuid=neighbour.uuid).exists())
    assert not DeviceEvent.objects.filter(device__uuid=hostile.uuid).exists()


def test_the_shapes_devices_send_today_are_still_accepted(gateway, factory, register):
    device = register(factory)
    pool = device_pool(gateway, device)
    now = datetime.now(timezone.utc)
    body = [
        {"type": "download-started", "target": f"{HWID}-lmp-42", "version": 42, "time": now.isoformat()},
        {"type": "install-applied", "target": f"{HWID}-lmp-42", "success": True, "detail": "reboot required", "time": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
        {"type": "install-completed", "target": f"{HWID}-lmp-42", "success": False, "detail": "line 1\n\tline 2", "device": device.uuid.upper()},
        {"type": "download-completed", "time": (now - timedelta(hours=5)).astimezone(timezone(timedelta(hours=-5))).isoformat(), "firmware": {"build": 7}},
    ]
    assert post(pool, {"events": body}).status == 202
    events = wait_for(lambda: list(DeviceEvent.objects.filter(device__uuid=device.uuid)) if DeviceEvent.objects.filter(device__uuid=device.uuid).count() == 4 else None)
    assert sorted(e.event_type for e in events) == sorted(e["type"] for e in body)
    assert {e.event_type: e.detail for e in events}["install-completed"] == "line 1\n\tline 2"
    # Times are stored in UTC, whatever offset they came with.
    assert abs({e.event_type: e.reported_at for e in events}["download-completed"] - (now - timedelta(hours=5))) < timedelta(seconds=1)


HEADERS = {
    "control character in x-ats-tags": ({"x-ats-tags": "prod\x01uction"}, "x-ats-tags"),
    "escape in x-ats-tags": ({"x-ats-tags": "\x1b[31mproduction"}, "x-ats-tags"),
    "DEL in x-ats-tags": ({"x-ats-tags": "prod\x7fuction"}, "x-ats-tags"),
    "C1 control in x-ats-tags": ({"x-ats-tags": "prod\u009buction".encode()}, "x-ats-tags"),
    "over-long x-ats-tags": ({"x-ats-tags": ",".join(["production"] * 200)}, "x-ats-tags"),
    "over-long tag": ({"x-ats-tags": "t" * 65}, "x-ats-tags"),
    "control character in x-ats-target": ({"x-ats-target": f"{HWID}-lmp-\x0743"}, "x-ats-target"),
    "over-long x-ats-target": ({"x-ats-target": "a" * 300}, "x-ats-target"),
    "not UTF-8 in x-ats-tags": ({"x-ats-tags": "production\xff".encode("latin-1")}, "x-ats-tags"),
}


@pytest.mark.parametrize("case", list(HEADERS))
def test_hostile_check_in_headers_are_refused_and_change_nothing(gateway, factory, register, case):
    headers, header = HEADERS[case]
    hostile, neighbour = register(factory), register(factory)
    response = device_pool(gateway, hostile).request("GET", "/device", headers=headers)
    assert response.status == 400, response.data
    # The gateway server refuses C0 controls and DEL in any header before the handler sees them;
    # the gateway's schema refuses the rest. Both answer JSON naming the header.
    assert header in response.data.decode("utf-8", "replace").lower(), response.data
    good = {"x-ats-tags": "production", "x-ats-target": f"{HWID}-lmp-43"}
    assert device_pool(gateway, neighbour).request("GET", "/device", headers=good).status == 200
    assert wait_for(lambda: Device.objects.filter(uuid=neighbour.uuid, target_version=43).exists())
    row = Device.objects.get(uuid=hostile.uuid)
    assert (row.tag, row.target_name, row.last_seen) == ("production", "", None)
