"""Which database a query goes to when a read replica is configured (DATABASE_REPLICA_URL): the
primary, except the reads a door marks with `replica_reads` (lists, status panels, exports).

A replica lags the primary. Only reads that may show the fleet a moment late go there; what
decides or changes something reads the primary: a transaction (and so every row lock, TUF
version and audit entry), whatever a request reads after it wrote, and sessions and users,
which a sign-in on another web process has only just written.
"""
from contextlib import contextmanager
from contextvars import ContextVar

from django.db import DEFAULT_DB_ALIAS, connections

REPLICA = "replica"  # the alias factory/project/settings.py gives DATABASE_REPLICA_URL
PRIMARY_ONLY_APPS = frozenset({"sessions", "auth"})

_allowed = ContextVar("breakwater_replica_reads", default=False)


@contextmanager
def replica_reads():
    """Reads in this block (or view, as a decorator) may come from the replica."""
    token = _allowed.set(True)
    try:
        yield
    finally:
        _allowed.reset(token)


class ReplicaRouter:
    def db_for_read(self, model, **hints):
        if not _allowed.get() or model._meta.app_label in PRIMARY_ONLY_APPS:
            return DEFAULT_DB_ALIAS
        if connections[DEFAULT_DB_ALIAS].in_atomic_block:
            return DEFAULT_DB_ALIAS
        return REPLICA

    def db_for_write(self, model, **hints):
        # The rest of the block reads the primary: it must see what it has just written.
        _allowed.set(False)
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1, obj2, **hints):
        return True  # the same rows, whichever copy they were read from

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == DEFAULT_DB_ALIAS
