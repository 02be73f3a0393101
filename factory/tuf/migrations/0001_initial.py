"""The TUF models, moved here from the `factory` app (factory/migrations/0005_tuf_models_move.py).

The tables were made by factory/migrations/0002 and 0003 and keep their names, so this only
tells Django's migration state where the models now live. Their content types follow them, so
the permissions attached to those rows keep meaning the same models."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MODELS = ["tufrepository", "tufkey", "tufroot", "tufrootchange", "tufview"]


def _content_types_move(apps, schema_editor, old, new):
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    for model in MODELS:
        # Rows made for the new label already (by post_migrate) are kept; the old ones are stale then.
        if not ContentType.objects.using(db).filter(app_label=new, model=model).exists():
            ContentType.objects.using(db).filter(app_label=old, model=model).update(app_label=new)


def content_types_forward(apps, schema_editor):
    _content_types_move(apps, schema_editor, "factory", "tuf")


def content_types_backward(apps, schema_editor):
    _content_types_move(apps, schema_editor, "tuf", "factory")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('factory', '0005_tuf_models_move'),
        ('waves', '0001_initial'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='TufRepository',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('root_version', models.PositiveIntegerField(default=1)),
                        ('root_expires_at', models.DateTimeField()),
                        ('root_online', models.BooleanField(default=True)),
                        ('production_targets_threshold', models.PositiveSmallIntegerField(default=1)),
                        ('baseline_targets', models.BinaryField()),
                        ('baseline_expires_at', models.DateTimeField()),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('factory', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='tuf_repository', to='factory.factory')),
                    ],
                    options={
                        'verbose_name_plural': 'TUF repositories',
                        'db_table': 'factory_tufrepository',
                    },
                ),
                migrations.CreateModel(
                    name='TufKey',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('role', models.CharField(choices=[('root', 'Root'), ('targets', 'Targets'), ('snapshot', 'Snapshot'), ('timestamp', 'Timestamp')], max_length=16)),
                        ('keyid', models.CharField(max_length=64)),
                        ('public', models.JSONField()),
                        ('private_encrypted', models.BinaryField(blank=True, null=True)),
                        ('online', models.BooleanField()),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('retired_at', models.DateTimeField(blank=True, null=True)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('factory', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='tuf_keys', to='factory.factory')),
                    ],
                    options={
                        'db_table': 'factory_tufkey',
                        'indexes': [models.Index(fields=['factory', 'role'], name='tufkey_factory_role')],
                        'constraints': [models.UniqueConstraint(fields=('factory', 'keyid'), name='tufkey_factory_keyid_unique'), models.CheckConstraint(condition=models.Q(('online', True), ('private_encrypted__isnull', True), _connector='OR'), name='tufkey_offline_has_no_private')],
                    },
                ),
                migrations.CreateModel(
                    name='TufRoot',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('channel', models.CharField(choices=[('ci', 'CI (test devices)'), ('production', 'Production')], max_length=16)),
                        ('version', models.PositiveIntegerField()),
                        ('data', models.BinaryField()),
                        ('expires_at', models.DateTimeField()),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('factory', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='tuf_roots', to='factory.factory')),
                    ],
                    options={
                        'db_table': 'factory_tufroot',
                        'constraints': [models.UniqueConstraint(fields=('factory', 'channel', 'version'), name='tufroot_factory_channel_version_unique')],
                    },
                ),
                migrations.CreateModel(
                    name='TufRootChange',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('status', models.CharField(choices=[('pending', 'Pending'), ('applied', 'Applied'), ('abandoned', 'Abandoned')], default='pending', max_length=16)),
                        ('action', models.CharField(max_length=32)),
                        ('details', models.JSONField(blank=True, default=dict)),
                        ('base_root_version', models.PositiveIntegerField()),
                        ('documents', models.JSONField(default=list)),
                        ('new_key', models.JSONField(blank=True, null=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('factory', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='tuf_root_changes', to='factory.factory')),
                    ],
                    options={
                        'db_table': 'factory_tufrootchange',
                        'constraints': [models.UniqueConstraint(condition=models.Q(('status', 'pending')), fields=('factory',), name='tufrootchange_one_pending_per_factory')],
                    },
                ),
                migrations.CreateModel(
                    name='TufView',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('kind', models.CharField(choices=[('ci', 'Ci'), ('production', 'Production'), ('wave', 'Wave')], max_length=16)),
                        ('tag', models.CharField(blank=True, max_length=64)),
                        ('targets', models.BinaryField()),
                        ('snapshot', models.BinaryField()),
                        ('timestamp', models.BinaryField()),
                        ('targets_hash', models.CharField(max_length=64)),
                        ('snapshot_hash', models.CharField(max_length=64)),
                        ('timestamp_hash', models.CharField(max_length=64)),
                        ('targets_version', models.PositiveIntegerField()),
                        ('version', models.PositiveBigIntegerField()),
                        ('targets_expires_at', models.DateTimeField()),
                        ('snapshot_expires_at', models.DateTimeField()),
                        ('timestamp_expires_at', models.DateTimeField()),
                        ('baseline', models.BooleanField(default=False)),
                        ('token', models.CharField(max_length=32)),
                        ('counter', models.PositiveBigIntegerField(default=0)),
                        ('staging_token', models.CharField(blank=True, max_length=32)),
                        ('refresh_claimed_until', models.DateTimeField(blank=True, null=True)),
                        ('refresh_claim', models.CharField(blank=True, db_index=True, max_length=32)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('factory', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='tuf_views', to='factory.factory')),
                        ('wave', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='tuf_views', to='waves.wave')),
                    ],
                    options={
                        'db_table': 'factory_tufview',
                        'indexes': [models.Index(fields=['factory', 'tag', 'kind'], name='tufview_factory_tag'), models.Index(fields=['timestamp_expires_at'], name='tufview_timestamp_expiry')],
                        'constraints': [models.UniqueConstraint(condition=models.Q(('kind', 'ci')), fields=('factory',), name='tufview_one_ci_per_factory'), models.UniqueConstraint(condition=models.Q(('kind', 'production')), fields=('factory', 'tag'), name='tufview_one_production_per_tag'), models.UniqueConstraint(condition=models.Q(('kind', 'wave')), fields=('wave',), name='tufview_one_per_wave'), models.CheckConstraint(condition=models.Q(models.Q(('kind', 'wave'), ('wave__isnull', False)), models.Q(models.Q(('kind', 'wave'), _negated=True), ('wave__isnull', True)), _connector='OR'), name='tufview_wave_iff_kind_wave')],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_forward, content_types_backward),
    ]
