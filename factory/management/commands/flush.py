"""`manage.py flush` empties every table, the append-only audit log included. Django's test
harness flushes this way between transactional tests, so it is one of the audit log's maintenance
doors (factory.services.audit_maintenance); nothing that edits history goes through it."""
from django.core.management.commands import flush
from django.db import connections

from factory.services import audit_maintenance


class Command(flush.Command):
    def handle(self, **options):
        # Ask before the maintenance transaction starts: on SQLite it holds the write lock.
        if options["interactive"]:
            answer = input(
                "This empties every table of the database, the audit log included.\n"
                "Type 'yes' to continue, or 'no' to cancel: "
            )
            if answer != "yes":
                self.stdout.write("Flush cancelled.")
                return
        with audit_maintenance(using=options["database"]):
            connection = connections[options["database"]]
            if connection.vendor == "postgresql":
                # The device table first: TRUNCATE locks its tables in no set order, and a
                # check-in flush still writing holds the device table while its triggers write
                # the status counts (waves/status_counts.py). Taking the device table before any
                # other makes the TRUNCATE wait for such a writer instead of deadlocking with it.
                with connection.cursor() as cursor:
                    cursor.execute("LOCK TABLE devices_device IN ACCESS EXCLUSIVE MODE")
            super().handle(**{**options, "interactive": False})
