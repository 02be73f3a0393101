"""The TUF models move to their own app (`tuf`, factory/tuf/migrations/0001_initial.py).

State only: the tables keep their names (the models set db_table), so nothing is copied and an
existing database keeps every row."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('factory', '0004_audit_append_only'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name='TufRootChange'),
                migrations.DeleteModel(name='TufView'),
                migrations.DeleteModel(name='TufRoot'),
                migrations.DeleteModel(name='TufKey'),
                migrations.DeleteModel(name='TufRepository'),
            ],
            database_operations=[],
        ),
    ]
