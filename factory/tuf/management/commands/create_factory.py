from django.core.management.base import BaseCommand

from factory.management.commands._base import application_errors
from factory.tuf.services.repository import factory_create


class Command(BaseCommand):
    help = "Create a factory (tenant) with its TUF keys and roots."

    def add_arguments(self, parser):
        parser.add_argument("name")

    def handle(self, *args, name, **options):
        with application_errors():
            factory = factory_create(name=name)
        self.stdout.write(f"Created factory {factory.name}")
