"""The TUF repository under real concurrent transactions (PostgreSQL): workers and devices at once."""
import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from tuf.api.metadata import Metadata

from devices.services import device_create
from factory.tuf.models import EMPTY_TAG, TufView
from factory.tuf.services import refresh
from factory.tuf.services.repository import ci_build_publish
from waves import served_views

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def run_at_once(count, work):
    """Run work(i) in `count` threads released together; returns results or raises the first error."""
    barrier = threading.Barrier(count)
    results, errors = [None] * count, []

    def target(i):
        try:
            barrier.wait(timeout=10)
            results[i] = work(i)
        except Exception as error:  # noqa: BLE001 - re-raised below in the test thread
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def test_two_workers_refreshing_one_tag_sign_it_once(factory):
    device = device_create(factory=factory, uuid=uuid.uuid4(), name="p", tag="production", is_production=True)
    served_views.device_metadata(device=device, filename="timestamp.json")
    anchor = TufView.objects.get(factory=factory, kind="production")
    later = timezone.now() + timedelta(hours=13)
    results = run_at_once(6, lambda i: refresh.tag_views_refresh(anchor_id=anchor.pk, now=later))
    assert results.count(True) == 1
    refreshed = TufView.objects.get(pk=anchor.pk)
    assert refreshed.version == int(later.timestamp()) and refreshed.refresh_claimed_until is None


def test_devices_of_new_tags_polling_at_once_share_one_empty_view(factory):
    devices = [device_create(factory=factory, uuid=uuid.uuid4(), name=f"p{i}", tag=f"fresh-{i % 3}", is_production=True) for i in range(8)]
    served = run_at_once(8, lambda i: served_views.device_metadata(device=devices[i], filename="timestamp.json")[0])
    assert list(TufView.objects.filter(factory=factory, kind="production").values_list("tag", flat=True)) == [EMPTY_TAG]
    assert len(set(served)) == 1


def test_concurrent_ci_builds_both_reach_the_ci_targets(factory):
    run_at_once(4, lambda i: ci_build_publish(factory=factory, version=100 + i, hardware_ids=["hw"], tags=["main"]))
    data = bytes(TufView.objects.get(factory=factory, kind="ci").targets)
    targets = Metadata.from_bytes(data).signed
    assert sorted(targets.targets) == [f"hw-lmp-{100 + i}" for i in range(4)]
    assert targets.version == 5  # one CI targets version per build, none lost
