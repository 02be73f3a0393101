"""How long each kind of signed metadata lives, when it is re-signed, and the repository's size
limits: all read from settings, so operators tune them in one place."""
from datetime import timedelta

from django.conf import settings


def _setting(name, default):
    return getattr(settings, name, default)


def timestamp_lifetime():
    return timedelta(hours=float(_setting("BREAKWATER_TUF_TIMESTAMP_HOURS", 24)))


def snapshot_lifetime():
    return timedelta(days=float(_setting("BREAKWATER_TUF_SNAPSHOT_DAYS", 7)))


def refresh_margin():
    """Re-sign a timestamp or snapshot once less than this is left (well before it ends)."""
    return timedelta(hours=float(_setting("BREAKWATER_TUF_REFRESH_MARGIN_HOURS", 12)))


def ci_targets_lifetime():
    return timedelta(days=float(_setting("BREAKWATER_TUF_CI_TARGETS_DAYS", 90)))


def ci_targets_margin():
    return timedelta(days=float(_setting("BREAKWATER_TUF_CI_TARGETS_REFRESH_DAYS", 30)))


def root_lifetime():
    return timedelta(days=float(_setting("BREAKWATER_TUF_ROOT_DAYS", 365)))


def root_margin():
    return timedelta(days=float(_setting("BREAKWATER_TUF_ROOT_REFRESH_DAYS", 60)))


def baseline_lifetime():
    # Empty targets grant nothing to install, and snapshots pin the targets version, so a long
    # life is safe; it saves production tags without waves from needing a yearly offline signing.
    return timedelta(days=float(_setting("BREAKWATER_TUF_BASELINE_DAYS", 3650)))


def ci_keep_builds():
    """How many of the newest CI builds of each tag the CI targets keep."""
    return int(_setting("BREAKWATER_TUF_CI_KEEP_BUILDS", 50))


def ci_targets_max_bytes():
    # python-tuf's client refuses targets over 5 MB by default; stay well under it.
    return int(_setting("BREAKWATER_TUF_CI_TARGETS_MAX_BYTES", 2_000_000))


def max_tags():
    """How many production tags (tags with a wave or a production view) a factory may have."""
    return int(_setting("BREAKWATER_TUF_MAX_TAGS", 1000))
