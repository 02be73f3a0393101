"""A row the database refuses holds back no other: the flush bisects, sets it aside as a dead
letter, writes the rest, and the next flush works. Poison is put in the buffer directly, since
the gateway's schema stops it at the door."""
import logging
from datetime import datetime, timedelta, timezone

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection

from devices import checkins
from devices.checkins import Checkin, MemoryBuffer, flush
from devices.fleet import fleet_seed
from devices.models import DeadLetter, Device, DeviceEvent

from .test_checkins import redis_buffer

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp()
POSTGRES = connection.vendor == "postgresql"


@pytest.fixture
def fleet(factory):
    fleet_seed(factory=factory, tag="production", groups={"canary": 5}, ungrouped=0, version=41, hardware_ids=["intel-corei7-64"])
    return list(Device.objects.filter(factory=factory).order_by("name"))


@pytest.fixture(params=["memory", "redis"])
def buf(request):
    return MemoryBuffer() if request.param == "memory" else redis_buffer()


def event_row(device, **changes):
    row = {
        "device_id": device.pk,
        "factory_id": device.factory_id,
        "event_type": "install-completed",
        "target_name": "intel-corei7-64-lmp-42",
        "target_version": 42,
        "success": True,
        "detail": "ok",
        "reported_at": datetime(2030, 1, 1, tzinfo=timezone.utc).isoformat(),
    }
    return {**row, **changes}


# Rows the schema refuses at the gateway, each refused by the database (or the conversion to its
# types) on both SQLite and PostgreSQL; and on PostgreSQL what only it refuses.
POISON = {
    "negative version": {"target_version": -1},
    "version past 32 bits": {"target_version": 2**63} if not POSTGRES else {"target_version": 2**40},
    "type a list": {"event_type": ["install-completed"]},
    "no time": {"reported_at": None},
    "time +23:00": {"reported_at": "2030-01-01T00:00:00+23:00"} if POSTGRES else {"reported_at": "10000-01-01"},
    "lone surrogate": {"detail": "bad \udc80 text"},
}
if POSTGRES:
    POISON |= {"NUL": {"detail": "a\x00b"}, "target past 255": {"target_name": "x" * 300}}


@pytest.mark.parametrize("poison", sorted(POISON))
def test_a_refused_event_among_good_ones_is_set_aside_and_the_rest_are_written(fleet, buf, poison, caplog):
    good = [event_row(d, detail=f"good {i}") for i, d in enumerate(fleet)]
    bad = event_row(fleet[2], **POISON[poison])
    buf.add_events(good[:3] + [bad] + good[3:])
    with caplog.at_level(logging.WARNING, logger="breakwater.deadletters"):
        assert flush(buf) == (0, len(good))
    assert sorted(DeviceEvent.objects.values_list("detail", flat=True)) == sorted(r["detail"] for r in good)
    letter = DeadLetter.objects.get()
    assert (letter.kind, letter.device_id, letter.factory_id) == ("event", fleet[2].pk, fleet[2].factory_id)
    assert letter.error and letter.raw.isascii() and "\x00" not in letter.raw
    # Logged once, with the device and the error, the device's text escaped.
    logged = [r for r in caplog.records if r.name == "breakwater.deadletters"]
    assert len(logged) == 1 and str(fleet[2].pk) in logged[0].getMessage()
    assert "\x00" not in logged[0].getMessage() and "\udc80" not in logged[0].getMessage()
    # The next flush works: the poison is not back at the head of the buffer.
    buf.add_events([event_row(fleet[0], detail="later")])
    assert flush(buf) == (0, 1)
    assert DeviceEvent.objects.filter(detail="later").exists()
    assert DeadLetter.objects.count() == 1


def test_several_refused_rows_in_a_large_batch_are_all_found(fleet):
    buf = MemoryBuffer()
    rows = [event_row(fleet[i % len(fleet)], detail=f"row {i}") for i in range(1200)]
    for i in (0, 499, 500, 777, 1199):
        rows[i] = event_row(fleet[0], target_version=-1, detail=f"bad {i}")
    buf.add_events(rows)
    assert flush(buf) == (0, 1195)
    assert DeviceEvent.objects.filter(detail__startswith="bad").count() == 0
    assert DeadLetter.objects.count() == 5


