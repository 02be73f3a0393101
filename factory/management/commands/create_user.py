import secrets

from django.core.management.base import BaseCommand

from factory.models import Role
from factory.services import user_create

from ._base import application_errors, get_factory


class Command(BaseCommand):
    help = "Create a user (or update an existing one) with a role in a factory."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--factory", required=True)
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--password", help="default: a random password, printed once")

    def handle(self, *args, username, factory, role, password, **options):
        factory = get_factory(factory)
        generated = password is None
        password = password or secrets.token_urlsafe(12)
        with application_errors():
            user_create(username=username, factory=factory, role=role, password=password)
        self.stdout.write(f"User {username} is {role} in {factory.name}")
        if generated:
            self.stdout.write(f"Password: {password}")
