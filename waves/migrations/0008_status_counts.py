"""Status counts per wave: what each device did in the wave (WaveActivity) and how many
production devices on the wave's tag share each key of device columns and activity
(WaveActivityCount), kept by PostgreSQL in the transaction of every write that changes them:
an event reported, a device staged, a retry, a device row that moves. With the fleet counts of
devices migration 0009 they let the wave status read a few hundred rows instead of the fleet
(waves/status_counts.py, which also recounts them from the rows to prove them).

Every trigger here that changes a device's activity first locks the device rows, in id order, as
a device update does: a device's row and its activity never change in two transactions at once,
so each trigger's key of the device is the one the other committed. Counts are delta rows, only
inserted, as the fleet counts are.

Existing waves start with `counts_ready` false: the status cycle rebuilds the counts of the waves
it follows (`status_counts.wave_counts_rebuild`), and recounts the rest when it reads them.
"""
import django.db.models.deletion
from django.db import migrations, models

FAILED = "(a.last_failure IS NOT NULL AND (a.last_success IS NULL OR a.last_failure > a.last_success))"
# The key of a device `d` with activity `a` in wave `w`: waves_waveactivitycount's columns. The
# last report's minute is kept only while it can still make the device stuck.
ACTIVITY_KEY = f"""w.id, COALESCE(d.group_id, 0), COALESCE(d.target_version, -1), COALESCE(d.targets_version_seen, -1),
       breakwater_minute(d.last_seen), a.progress, {FAILED}, COALESCE(a.rollout_id, 0),
       CASE WHEN {FAILED} OR (d.target_version IS NOT NULL AND d.target_version >= w.version) THEN -1 ELSE breakwater_minute(a.last_report) END"""
COUNTED = "w.counts_ready AND d.is_production AND d.factory_id = w.factory_id AND d.tag = w.tag"
COLUMNS = "wave_id, group_id, target_version, targets_seen, seen_minute, progress, failed, rollout_id, since_minute"

DELTAS = f"""
INSERT INTO waves_waveactivitycount ({COLUMNS}, n)
SELECT {', '.join('k.' + c.strip() for c in COLUMNS.split(','))}, SUM(k.n) FROM ({{deltas}}) AS k ({COLUMNS}, n)
 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9 HAVING SUM(k.n) <> 0
"""

# Activity rows joined with the device rows as they are now, or device rows (old or new) joined
# with their activity as it is now.
ACTIVITY_SIDE = "SELECT {key}, {sign} FROM {rows} a JOIN devices_device d ON d.id = a.device_id JOIN waves_wave w ON w.id = a.wave_id WHERE {counted}"
DEVICE_SIDE = "SELECT {key}, {sign} FROM {rows} d JOIN waves_waveactivity a ON a.device_id = d.id JOIN waves_wave w ON w.id = a.wave_id WHERE {counted}"


def _side(template, rows, sign):
    return template.format(key=ACTIVITY_KEY, sign=sign, rows=rows, counted=COUNTED)


LOCK_DEVICES = "PERFORM 1 FROM devices_device WHERE id IN (SELECT device_id FROM new_rows) ORDER BY id FOR NO KEY UPDATE"
PROGRESS = "CASE WHEN e.event_type IN ('install-started', 'install-applied', 'install-completed') THEN 2 ELSE 1 END"


def _function(name, body):
    return f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n{body};\nRETURN NULL;\nEND $$;\n"


def _trigger(name, event, table, referencing):
    return f"CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {name}();\n"


