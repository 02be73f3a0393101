"""Fleet counts: the production devices per (factory, tag, group, version, targets version
served, minute last seen), kept by PostgreSQL in the transaction of every write to the device
table, so the wave status reads counts that cost what changed instead of passing over the fleet
(waves/status_counts.py reads them, and recounts them to prove them).

Statement-level triggers with transition tables: one INSERT per statement, however many rows it
wrote, of the deltas summed per key; a check-in that stays in the same minute nets to nothing and
writes nothing. Inserts only, so two writers never wait on each other's counts. SQLite keeps no
counts: there the status counts the devices when it reads.

The fill counts the devices already there, once.
"""
from django.db import migrations, models

# Minutes since the epoch: the granularity of "last seen" in the counts. The status rounds its
# offline and stuck cutoffs down to the minute, so counting by minute is exact.
MINUTE_FUNCTION = """
CREATE OR REPLACE FUNCTION breakwater_minute(at timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT COALESCE(floor(extract(epoch FROM at) / 60)::bigint, -1) $$;
"""

FLEET_KEY = "d.factory_id, d.tag, COALESCE(d.group_id, 0), COALESCE(d.target_version, -1), COALESCE(d.targets_version_seen, -1), breakwater_minute(d.last_seen)"

DELTAS = """
INSERT INTO devices_fleetcount (factory_id, tag, group_id, target_version, targets_seen, seen_minute, n)
SELECT k.factory_id, k.tag, k.group_id, k.target_version, k.targets_seen, k.seen_minute, SUM(k.n)
  FROM ({deltas}) AS k (factory_id, tag, group_id, target_version, targets_seen, seen_minute, n)
 GROUP BY 1, 2, 3, 4, 5, 6 HAVING SUM(k.n) <> 0
"""
OLD = f"SELECT {FLEET_KEY}, -1 FROM old_rows d WHERE d.is_production"
NEW = f"SELECT {FLEET_KEY}, 1 FROM new_rows d WHERE d.is_production"

TRIGGERS = f"""
CREATE OR REPLACE FUNCTION breakwater_fleet_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {DELTAS.format(deltas=NEW)}; RETURN NULL; END $$;
CREATE OR REPLACE FUNCTION breakwater_fleet_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {DELTAS.format(deltas=OLD + " UNION ALL " + NEW)}; RETURN NULL; END $$;
CREATE OR REPLACE FUNCTION breakwater_fleet_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {DELTAS.format(deltas=OLD)}; RETURN NULL; END $$;
CREATE TRIGGER breakwater_fleet_insert AFTER INSERT ON devices_device REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION breakwater_fleet_insert();
CREATE TRIGGER breakwater_fleet_update AFTER UPDATE ON devices_device REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION breakwater_fleet_update();
CREATE TRIGGER breakwater_fleet_delete AFTER DELETE ON devices_device REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION breakwater_fleet_delete();
"""

FILL = f"""
INSERT INTO devices_fleetcount (factory_id, tag, group_id, target_version, targets_seen, seen_minute, n)
SELECT {FLEET_KEY}, COUNT(*) FROM devices_device d WHERE d.is_production GROUP BY 1, 2, 3, 4, 5, 6
"""

UNDO = """
DROP TRIGGER IF EXISTS breakwater_fleet_insert ON devices_device;
DROP TRIGGER IF EXISTS breakwater_fleet_update ON devices_device;
DROP TRIGGER IF EXISTS breakwater_fleet_delete ON devices_device;
DROP FUNCTION IF EXISTS breakwater_fleet_insert();
DROP FUNCTION IF EXISTS breakwater_fleet_update();
DROP FUNCTION IF EXISTS breakwater_fleet_delete();
"""


def counts_keep(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            # No device row changes between the fill and the triggers taking over.
            cursor.execute("LOCK TABLE devices_device IN SHARE MODE")
            cursor.execute(MINUTE_FUNCTION)
            cursor.execute(TRIGGERS)
            cursor.execute(FILL)


def counts_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(UNDO)


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0008_device_checkins_heap_only'),
        ('factory', '0008_pruned_target'),
    ]

    operations = [
        migrations.CreateModel(
            name='FleetCount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('factory_id', models.BigIntegerField()),
                ('tag', models.CharField(max_length=64)),
                ('group_id', models.BigIntegerField()),
                ('target_version', models.BigIntegerField()),
                ('targets_seen', models.BigIntegerField()),
                ('seen_minute', models.BigIntegerField()),
                ('n', models.BigIntegerField()),
            ],
        ),
        migrations.AddIndex(
            model_name='device',
            index=models.Index(fields=['group', 'created_at'], name='device_group_joined'),
        ),
        migrations.AddIndex(
            model_name='fleetcount',
            index=models.Index(fields=['factory_id', 'tag'], name='fleetcount_tag'),
        ),
        migrations.RunPython(counts_keep, counts_drop),
    ]
