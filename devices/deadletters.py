"""Dead letters: buffered reports the database refused, set aside so they hold back no others.

The flush records them (`dead_letter_record`); operators list, count and purge them with
`manage.py deadletters` and read their factory's on the dashboard's dead-letter page.
"""
import json
import logging
import re

from django.db import transaction

from .models import DeadLetter

logger = logging.getLogger("breakwater.deadletters")

MAX_RAW = 64 * 1024
MAX_ERROR = 2000
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def escape_text(text):
    """`text` with control characters and unpaired surrogates written as escapes: safe to store
    (PostgreSQL refuses NUL), to log on one line and to show in a terminal."""
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}" if ord(m.group()) > 0xFF else f"\\x{ord(m.group()):02x}", text)


def raw_text(raw):
    """A buffered row as JSON text with every non-ASCII character escaped, whatever it held."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "backslashreplace")
    text = json.dumps(raw, sort_keys=True, default=repr)
    return text if len(text) <= MAX_RAW else text[:MAX_RAW] + " [cut]"


def dead_letter_record(*, kind, raw, error, device_id=None, factory_id=None):
    """Set a refused report aside in a transaction of its own, and log it once.

    The device's text goes to the log only through %r, never as it came.
    """
    error_text = escape_text(str(error))[:MAX_ERROR]
    with transaction.atomic():
        letter = DeadLetter.objects.create(
            kind=kind, raw=raw_text(raw), error=error_text, device_id=device_id, factory_id=factory_id
        )
    logger.warning("dead letter %d: a %s of device %r was refused and set aside: %r", letter.pk, kind, device_id, error_text)
    return letter


def dead_letters_purge(*, before):
    """Delete the dead letters recorded before `before`; returns how many."""
    deleted, _ = DeadLetter.objects.filter(created_at__lt=before).delete()
    return deleted
