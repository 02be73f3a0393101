"""Check-ins that do not bloat the device table: a poll still moves last seen and the online
counts, writes nothing when it changes nothing, and changes no indexed column, so PostgreSQL can make it a
heap-only update. The share of heap-only updates is measured by the soak (bench/soak.py), not
here: whether a page has room depends on what earlier tests left in the shared test database."""
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.db import connection
from django.utils import timezone

from devices.checkins import Checkin, MemoryBuffer, checkins_write, flush
from devices.fleet import fleet_seed
from devices.models import Device
from tests.factory.test_api import as_user, tokens  # noqa: F401  (fixtures)
from waves.selectors import factory_status

HWID = "intel-corei7-64"
TARGET = f"{HWID}-lmp-41"


@pytest.fixture
def fleet(factory):
    fleet_seed(factory=factory, tag="production", ungrouped=200, version=41, hardware_ids=[HWID])
    return list(Device.objects.filter(factory=factory).order_by("id"))


def poll(device, when, **facts):
    """A plain poll: the device says what it runs and which tag it follows, as every poll does."""
    return Checkin(seen=when.timestamp(), target_name=TARGET, target_version=41, tag="production", **facts)


def test_a_poll_moves_last_seen_and_brings_an_offline_device_online(as_user, factory, fleet):
    device = fleet[0]
    long_ago = timezone.now() - timedelta(hours=6)
    Device.objects.filter(factory=factory).update(last_seen=long_ago)
    dave = as_user("dave")
    assert dave.get(f"devices/{device.uuid}").json()["online"] is False
    assert factory_status(factory=factory)[0]["online"] == 0

    now = timezone.now().replace(microsecond=0)
    buf = MemoryBuffer()
    buf.checkin(device.pk, poll(device, now))
    assert flush(buf) == (1, 0)

    shown = dave.get(f"devices/{device.uuid}").json()
    assert shown["online"] is True
    assert datetime.fromisoformat(shown["last_seen"].replace("Z", "+00:00")) == now
    assert [d["uuid"] for d in dave.get("devices/", {"online": "true"}).json()["items"]] == [str(device.uuid)]
    assert factory_status(factory=factory)[0]["online"] == 1

    # Every later poll moves it again, however close to the last one.
    buf.checkin(device.pk, poll(device, now + timedelta(seconds=1)))
    assert flush(buf) == (1, 0)
    device.refresh_from_db()
    assert device.last_seen == now + timedelta(seconds=1)


def _versions_written():
    """Row versions PostgreSQL wrote into devices_device in this transaction: (all, heap-only)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'devices_device'")
        return cursor.fetchone()


def test_a_check_in_that_changes_nothing_writes_nothing(fleet):
    device = fleet[0]
    when = datetime(2030, 1, 1, tzinfo=dt_timezone.utc)
    assert checkins_write({device.pk: poll(device, when, targets_version=5)}) == 1
    before = _versions_written() if connection.vendor == "postgresql" else None
    # The same check-in again (a restored buffer), and an older one flushed late by another gateway.
    assert checkins_write({device.pk: poll(device, when, targets_version=5)}) == 0
    assert checkins_write({device.pk: poll(device, when - timedelta(minutes=5), targets_version=4)}) == 0
    if before is not None:
        assert _versions_written() == before
    device.refresh_from_db()
    assert (device.last_seen, device.targets_version_seen) == (when, 5)
    # A later targets version served is a change even at the same moment.
    assert checkins_write({device.pk: Checkin(seen=when.timestamp(), targets_version=6)}) == 1
    device.refresh_from_db()
    assert device.targets_version_seen == 6


def _indexed_columns():
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Device._meta.db_table)
    return {column for c in constraints.values() if c["index"] or c["unique"] or c["primary_key"] for column in c["columns"]}


def test_a_plain_poll_changes_no_indexed_column(fleet):
    device = fleet[0]
    columns = [f.column for f in Device._meta.concrete_fields]
    before = Device.objects.filter(pk=device.pk).values(*columns).get()
    later = before["last_seen"] + timedelta(minutes=5)
    assert checkins_write({device.pk: poll(device, later, targets_version=(before["targets_version_seen"] or 0) + 1)}) == 1
    after = Device.objects.filter(pk=device.pk).values(*columns).get()
    changed = {column for column in columns if before[column] != after[column]}
    assert changed == {"last_seen", "targets_version_seen"}
    assert not changed & _indexed_columns(), "an index on a column every poll moves makes every poll write to every index"
