"""The gateway keeps a tag's view rows in memory for a second; everywhere else they are read each time."""
import time

from devices.fleet import fleet_seed
from devices.models import Device
from factory.tuf import served
from waves import served_views


def _device(factory):
    fleet_seed(factory=factory, tag="production", ungrouped=1, hardware_ids=["hw"])
    device = Device.objects.select_related("factory").get()
    served_views.device_metadata(device=device, filename="timestamp.json")  # the production view exists
    served._tag_views.clear()
    return device


def test_view_rows_are_read_on_every_poll_by_default(factory, django_assert_num_queries, settings):
    device = _device(factory)
    settings.BREAKWATER_GATEWAY_VIEW_CACHE_SECONDS = 0
    with django_assert_num_queries(1):
        served_views.device_metadata(device=device, filename="timestamp.json")
    with django_assert_num_queries(1):
        served_views.device_metadata(device=device, filename="timestamp.json")


def test_the_gateway_reads_a_tags_view_rows_once_a_second(factory, django_assert_num_queries, settings):
    device = _device(factory)
    settings.BREAKWATER_GATEWAY_VIEW_CACHE_SECONDS = 0.3
    with django_assert_num_queries(1):
        first = served_views.device_metadata(device=device, filename="timestamp.json")
    with django_assert_num_queries(0):
        assert served_views.device_metadata(device=device, filename="timestamp.json") == first
    time.sleep(0.35)
    with django_assert_num_queries(1):
        served_views.device_metadata(device=device, filename="timestamp.json")
    served._tag_views.clear()
