"""Prove the status counts the database keeps (waves/status_counts.py) against a full recount of
the devices, events and stagings, and rebuild the counts that differ (the hourly beat task does
it too); or rebuild a wave's counts outright."""
from django.core.management.base import BaseCommand, CommandError

from factory.management.commands._base import application_errors, get_factory
from waves.selectors import wave_get
from waves.status import wave_counts_check, waves_followed
from waves.status_counts import wave_counts_rebuild


class Command(BaseCommand):
    help = "Recount the followed waves' status (or one wave's) and rebuild the counts that differ from the recount."

    def add_arguments(self, parser):
        parser.add_argument("--factory", help="the factory of --wave")
        parser.add_argument("--wave", help="only this wave (with --factory)")
        parser.add_argument("--check-only", action="store_true", help="report differences; rebuild nothing")
        parser.add_argument("--rebuild", action="store_true", help="rebuild the wave's counts without comparing")

    def handle(self, *args, factory, wave, check_only, rebuild, **options):
        if wave and not factory:
            raise CommandError("--wave needs --factory: wave names are per factory")
        with application_errors():
            if wave:
                waves = [wave_get(factory=get_factory(factory), name=wave)]
            else:
                waves = list(waves_followed().select_related("factory"))
            for w in waves:
                if rebuild:
                    done = wave_counts_rebuild(wave=w)
                    self.stdout.write(f"{w.factory.name}/{w.name}: {'counts rebuilt' if done else 'no counts are kept on this database'}")
                    continue
                differences = wave_counts_check(wave=w, repair=not check_only)
                if not w.counts_ready:
                    verdict = "counts not kept (recounted when read)"
                elif differences:
                    verdict = f"{len(differences)} parts differed from the recount" + ("" if check_only else ", rebuilt")
                else:
                    verdict = "counts agree with the recount"
                self.stdout.write(f"{w.factory.name}/{w.name}: {verdict}")
                for key, difference in differences.items():
                    self.stdout.write(f"  {key}: {difference!r}")
