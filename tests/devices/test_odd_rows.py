"""Rows stored before the gateway's schema refused them (or written by hand) never break a page:
the device's events API and page read a time past year 9999 clamped, and the dead-letter page
shows what devices sent as text, for the roles that may read it."""
from datetime import datetime, timezone

import pytest
from django.db import connection
from django.urls import reverse

from devices.checkins import MemoryBuffer, flush
from devices.fleet import fleet_seed
from devices.models import DeadLetter, Device, DeviceEvent
from tests.factory.test_api import as_user, tokens  # noqa: F401  (fixtures)
from tests.factory.test_views import login

pytestmark = pytest.mark.django_db


@pytest.fixture
def device(factory):
    fleet_seed(factory=factory, tag="production", groups={}, ungrouped=1, version=41)
    return Device.objects.get(factory=factory)


def store_far_future_event(device):
    """An event at 9999-12-31T23:00-05:00, which is year 10000 in UTC where PostgreSQL keeps it."""
    event = DeviceEvent.objects.create(
        factory_id=device.factory_id, device=device, event_type="install-completed", success=False, detail="odd", reported_at=datetime(2030, 1, 1, tzinfo=timezone.utc)
    )
    table = connection.ops.quote_name(DeviceEvent._meta.db_table)
    stamp = "9999-12-31T23:00:00-05:00" if connection.vendor == "postgresql" else "9999-12-31 23:00:00"
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET reported_at = %s WHERE id = %s", [stamp, event.pk])
    DeviceEvent.objects.create(
        factory_id=device.factory_id, device=device, event_type="download-started", detail="normal", reported_at=datetime(2030, 1, 1, tzinfo=timezone.utc)
    )


def test_the_events_api_reads_an_event_past_year_9999(as_user, device):
    store_far_future_event(device)
    response = as_user("dave").get(f"devices/{device.uuid}/events")
    assert response.status_code == 200
    items = response.json()["items"]
    assert [e["detail"] for e in items] == ["odd", "normal"]
    assert items[0]["reported_at"].startswith("9999-12-")


def test_the_device_page_reads_an_event_past_year_9999(client, dave, device):
    store_far_future_event(device)
    page = login(client, dave).get(reverse("device-detail", args=[device.uuid]))
    assert page.status_code == 200
    assert b"odd" in page.content and b"9999-12-" in page.content


def poison(device, detail):
    buf = MemoryBuffer()
    buf.add_events([{"device_id": device.pk, "factory_id": device.factory_id, "event_type": "install-completed", "target_version": -1, "detail": detail, "reported_at": "2030-01-01T00:00:00+00:00"}])
    flush(buf)


@pytest.mark.parametrize("user, status", [("alice", 200), ("dave", 200), ("bob", 403), ("carol", 403)])
def test_the_dead_letter_page_is_for_admins_and_support(client, request, device, user, status):
    poison(device, "<script>alert(1)</script>")
    page = login(client, request.getfixturevalue(user)).get(reverse("dead-letter-list"))
    assert page.status_code == status
    if status == 200:
        html = page.content.decode()
        assert device.name in html and "1 event" in html
        assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_dead_letter_page_shows_only_the_factorys_own(client, eve, device):
    poison(device, "secret of the first factory")
    assert DeadLetter.objects.count() == 1
    page = login(client, eve).get(reverse("dead-letter-list"))
    assert page.status_code == 200
    assert b"secret of the first factory" not in page.content and b"Nothing was set aside" in page.content
