"""Delete the device events past their retention now (the hourly beat task does it too), or say
with --dry-run what would go and what is kept for waves."""
from django.core.management.base import BaseCommand

from factory.management.commands._base import application_errors
from waves.event_retention import BATCH, device_events_purge, purge_kept_waves


class Command(BaseCommand):
    help = (
        "Delete device events received more than BREAKWATER_EVENT_RETENTION_DAYS ago, a batch at a time, "
        "keeping the reports that open and recently finished waves still read."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted and kept; delete nothing")
        parser.add_argument("--days", type=float, help="the retention in days for this run (default: the setting)")
        parser.add_argument("--batch", type=int, default=BATCH, help=f"events looked at per statement (default {BATCH:,})")

    def handle(self, *args, dry_run, days, batch, **options):
        with application_errors():
            purge = device_events_purge(days=days, batch=batch, dry_run=dry_run)
        if purge.cutoff is None:
            self.stdout.write("the event retention is 0 days: device events are kept for ever, none deleted")
            return
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(f"{verb} {purge.deleted:,} device events received before {purge.cutoff:%Y-%m-%d %H:%M:%S} UTC, in {purge.batches:,} batches")
        kept = purge_kept_waves(purge)
        if kept:
            self.stdout.write(f"{'would keep' if dry_run else 'kept'} {sum(purge.kept.values()):,} older ones that waves still read:")
            for factory_name, wave_names, n in kept:
                self.stdout.write(f"  {factory_name}: {', '.join(wave_names)} ({n:,} events)")
