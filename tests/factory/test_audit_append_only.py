"""The audit log is append-only at every door down to the database: raw SQL, the ORM's bulk calls
and the deletions that would cascade into it are refused, on SQLite and PostgreSQL alike. Only a
maintenance transaction that wipes whole data sets (flush, a throwaway factory) may delete rows."""
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.db.models import ProtectedError

from factory.models import AuditEntry, Factory
from factory.services import audit_maintenance, audit_record, factory_purge
from factory.tuf.services.repository import factory_create

TABLE = AuditEntry._meta.db_table


@pytest.fixture
def history(factory, alice):
    audit_record(factory=factory, actor=alice, action="test.first", target="x", details={"n": 1})
    audit_record(factory=factory, actor=alice, action="test.second", target="y")
    return snapshot()


def snapshot():
    return list(AuditEntry.objects.order_by("id").values())


def refused(sql, params=()):
    """Run raw SQL that the database must refuse; the test's transaction goes on."""
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_raw_sql_update_is_refused(history):
    first = history[0]["id"]
    refused(f"UPDATE {TABLE} SET action = 'forged' WHERE id = %s", [first])
    refused(f"UPDATE {TABLE} SET actor_name = 'mallory'")
    refused(f"UPDATE {TABLE} SET actor_id = NULL")
    assert snapshot() == history


def test_raw_sql_delete_is_refused(history):
    refused(f"DELETE FROM {TABLE} WHERE id = %s", [history[0]["id"]])
    refused(f"DELETE FROM {TABLE}")
    assert snapshot() == history


@pytest.mark.postgres
def test_truncate_is_refused_on_postgresql(history):
    with connection.cursor() as cursor:
        # Else PostgreSQL refuses for another reason: the rows' foreign key checks are still pending.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    refused(f"TRUNCATE {TABLE}")
    refused(f"TRUNCATE {Factory._meta.db_table} CASCADE")  # reaches the audit table through its foreign key
    assert snapshot() == history


def test_orm_bulk_update_and_delete_are_refused(history, factory):
    entries = AuditEntry.objects.filter(factory=factory)
    with pytest.raises(ValueError, match="append-only"):
        entries.update(action="forged")
    with pytest.raises(ValueError, match="append-only"):
        entries.delete()
    with pytest.raises(ValueError, match="append-only"):
        factory.audit_entries.all().delete()
    with pytest.raises(ValueError, match="append-only"):
        AuditEntry.objects.bulk_update([AuditEntry(pk=history[0]["id"], action="forged")], ["action"])
    assert snapshot() == history


def test_an_entry_cannot_be_saved_again_even_as_a_new_instance_with_an_old_id(history):
    entry = AuditEntry.objects.get(pk=history[0]["id"])
    entry.action = "forged"
    with pytest.raises(ValueError, match="append-only"):
        entry.save()
    with pytest.raises(ValueError, match="append-only"):
        entry.delete()
    forged = AuditEntry(pk=history[0]["id"], factory_id=history[0]["factory_id"], actor_name="mallory", action="forged")
    with pytest.raises(ValueError, match="append-only"):
        forged.save()
    assert snapshot() == history


def test_the_database_refuses_what_gets_past_the_python_checks(history):
    # The base manager and a raw delete skip the model's own refusals; the triggers do not.
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        AuditEntry._base_manager.filter(pk=history[0]["id"]).update(action="forged")
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        AuditEntry._base_manager.all()._raw_delete(connection.alias)
    assert snapshot() == history


def test_a_factory_or_user_with_history_cannot_be_deleted(history, factory, alice):
    with pytest.raises(ProtectedError):
        factory.delete()
    with pytest.raises(ProtectedError):
        alice.delete()
    assert Factory.objects.filter(pk=factory.pk).exists()
    assert get_user_model().objects.filter(pk=alice.pk).exists()
    assert snapshot() == history


def test_a_user_with_history_is_deactivated_instead_and_their_name_stays(history, alice, client):
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    assert not client.login(username="alice", password="alice-pass-1")
    assert snapshot() == history
    assert {e["actor_name"] for e in history if e["actor_id"] == alice.pk} == {"alice"}


def test_a_maintenance_transaction_may_delete_but_never_update(history):
    with pytest.raises(IntegrityError, match="append-only"), audit_maintenance(), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET action = 'forged'")
    assert snapshot() == history
    with audit_maintenance(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE id = %s", [history[0]["id"]])
    assert snapshot() == history[1:]
    # The permission ended with the block, though the enclosing (test) transaction goes on.
    refused(f"DELETE FROM {TABLE}")
    assert snapshot() == history[1:]


def test_a_failed_maintenance_block_leaves_nothing_behind(history):
    with pytest.raises(RuntimeError), audit_maintenance(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE}")
        raise RuntimeError("abort the wipe")
    assert snapshot() == history
    refused(f"DELETE FROM {TABLE}")


def test_purging_a_throwaway_factory_keeps_every_other_factorys_history(history, factory):
    throwaway = factory_create(name="bench-throwaway")
    audit_record(factory=throwaway, actor=None, action="test.bench")
    factory_purge(factory=throwaway)
    assert not Factory.objects.filter(name="bench-throwaway").exists()
    assert snapshot() == history


@pytest.mark.django_db(transaction=True)
def test_flush_empties_the_audit_log_and_leaves_it_append_only():
    # Transactional tests are torn down by this same flush (TRUNCATE on PostgreSQL).
    factory = factory_create(name="flushed")
    audit_record(factory=factory, actor=None, action="test.flush")
    call_command("flush", interactive=False, verbosity=0)
    assert AuditEntry.objects.count() == 0
    factory = factory_create(name="after-flush")
    refused(f"DELETE FROM {TABLE}")
    if connection.vendor == "postgresql":
        refused(f"TRUNCATE {TABLE}")
    assert AuditEntry.objects.filter(factory=factory).count() == 1
