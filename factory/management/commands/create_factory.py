from django.core.management.base import BaseCommand

from factory.services import factory_create

from ._base import application_errors


class Command(BaseCommand):
    help = "Create a factory (tenant) with its TUF keys and roots."

    def add_arguments(self, parser):
        parser.add_argument("name")

    def handle(self, *args, name, **options):
        with application_errors():
            factory = factory_create(name=name)
        self.stdout.write(f"Created factory {factory.name}")
