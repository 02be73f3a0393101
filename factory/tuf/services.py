"""TUF repository writes: keys, roots and the signed views devices are served.

Filled in by the TUF repository work; the foundation calls these at the right moments.
"""


def repository_init(*, factory):
    """Create the factory's keys and its CI and production roots (version 1)."""


def ci_view_publish(*, factory):
    """Re-sign the CI targets, snapshot and timestamp after a CI build is published."""
