"""What devices say about themselves (hardware, network, client configuration, apps), kept as the
latest report of each kind per device. The client they run comes in every request's headers: it
travels with the check-in and `devices.checkins` writes it at the flush.

These come rarely (aktualizr-lite sends them when it starts and when they change), so each is one
upsert, no buffer: a buffered write would have to keep bodies of up to 64 KiB in Redis for
seconds to save a write that happens a few times per device per boot. A report equal to the last
one this process wrote for the device is not written again.
"""
import hashlib
import threading
from collections import OrderedDict

from django.utils import timezone

from .models import DeviceReport

_recent = OrderedDict()  # (device id, kind) -> sha256 of the content last written by this process
_recent_lock = threading.Lock()
RECENT_SIZE = 50_000


def device_report_store(*, device_id, kind, content):
    """Store `content` (already checked by `devices.reports`) as the device's latest `kind` report.

    Returns True if written, False if it was the content already stored by this process."""
    key = (device_id, kind)
    digest = hashlib.sha256(content.encode()).digest()
    with _recent_lock:
        if _recent.get(key) == digest:
            _recent.move_to_end(key)
            return False
    DeviceReport.objects.bulk_create(
        [DeviceReport(device_id=device_id, kind=kind, content=content, received_at=timezone.now())],
        update_conflicts=True,
        unique_fields=["device", "kind"],
        update_fields=["content", "received_at"],
    )
    with _recent_lock:
        _recent[key] = digest
        _recent.move_to_end(key)
        while len(_recent) > RECENT_SIZE:
            _recent.popitem(last=False)
    return True


def recent_forget():
    """Forget what this process wrote (tests; a process that must write everything again)."""
    with _recent_lock:
        _recent.clear()
