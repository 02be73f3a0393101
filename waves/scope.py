"""What a rollout goes to: a group, a limit (N devices or N% of the scope), a UUID list, or a mix.

The rules of that scope live here once, for the rollout service, rollout plans, the API schemas
and the forms: how a limit is written and bounded, how many devices a percentage picks, the cap
of one rollout, and that a rollout names at least one of them.
"""
import math
import re

from devices.uuids import MAX_UUIDS
from factory.errors import ApplicationError
from factory.plurals import counted

LIMIT_RE = re.compile(r"^\s*(\d{1,9})\s*(%?)\s*$")


def limit_parse(limit):
    """'N' or 'N%' -> (n, is_percent); None or blank -> None.

    N is 1 to MAX_UUIDS devices, N% 1% to 100% of the devices in scope.
    """
    if limit is None or (isinstance(limit, str) and not limit.strip()):
        return None
    # True is an int to Python, not a number of devices to anyone else.
    match = None if isinstance(limit, bool) else LIMIT_RE.match(str(limit))
    if not match:
        shown = "" if isinstance(limit, bool) else f" {str(limit)[:20]!r}"
        raise ApplicationError(f"Limit{shown} must be a number of devices (N) or a percentage (N%)")
    n, percent = int(match.group(1)), bool(match.group(2))
    if percent and not 0 < n <= 100:
        raise ApplicationError("A percentage limit must be between 1% and 100%")
    if not percent and not 0 < n <= MAX_UUIDS:
        raise ApplicationError(f"Limit must be between 1 and {MAX_UUIDS:,} devices")
    return n, percent


def limit_text(limit):
    """A parsed limit as the doors write it: "N" or "N%"; "" for none."""
    if limit is None:
        return ""
    n, percent = limit
    return f"{n}%" if percent else str(n)


def limit_size(limit, in_scope):
    """How many devices a parsed limit picks: N, or N% of `in_scope` devices rounded up."""
    n, percent = limit
    return math.ceil(in_scope * n / 100) if percent else n


def sample_size(limit, *, in_scope):
    """limit_size for a rollout, which stages at most MAX_UUIDS sampled devices.

    `in_scope` is called only for a percentage: counting the scope is a query.
    """
    n, percent = limit
    if not percent:
        return n
    total = in_scope()
    size = limit_size(limit, total)
    if size > MAX_UUIDS:
        raise ApplicationError(
            f"{n}% of {counted(total, 'device')} is {size:,}, more than the {MAX_UUIDS:,} one rollout may stage; "
            "use a smaller percentage or roll out to the whole group"
        )
    return size


def scope_require(*, group, limit, uuids, saved_list=None, where=None):
    """A rollout names at least one of group, limit and UUIDs (a plan's phase: or a saved list).

    `where` names the phase of a plan whose scope this is.
    """
    if group or limit or uuids or saved_list:
        return
    if where is None:
        raise ApplicationError("Choose what to roll out to: a group, a limit, a UUID list, or a combination")
    raise ApplicationError(
        f"{where}: choose what it rolls out to: a group, a limit, a saved device list, UUIDs, or a combination"
    )