TRIGGERS = (
    # Activity rows changed: their counts move.
    _function("breakwater_activity_insert", DELTAS.format(deltas=_side(ACTIVITY_SIDE, "new_rows", 1)))
    + _function("breakwater_activity_update", DELTAS.format(deltas=_side(ACTIVITY_SIDE, "old_rows", -1) + " UNION ALL " + _side(ACTIVITY_SIDE, "new_rows", 1)))
    + _function("breakwater_activity_delete", DELTAS.format(deltas=_side(ACTIVITY_SIDE, "old_rows", -1)))
    # A device with activity moved (seen, version, group, tag): its counts move.
    + _function("breakwater_activity_device", DELTAS.format(deltas=_side(DEVICE_SIDE, "old_rows", -1) + " UNION ALL " + _side(DEVICE_SIDE, "new_rows", 1)))
    # Reports on a counted wave's version since it was created (and since the device's retry).
    + _function(
        "breakwater_activity_events",
        LOCK_DEVICES
        + f""";
INSERT INTO waves_waveactivity (wave_id, device_id, progress, last_success, last_failure, last_report, rollout_id)
SELECT w.id, e.device_id, MAX({PROGRESS}), MAX(CASE WHEN e.success THEN e.reported_at END),
       MAX(CASE WHEN NOT e.success THEN e.reported_at END), MAX(e.reported_at), NULL
  FROM new_rows e JOIN waves_wave w ON w.factory_id = e.factory_id AND w.version = e.target_version AND w.counts_ready AND e.reported_at >= w.created_at
 WHERE NOT EXISTS (SELECT 1 FROM waves_waveretry wr WHERE wr.wave_id = w.id AND wr.device_id = e.device_id AND wr.retried_at > e.reported_at)
 GROUP BY e.device_id, w.id ORDER BY e.device_id, w.id
ON CONFLICT (device_id, wave_id) DO UPDATE SET
    progress = GREATEST(waves_waveactivity.progress, EXCLUDED.progress),
    last_success = GREATEST(waves_waveactivity.last_success, EXCLUDED.last_success),
    last_failure = GREATEST(waves_waveactivity.last_failure, EXCLUDED.last_failure),
    last_report = GREATEST(waves_waveactivity.last_report, EXCLUDED.last_report)""",
    )
    # Devices staged on their own.
    + _function(
        "breakwater_activity_stagings",
        LOCK_DEVICES
        + """;
INSERT INTO waves_waveactivity (wave_id, device_id, progress, rollout_id)
SELECT s.wave_id, s.device_id, 0, s.rollout_id FROM new_rows s JOIN waves_wave w ON w.id = s.wave_id AND w.counts_ready
 ORDER BY s.device_id, s.wave_id
ON CONFLICT (device_id, wave_id) DO UPDATE SET rollout_id = COALESCE(waves_waveactivity.rollout_id, EXCLUDED.rollout_id)""",
    )
    # A retry: reports from before it no longer count, so the device's activity is read again.
    + _function(
        "breakwater_activity_retries",
        LOCK_DEVICES
        + f""";
UPDATE waves_waveactivity a SET progress = COALESCE(x.progress, 0), last_success = x.last_success, last_failure = x.last_failure, last_report = x.last_report
  FROM new_rows r JOIN waves_wave w ON w.id = r.wave_id
  CROSS JOIN LATERAL (
    SELECT MAX({PROGRESS}) AS progress, MAX(CASE WHEN e.success THEN e.reported_at END) AS last_success,
           MAX(CASE WHEN NOT e.success THEN e.reported_at END) AS last_failure, MAX(e.reported_at) AS last_report
      FROM devices_deviceevent e
     WHERE e.device_id = r.device_id AND e.factory_id = w.factory_id AND e.target_version = w.version
       AND e.reported_at >= w.created_at AND e.reported_at >= r.retried_at
  ) x
 WHERE a.wave_id = r.wave_id AND a.device_id = r.device_id;
DELETE FROM waves_waveactivity a USING new_rows r
 WHERE a.wave_id = r.wave_id AND a.device_id = r.device_id AND a.progress = 0 AND a.rollout_id IS NULL AND a.last_report IS NULL""",
    )
    + _trigger("breakwater_activity_insert", "INSERT", "waves_waveactivity", "NEW TABLE AS new_rows")
    + _trigger("breakwater_activity_update", "UPDATE", "waves_waveactivity", "OLD TABLE AS old_rows NEW TABLE AS new_rows")
    + _trigger("breakwater_activity_delete", "DELETE", "waves_waveactivity", "OLD TABLE AS old_rows")
    + _trigger("breakwater_activity_device", "UPDATE", "devices_device", "OLD TABLE AS old_rows NEW TABLE AS new_rows")
    + _trigger("breakwater_activity_events", "INSERT", "devices_deviceevent", "NEW TABLE AS new_rows")
    + _trigger("breakwater_activity_stagings", "INSERT", "waves_wavedevice", "NEW TABLE AS new_rows")
    + _trigger("breakwater_activity_retries", "INSERT", "waves_waveretry", "NEW TABLE AS new_rows")
)
# A trigger with transition tables takes one event: the retries' update trigger calls the same function.
TRIGGERS += "CREATE TRIGGER breakwater_activity_retried AFTER UPDATE ON waves_waveretry REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION breakwater_activity_retries();\n"

TRIGGER_TABLES = (
    ("breakwater_activity_insert", "waves_waveactivity"),
    ("breakwater_activity_update", "waves_waveactivity"),
    ("breakwater_activity_delete", "waves_waveactivity"),
    ("breakwater_activity_device", "devices_device"),
    ("breakwater_activity_events", "devices_deviceevent"),
    ("breakwater_activity_stagings", "waves_wavedevice"),
    ("breakwater_activity_retries", "waves_waveretry"),
    ("breakwater_activity_retried", "waves_waveretry"),
)


def counts_keep(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(TRIGGERS)


def counts_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            for name, table in TRIGGER_TABLES:
                cursor.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            for name in dict(TRIGGER_TABLES):
                cursor.execute(f"DROP FUNCTION IF EXISTS {name}()")


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0009_fleet_counts'),
        ('waves', '0007_rollout_count_pending'),
    ]

    operations = [
        migrations.AddField(
            model_name='wave',
            name='counts_ready',
            field=models.BooleanField(default=False),
        ),
        migrations.AlterField(
            model_name='wave',
            name='counts_ready',
            field=models.BooleanField(default=True),
        ),
        migrations.CreateModel(
            name='WaveActivityCount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('wave_id', models.BigIntegerField()),
                ('group_id', models.BigIntegerField()),
                ('target_version', models.BigIntegerField()),
                ('targets_seen', models.BigIntegerField()),
                ('seen_minute', models.BigIntegerField()),
                ('progress', models.SmallIntegerField()),
                ('failed', models.BooleanField()),
                ('rollout_id', models.BigIntegerField()),
                ('since_minute', models.BigIntegerField()),
                ('n', models.BigIntegerField()),
            ],
            options={
                'indexes': [models.Index(fields=['wave_id'], name='waveactivitycount_wave')],
            },
        ),
        migrations.CreateModel(
            name='WaveActivity',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('progress', models.SmallIntegerField(default=0)),
                ('last_success', models.DateTimeField(null=True)),
                ('last_failure', models.DateTimeField(null=True)),
                ('last_report', models.DateTimeField(null=True)),
                ('rollout_id', models.BigIntegerField(null=True)),
                ('device', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='devices.device')),
                ('wave', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='waves.wave')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('device', 'wave'), name='waveactivity_once_per_device_wave')],
            },
        ),
        migrations.RunPython(counts_keep, counts_drop),
    ]
