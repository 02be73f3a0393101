"""`manage.py demo`: an idempotent demo factory; running it twice gives the same data."""
from django.core.management.base import BaseCommand

from factory.project.demo import demo_load


class Command(BaseCommand):
    help = "Create (or refresh) the demo factory: users per role, CI builds 40-42, a 1,050-device fleet."

    def handle(self, *args, **options):
        info = demo_load(stdout=self.stdout)
        self.stdout.write("\nDemo logins (factory 'demo'):")
        for username, role, password in info["users"]:
            self.stdout.write(f"  {username:<10} {role:<16} password: {password}")
        for line in info.get("notes", []):
            self.stdout.write(line)
