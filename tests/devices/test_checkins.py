"""Check-in coalescing and batched writes: many polls, one row update per device per flush."""
import os
import uuid
from datetime import datetime, timezone

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices import checkins
from devices.checkins import Checkin, MemoryBuffer, RedisBuffer, checkins_write, flush
from devices.fleet import fleet_seed
from devices.models import Device, DeviceEvent

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp()


@pytest.fixture
def fleet(factory):
    fleet_seed(factory=factory, tag="production", groups={"canary": 3}, ungrouped=2, version=41, hardware_ids=["intel-corei7-64"])
    return list(Device.objects.filter(factory=factory).order_by("name"))


def redis_buffer(prefix=None):
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("set REDIS_URL to test the Redis buffer (CI does)")
    buf = RedisBuffer(url, prefix or f"breakwater-test:{uuid.uuid4()}")
    return buf


@pytest.fixture(params=["memory", "redis"])
def buf(request):
    return MemoryBuffer() if request.param == "memory" else redis_buffer()


def test_many_check_ins_of_a_device_become_one_update_with_the_latest(fleet, buf):
    device = fleet[0]
    for i in range(50):
        buf.checkin(device.pk, Checkin(seen=T0 + i, target_name=f"intel-corei7-64-lmp-{41 + (i >= 40)}", target_version=41 + (i >= 40), tag="production"))
    buf.checkin(device.pk, Checkin(seen=T0 + 60, targets_version=7))
    buf.checkin(device.pk, Checkin(seen=T0 + 61, targets_version=5))
    with CaptureQueriesContext(connection) as queries:
        assert flush(buf) == (1, 0)
    assert sum(q["sql"].lstrip().upper().startswith("UPDATE") for q in queries.captured_queries) == 1
    device.refresh_from_db()
    assert device.last_seen.timestamp() == T0 + 61
    assert (device.target_name, device.target_version) == ("intel-corei7-64-lmp-42", 42)
    assert device.targets_version_seen == 7
    assert flush(buf) == (0, 0)


def test_a_late_flush_never_moves_a_device_back(fleet):
    device = fleet[0]
    checkins_write({device.pk: Checkin(seen=T0 + 100, target_name="intel-corei7-64-lmp-42", target_version=42, tag="production", targets_version=9)})
    # An older check-in flushed later by another gateway process.
    checkins_write({device.pk: Checkin(seen=T0, target_name="intel-corei7-64-lmp-41", target_version=41, tag="old", targets_version=3)})
    device.refresh_from_db()
    assert device.last_seen.timestamp() == T0 + 100
    assert (device.target_version, device.tag, device.targets_version_seen) == (42, "production", 9)


def test_one_statement_updates_a_batch_of_devices(fleet):
    with CaptureQueriesContext(connection) as queries:
        updated = checkins_write({d.pk: Checkin(seen=T0, target_name="intel-corei7-64-lmp-43", target_version=43) for d in fleet})
    assert updated == len(fleet)
    assert len([q for q in queries.captured_queries if "UPDATE" in q["sql"].upper()]) == 1
    assert set(Device.objects.values_list("target_version", flat=True)) == {43}


def test_buffered_events_are_written_in_a_batch_and_deleted_devices_are_skipped(fleet, buf):
    kept, deleted = fleet[0], fleet[1]
    rows = [
        {
            "device_id": d.pk,
            "factory_id": d.factory_id,
            "event_type": "install-completed",
            "target_name": "intel-corei7-64-lmp-42",
            "target_version": 42,
            "success": False,
            "detail": "boot failed",
            "reported_at": datetime(2030, 1, 1, tzinfo=timezone.utc).isoformat(),
        }
        for d in (kept, deleted)
    ]
    buf.add_events(rows)
    deleted.delete()
    assert flush(buf) == (0, 1)
    event = DeviceEvent.objects.get()
    assert (event.device_id, event.success, event.target_version, event.detail) == (kept.pk, False, 42, "boot failed")


def test_events_stay_buffered_when_the_write_fails(fleet, monkeypatch):
    buf = MemoryBuffer()
    row = {"device_id": fleet[0].pk, "factory_id": fleet[0].factory_id, "event_type": "install-started", "reported_at": datetime.now(timezone.utc).isoformat()}
    buf.add_events([row])

    def broken(rows):
        raise RuntimeError("database down")

    monkeypatch.setattr(checkins, "events_write", broken)
    with pytest.raises(RuntimeError):
        flush(buf)
    monkeypatch.undo()
    assert flush(buf) == (0, 1)


def test_check_ins_stay_buffered_when_the_write_fails(fleet, buf, monkeypatch):
    device = fleet[0]
    buf.checkin(device.pk, Checkin(seen=T0, target_name="intel-corei7-64-lmp-42", target_version=42, tag="production", targets_version=4))

    def broken(checkins):
        raise RuntimeError("database down")

    monkeypatch.setattr(checkins, "checkins_write", broken)
    with pytest.raises(RuntimeError):
        flush(buf)
    # A poll while the database is down: the newest check-in wins, the highest served version stays.
    buf.checkin(device.pk, Checkin(seen=T0 + 5, targets_version=3))
    monkeypatch.undo()
    assert flush(buf) == (1, 0)
    device.refresh_from_db()
    assert device.last_seen.timestamp() == T0 + 5
    assert (device.target_version, device.tag, device.targets_version_seen) == (42, "production", 4)


def test_check_ins_stay_in_the_gateway_when_redis_fails_during_the_push(fleet, monkeypatch):
    import redis

    buf = redis_buffer()
    device = fleet[0]
    buf.checkin(device.pk, Checkin(seen=T0, target_name="intel-corei7-64-lmp-42", target_version=42))

    def unreachable(self, *args, **kwargs):
        raise redis.exceptions.ConnectionError("Redis is down")

    monkeypatch.setattr(redis.client.Pipeline, "execute", unreachable)
    with pytest.raises(redis.exceptions.ConnectionError):
        flush(buf)
    monkeypatch.undo()
    assert flush(buf) == (1, 0)
    device.refresh_from_db()
    assert (device.last_seen.timestamp(), device.target_version) == (T0, 42)


def test_two_gateways_pushing_out_of_order_keep_the_newest_check_in(fleet):
    """Each gateway process pushes its own check-ins at its own flush: an older check-in pushed
    after a newer one, before anyone drains, must not replace it."""
    prefix = f"breakwater-test:{uuid.uuid4()}"
    gateway_1, gateway_2 = redis_buffer(prefix), redis_buffer(prefix)
    device, other = fleet[0], fleet[1]
    gateway_1.checkin(device.pk, Checkin(seen=T0, target_name="intel-corei7-64-lmp-41", target_version=41, tag="production"))
    gateway_2.checkin(device.pk, Checkin(seen=T0 + 10, target_name="intel-corei7-64-lmp-42", target_version=42, tag="production"))
    gateway_2.checkin(other.pk, Checkin(seen=T0 + 10))
    gateway_1.checkin(other.pk, Checkin(seen=T0 + 5, target_name="intel-corei7-64-lmp-42", target_version=42, tag="lab"))
    gateway_2.push()
    gateway_1.push()
    assert flush(gateway_1) == (2, 0)
    device.refresh_from_db()
    other.refresh_from_db()
    assert (device.last_seen.timestamp(), device.target_version) == (T0 + 10, 42)
    # As in one process's memory: a check-in older than the latest changes nothing.
    assert (other.last_seen.timestamp(), other.target_version, other.tag) == (T0 + 10, 41, "production")
