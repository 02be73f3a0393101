"""Test helpers for TUF keys: a user's personal offline targets key, registered with the factory."""
from factory.tuf.services.root_changes import offline_key_generate


def offline_targets_key(*, factory, actor):
    """Generate and register an offline targets key; return the key archive bytes (.tgz)."""
    return offline_key_generate(factory=factory, actor=actor, role="targets")
