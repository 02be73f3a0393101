from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from factory.services import api_token_create

from ._base import application_errors, get_factory


class Command(BaseCommand):
    help = "Create an API token for a user in a factory and print it (it is shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--factory", required=True)
        parser.add_argument("--name", default="")

    def handle(self, *args, username, factory, name, **options):
        factory = get_factory(factory)
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"user {username} does not exist")
        with application_errors():
            _, plain = api_token_create(user=user, factory=factory, name=name)
        self.stdout.write(plain)
