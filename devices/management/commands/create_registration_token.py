from django.core.management.base import BaseCommand, CommandError

from devices.models import DeviceGroup
from devices.services import registration_token_create
from factory.management.commands._base import application_errors, get_factory


class Command(BaseCommand):
    help = "Create a registration token that lets devices register themselves; print it (shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("--factory", required=True)
        parser.add_argument("--tag", required=True, help="tag the registered devices follow")
        parser.add_argument("--group", help="group the registered devices join")
        parser.add_argument("--production", action="store_true", help="allow production certificates (businessCategory=production)")
        parser.add_argument("--max-uses", type=int)
        parser.add_argument("--expires-days", type=float)
        parser.add_argument("--name", default="")

    def handle(self, *args, factory, tag, group, production, max_uses, expires_days, name, **options):
        factory = get_factory(factory)
        group_obj = None
        if group:
            group_obj = DeviceGroup.objects.filter(factory=factory, name=group).first()
            if group_obj is None:
                raise CommandError(f"device group {group} does not exist in factory {factory.name}")
        with application_errors():
            _, plain = registration_token_create(
                factory=factory,
                actor=None,
                tag=tag,
                name=name,
                group=group_obj,
                production=production,
                max_uses=max_uses,
                expires_days=expires_days,
            )
        self.stdout.write(plain)
