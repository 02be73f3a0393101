"""Which database a query goes to with a read replica configured (factory/replica.py). The pages
that read it are checked against a real, frozen replica in tests/test_pgbouncer.py."""
import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.db import DEFAULT_DB_ALIAS, transaction

from devices.models import Device
from factory.replica import REPLICA, ReplicaRouter, replica_reads
from waves.models import Wave

router = ReplicaRouter()


def test_reads_go_to_the_primary_unless_marked_replica_safe():
    assert router.db_for_read(Wave) == DEFAULT_DB_ALIAS
    with replica_reads():
        assert router.db_for_read(Wave) == REPLICA
        assert router.db_for_read(Device) == REPLICA
    assert router.db_for_read(Wave) == DEFAULT_DB_ALIAS


def test_a_marked_view_reads_the_replica_and_what_runs_after_it_does_not():
    seen = []

    @replica_reads()
    def view(fail):
        seen.append(router.db_for_read(Wave))
        if fail:
            raise ValueError("the view failed")

    view(False)
    with pytest.raises(ValueError):
        view(True)
    seen.append(router.db_for_read(Wave))
    assert seen == [REPLICA, REPLICA, DEFAULT_DB_ALIAS]


def test_writes_go_to_the_primary_and_later_reads_of_the_block_follow_them():
    with replica_reads():
        assert router.db_for_write(Wave) == DEFAULT_DB_ALIAS
        # What the block reads now must include what it just wrote.
        assert router.db_for_read(Wave) == DEFAULT_DB_ALIAS
    with replica_reads():
        assert router.db_for_read(Wave) == REPLICA


def test_sessions_and_users_are_always_read_from_the_primary():
    # A session signed in a moment ago through another web process may not be on the replica yet.
    with replica_reads():
        assert router.db_for_read(Session) == DEFAULT_DB_ALIAS
        assert router.db_for_read(get_user_model()) == DEFAULT_DB_ALIAS


@pytest.mark.django_db(transaction=True)
def test_reads_inside_a_transaction_go_to_the_primary():
    # Row locks, TUF versions and the audit log are read and written in transactions: their reads
    # must see the primary's rows.
    with replica_reads():
        with transaction.atomic():
            assert router.db_for_read(Wave) == DEFAULT_DB_ALIAS
        assert router.db_for_read(Wave) == REPLICA


def test_migrations_run_on_the_primary_only():
    assert router.allow_migrate(DEFAULT_DB_ALIAS, "waves") is True
    assert router.allow_migrate(REPLICA, "waves") is False
