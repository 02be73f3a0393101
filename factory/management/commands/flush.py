"""`manage.py flush` empties every table, the append-only audit log included. Django's test
harness flushes this way between transactional tests, so it is one of the audit log's maintenance
doors (factory.services.audit_maintenance); nothing that edits history goes through it."""
from django.core.management.commands import flush

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
            super().handle(**{**options, "interactive": False})
