"""Check-ins rewrite no index. The index on last seen goes, and on PostgreSQL the device table
and the device reports keep a tenth of each page free, so a poll's new row version (and a changed
client report's) fits beside the old one: a HOT update, no new index entries, the old version
reclaimed by the next visit to the page. The single-column indexes on factory and group go
too: other indexes lead with those columns, and each index is one more entry to write when a
device's row does move (a new version, tag or group).

The fillfactor applies to pages written from now on; `VACUUM FULL devices_device` (or
pg_repack) rewrites an existing table with the room, and plain VACUUM frees room as rows churn.
"""
import django.db.models.deletion
from django.db import migrations, models

FILLFACTOR = 90
TABLES = ("devices_device", "devices_devicereport")


def fillfactor_set(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for table in TABLES:
            schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = {FILLFACTOR})")


def fillfactor_reset(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for table in TABLES:
            schema_editor.execute(f"ALTER TABLE {table} RESET (fillfactor)")


class Migration(migrations.Migration):

    dependencies = [
        ("devices", "0007_device_config_tag"),
        ("factory", "0008_pruned_target"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="device",
            name="device_last_seen",
        ),
        migrations.AlterField(
            model_name="device",
            name="factory",
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="devices", to="factory.factory"),
        ),
        migrations.AlterField(
            model_name="device",
            name="group",
            field=models.ForeignKey(
                blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="devices", to="devices.devicegroup"
            ),
        ),
        migrations.RunPython(fillfactor_set, fillfactor_reset),
    ]
