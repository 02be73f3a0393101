"""List, count or purge the reports the gateway's flush set aside as dead letters."""
from datetime import datetime, timezone as dt_timezone

from django.core.management.base import BaseCommand, CommandError

from devices.deadletters import dead_letters_purge, escape_text
from devices.selectors import dead_letter_counts, dead_letter_devices, dead_letters
from factory.management.commands._base import get_factory


class Command(BaseCommand):
    help = "List the newest dead letters (reports the database refused), count them, or purge old ones."

    def add_arguments(self, parser):
        parser.add_argument("--factory", help="only this factory's dead letters (listing and counting)")
        parser.add_argument("--count", action="store_true", help="print how many there are, by kind")
        parser.add_argument("--limit", type=int, default=50, help="how many to list (default 50)")
        parser.add_argument("--purge-before", metavar="DATE", help="delete those recorded before this ISO date or time (UTC if no offset)")

    def handle(self, *args, factory, count, limit, purge_before, **options):
        factory = get_factory(factory) if factory else None
        if purge_before:
            before = _instant(purge_before)
            self.stdout.write(f"deleted {dead_letters_purge(before=before)} dead letters recorded before {before.isoformat()}")
            return
        if count:
            counts = dead_letter_counts(factory=factory)
            for kind in sorted(counts):
                self.stdout.write(f"{kind}: {counts[kind]}")
            self.stdout.write(f"total: {sum(counts.values())}")
            return
        letters = list(dead_letters(factory=factory)[: max(limit, 0)])
        devices = dead_letter_devices(letters)
        for letter in letters:
            device = devices.get(letter.device_id)
            who = f"device {device.uuid}" if device else (f"device id {letter.device_id} (gone)" if letter.device_id else "no device")
            # Stored escaped already; escaped again in case a row was written by other means.
            self.stdout.write(f"{letter.pk}  {letter.created_at:%Y-%m-%d %H:%M:%S}  {letter.kind}  {who}")
            self.stdout.write(f"    error: {escape_text(letter.error)}")
            self.stdout.write(f"    row:   {escape_text(letter.raw[:500])}")
        if not letters:
            self.stdout.write("no dead letters")


def _instant(text):
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--purge-before {text!r} is not an ISO date or time (2030-01-31, 2030-01-31T12:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt_timezone.utc)
