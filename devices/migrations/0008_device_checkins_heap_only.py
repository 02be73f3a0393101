"""Check-ins rewrite no index: the index on last seen goes, and on PostgreSQL the device table
keeps a tenth of each page free, so a poll's new row version fits beside the old one (a HOT
update: no new index entries, the old version reclaimed by the next visit to the page).

The fillfactor applies to pages written from now on; `VACUUM FULL devices_device` (or
pg_repack) rewrites an existing table with the room, and plain VACUUM frees room as rows churn.
"""
from django.db import migrations

FILLFACTOR = 90


def fillfactor_set(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE devices_device SET (fillfactor = {FILLFACTOR})")


def fillfactor_reset(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE devices_device RESET (fillfactor)")


class Migration(migrations.Migration):

    dependencies = [
        ("devices", "0007_device_config_tag"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="device",
            name="device_last_seen",
        ),
        migrations.RunPython(fillfactor_set, fillfactor_reset),
    ]
