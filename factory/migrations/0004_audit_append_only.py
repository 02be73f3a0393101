"""The audit log is append-only in the database too, so no door (raw SQL, a script, a bulk ORM
call) can rewrite or remove history. UPDATE is always refused. DELETE (and TRUNCATE on
PostgreSQL) is refused unless the transaction is a maintenance transaction that wipes whole data
sets (factory.services.audit_maintenance: `manage.py flush`, the test harness, throwaway benchmark
factories): on PostgreSQL the transaction-local setting breakwater.audit_maintenance = 'on', on
SQLite (which has no session settings a trigger can read) a row in factory_audit_maintenance,
inserted and removed inside that transaction.

SQLite drops a table's triggers when Django remakes the table (most AlterField/AddField on
SQLite): a later migration that changes factory_auditentry must create them again. The tests that
run raw UPDATE/DELETE against the table catch it if not."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MESSAGE = "the audit log is append-only"

POSTGRESQL = [
    f"""
    CREATE FUNCTION factory_auditentry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('DELETE', 'TRUNCATE') AND current_setting('breakwater.audit_maintenance', true) = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION '{MESSAGE}: % on % is refused', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'integrity_constraint_violation';
    END
    $$
    """,
    """
    CREATE TRIGGER factory_auditentry_append_only BEFORE UPDATE OR DELETE ON factory_auditentry
    FOR EACH ROW EXECUTE FUNCTION factory_auditentry_append_only()
    """,
    """
    CREATE TRIGGER factory_auditentry_no_truncate BEFORE TRUNCATE ON factory_auditentry
    FOR EACH STATEMENT EXECUTE FUNCTION factory_auditentry_append_only()
    """,
]
POSTGRESQL_REVERSE = [
    "DROP TRIGGER factory_auditentry_no_truncate ON factory_auditentry",
    "DROP TRIGGER factory_auditentry_append_only ON factory_auditentry",
    "DROP FUNCTION factory_auditentry_append_only()",
]

# RAISE(ABORT) is a constraint error in SQLite: Django raises IntegrityError, as on PostgreSQL.
SQLITE = [
    "CREATE TABLE factory_audit_maintenance (id integer NOT NULL PRIMARY KEY)",
    f"""
    CREATE TRIGGER factory_auditentry_no_update BEFORE UPDATE ON factory_auditentry
    BEGIN SELECT RAISE(ABORT, '{MESSAGE}: UPDATE on factory_auditentry is refused'); END
    """,
    f"""
    CREATE TRIGGER factory_auditentry_no_delete BEFORE DELETE ON factory_auditentry
    WHEN NOT EXISTS (SELECT 1 FROM factory_audit_maintenance)
    BEGIN SELECT RAISE(ABORT, '{MESSAGE}: DELETE on factory_auditentry is refused'); END
    """,
]
SQLITE_REVERSE = [
    "DROP TRIGGER factory_auditentry_no_delete",
    "DROP TRIGGER factory_auditentry_no_update",
    "DROP TABLE factory_audit_maintenance",
]


def _run(schema_editor, statements):
    for sql in statements[schema_editor.connection.vendor]:
        schema_editor.execute(sql, params=None)


def install(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor not in ("postgresql", "sqlite"):
        raise RuntimeError(f"Breakwater runs on PostgreSQL or SQLite, not {vendor}")
    _run(schema_editor, {"postgresql": POSTGRESQL, "sqlite": SQLITE})


def uninstall(apps, schema_editor):
    _run(schema_editor, {"postgresql": POSTGRESQL_REVERSE, "sqlite": SQLITE_REVERSE})


class Migration(migrations.Migration):

    dependencies = [
        ("factory", "0003_tuf_refresh_claim"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # History outlives the factory or user it names: deleting them is refused, not cascaded
        # or nulled (either would change entries). Python-only: no SQL.
        migrations.AlterField(
            model_name="auditentry",
            name="actor",
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, to=settings.AUTH_USER_MODEL),
        ),
        migrations.AlterField(
            model_name="auditentry",
            name="factory",
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="audit_entries", to="factory.factory"),
        ),
        migrations.RunPython(install, uninstall),
    ]
