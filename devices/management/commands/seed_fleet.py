from django.core.management.base import BaseCommand, CommandError

from devices.fleet import fleet_load_for_benchmark, fleet_seed
from factory.management.commands._base import VersionOptionMixin, application_errors, get_factory


def group_count(value):
    name, sep, count = value.partition("=")
    if not sep or not name or not count.isdigit():
        raise ValueError(value)
    return name, int(count)


class Command(VersionOptionMixin, BaseCommand):
    help = "Register a fleet of devices (production unless counted as --test-devices)."

    def add_arguments(self, parser):
        parser.add_argument("--factory", required=True)
        parser.add_argument("--tag", required=True)
        parser.add_argument("--group", action="append", type=group_count, default=[], metavar="NAME=COUNT")
        parser.add_argument("--ungrouped", type=int, default=0)
        parser.add_argument("--test-devices", type=int, default=0)
        parser.add_argument("--online-ratio", type=float, default=1.0)
        parser.add_argument("--version", type=int, help="current target version (default: none installed)")
        parser.add_argument("--hardware-id", action="append", dest="hardware_ids")
        parser.add_argument(
            "--benchmark-bulk", action="store_true", help="insert rows without certificates (fast, for benchmarks; they cannot reach the gateway)"
        )

    def handle(self, *args, factory, tag, group, ungrouped, test_devices, online_ratio, version, hardware_ids, benchmark_bulk, **options):
        if not 0 <= online_ratio <= 1:
            raise CommandError("--online-ratio must be between 0 and 1")
        factory = get_factory(factory)
        with application_errors():
            counts = (fleet_load_for_benchmark if benchmark_bulk else fleet_seed)(
                factory=factory,
                tag=tag,
                groups=dict(group),
                ungrouped=ungrouped,
                test_devices=test_devices,
                online_ratio=online_ratio,
                version=version,
                hardware_ids=hardware_ids,
            )
        self.stdout.write(f"{'Loaded' if benchmark_bulk else 'Registered'} {counts['production']} production and {counts['test']} test devices in {factory.name}")