def test_events_stay_buffered_when_the_database_is_unreachable_mid_write(fleet, monkeypatch):
    """Unreachable is not refused: nothing is set aside, nothing is lost, nothing is written twice."""
    buf = MemoryBuffer()
    rows = [event_row(d, detail=f"row {i}") for i, d in enumerate(fleet)]
    rows[3] = event_row(fleet[3], target_version=-1)
    buf.add_events(rows)
    real = checkins.dead_letter_record

    def unreachable(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(checkins, "dead_letter_record", unreachable)
    with pytest.raises(checkins.Unwritten):
        flush(buf)
    written_before = DeviceEvent.objects.count()
    assert not DeadLetter.objects.exists()
    monkeypatch.setattr(checkins, "dead_letter_record", real)
    assert flush(buf) == (0, len(rows) - 1 - written_before)
    assert sorted(DeviceEvent.objects.values_list("detail", flat=True)) == sorted(r["detail"] for i, r in enumerate(rows) if i != 3)
    assert DeadLetter.objects.count() == 1


@pytest.mark.parametrize("poison", ["negative version", "tag past 64"] if POSTGRES else ["negative version", "version past 64 bits"])
def test_a_refused_check_in_among_good_ones_is_set_aside_and_the_rest_are_written(fleet, buf, poison):
    bad = fleet[2]
    before = (bad.last_seen, bad.target_version, bad.tag)
    for d in fleet:
        buf.checkin(d.pk, Checkin(seen=T0, target_name="intel-corei7-64-lmp-42", target_version=42, tag="production"))
    if poison == "negative version":
        buf.checkin(bad.pk, Checkin(seen=T0 + 1, target_name="intel-corei7-64-lmp-43", target_version=-1))
    elif poison == "tag past 64":
        buf.checkin(bad.pk, Checkin(seen=T0 + 1, tag="t" * 100))
    else:
        buf.checkin(bad.pk, Checkin(seen=T0 + 1, target_name="intel-corei7-64-lmp-43", target_version=2**64))
    assert flush(buf) == (len(fleet) - 1, 0)
    assert set(Device.objects.exclude(pk=bad.pk).values_list("target_version", flat=True)) == {42}
    bad.refresh_from_db()
    assert (bad.last_seen, bad.target_version, bad.tag) == before
    letter = DeadLetter.objects.get()
    assert (letter.kind, letter.device_id, letter.factory_id) == ("check-in", bad.pk, bad.factory_id)
    buf.checkin(bad.pk, Checkin(seen=T0 + 2, target_version=43, target_name="intel-corei7-64-lmp-43"))
    assert flush(buf) == (1, 0)
    bad.refresh_from_db()
    assert bad.target_version == 43


def test_redis_entries_that_do_not_decode_become_dead_letters(fleet):
    buf = redis_buffer()
    buf.add_events([event_row(fleet[0], detail="before")])
    buf._redis.rpush(buf._events_key, b"{not json \xff")
    buf.add_events([event_row(fleet[1], detail="after")])
    buf._redis.hset(buf._seen_key, "not-a-device", "1")
    buf._redis.hset(buf._seen_key, str(fleet[2].pk), "yesterday")
    buf.checkin(fleet[3].pk, Checkin(seen=T0))
    assert flush(buf) == (1, 2)
    assert sorted(DeviceEvent.objects.values_list("detail", flat=True)) == ["after", "before"]
    letters = sorted(DeadLetter.objects.values_list("kind", flat=True))
    assert letters == ["check-in", "check-in", "event"]
    assert "not json" in DeadLetter.objects.get(kind="event").raw
    assert flush(buf) == (0, 0)


# --- the operator's command -------------------------------------------------------------------


def test_the_command_lists_counts_and_purges_dead_letters(fleet, capsys):
    buf = MemoryBuffer()
    buf.add_events([event_row(fleet[0], target_version=-1, detail="\x1b[2Jgone")])
    flush(buf)
    old = DeadLetter.objects.get()
    DeadLetter.objects.filter(pk=old.pk).update(created_at=datetime.now(timezone.utc) - timedelta(days=40))
    buf.checkin(fleet[1].pk, Checkin(seen=T0, target_version=-1, target_name="x-1"))
    flush(buf)
    call_command("deadletters", "--count")
    out = capsys.readouterr().out
    assert "event: 1" in out and "check-in: 1" in out and "total: 2" in out
    call_command("deadletters")
    out = capsys.readouterr().out
    assert str(fleet[0].uuid) in out and "\x1b" not in out
    call_command("deadletters", "--purge-before", (datetime.now(timezone.utc) - timedelta(days=30)).date().isoformat())
    assert "deleted 1" in capsys.readouterr().out
    assert list(DeadLetter.objects.values_list("kind", flat=True)) == ["check-in"]


def test_the_command_refuses_a_bad_date(db):
    with pytest.raises(CommandError, match="date"):
        call_command("deadletters", "--purge-before", "soon")


def test_an_unknown_device_id_in_the_buffer_is_dropped_like_a_deleted_device(fleet):
    buf = MemoryBuffer()
    buf.add_events([event_row(fleet[0]), {**event_row(fleet[0]), "device_id": 10**12}])
    assert flush(buf) == (0, 1)
    assert not DeadLetter.objects.exists()
