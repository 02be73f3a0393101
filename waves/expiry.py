"""Expiry warnings for everything a factory signs offline: its open waves' and armed rollbacks' targets with the TUF
repository's own (production and baseline targets, an offline root)."""
from factory.tuf import selectors as tuf_selectors

from .models import Wave


def expiring_targets(*, factory, within_days=30):
    """factory.tuf.selectors.expiring_targets, the factory's open waves included."""
    # An armed rollback too: it activates only while its targets have not expired.
    statuses = (*Wave.OPEN_STATUSES, Wave.Status.ARMED)
    waves = Wave.objects.filter(factory=factory, status__in=statuses).values("name", "tag", "version", "expires_at")
    return tuf_selectors.expiring_targets(factory=factory, within_days=within_days, waves=list(waves))


def wave_expiring_targets(*, wave, within_days=30):
    """The warnings that concern one wave: its own targets (while open) and its tag's production targets."""
    warnings = expiring_targets(factory=wave.factory, within_days=within_days)
    return [w for w in warnings if w["wave"] == wave.name or (w["kind"] == "production-targets" and w["tag"] == wave.tag)]
