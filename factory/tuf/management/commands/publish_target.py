from django.core.management.base import BaseCommand

from factory.management.commands._base import VersionOptionMixin, application_errors, get_factory
from factory.tuf.services.repository import ci_build_publish


class Command(VersionOptionMixin, BaseCommand):
    help = "Publish a CI build: one target per hardware ID, named <hwid>-lmp-<version>."

    def add_arguments(self, parser):
        parser.add_argument("--factory", required=True)
        parser.add_argument("--version", required=True, type=int)
        parser.add_argument("--hardware-id", action="append", required=True, dest="hardware_ids")
        parser.add_argument("--tag", action="append", dest="tags", help="default: main")

    def handle(self, *args, factory, version, hardware_ids, tags, **options):
        factory = get_factory(factory)
        with application_errors():
            targets = ci_build_publish(factory=factory, version=version, hardware_ids=hardware_ids, tags=tags or ["main"])
        for target in targets:
            self.stdout.write(f"Published {target.name} (tags: {', '.join(target.tags)})")
