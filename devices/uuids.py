"""The one parser for device UUID lists, used by every door (dashboard, API, plans) of devices and
waves, and the one cap on how many a list may hold."""
import re
import uuid

from django.conf import settings

from factory.errors import ApplicationError
from factory.plurals import counted

# The most UUIDs one list may hold: a rollout's, a saved list's, a group move's; a `--limit N`
# samples at most as many. Read once: the API schemas' bounds are built from it at import.
MAX_UUIDS = settings.BREAKWATER_ROLLOUT_MAX_UUIDS
MAX_TOKEN_LENGTH = 60
# `,` `;` `|` and any whitespace, including every kind of newline (\r\n, \v, \f, \x1c-\x1e,
# \x85, \u2028, \u2029): Python's \s covers all of them for str patterns.
SEPARATORS = re.compile(r"[,;|\s]+")
_CANONICAL = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def parse_uuid_list(value, *, max_items=MAX_UUIDS):
    """Parse a UUID list; return unique UUIDs in first-seen order.

    `value` is text (any of the separators above) or an iterable of strings. Malformed tokens
    are an error that names them; so are an empty list and more than `max_items` UUIDs.
    """
    if value is None:
        raise ApplicationError("The UUID list is empty", code="uuids_empty")
    if isinstance(value, (list, tuple)) and value and all(isinstance(item, uuid.UUID) for item in value):
        # Already parsed by a form of the same rules: only the dedup and the cap remain.
        return _capped(list(dict.fromkeys(value)), max_items)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ApplicationError("The UUID list is not UTF-8 text", code="uuids_invalid") from None
    text = value if isinstance(value, str) else "\n".join(str(item) for item in value)
    tokens = [t for t in SEPARATORS.split(text) if t]
    if not tokens:
        raise ApplicationError("The UUID list is empty", code="uuids_empty")
    bad = []
    seen = {}
    for token in tokens:
        if len(token) > MAX_TOKEN_LENGTH or not _CANONICAL.match(token):
            if len(bad) < 5:
                bad.append(token[:MAX_TOKEN_LENGTH] + ("…" if len(token) > MAX_TOKEN_LENGTH else ""))
            else:
                bad.append(None)
            continue
        parsed = uuid.UUID(token)
        seen.setdefault(parsed, None)
    if bad:
        shown = ", ".join(repr(b) for b in bad if b is not None)
        more = len(bad) - 5
        suffix = f" and {more} more" if more > 0 else ""
        raise ApplicationError(f"Not a device UUID: {shown}{suffix}", code="uuids_invalid")
    return _capped(list(seen), max_items)


def _capped(uuids, max_items):
    if len(uuids) > max_items:
        raise ApplicationError(
            f"The UUID list has {counted(len(uuids), 'device')}; at most {max_items:,} may be given to one rollout", code="uuids_too_many"
        )
    return uuids
