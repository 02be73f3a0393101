from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from devices.fleet import take_over
from devices.models import Device, DeviceGroup
from devices.services import registration_token_create
from devices.simulator import Keystore, Simulator, register, register_lmp
from factory.management.commands._base import application_errors, get_factory
from factory.plurals import counted


def rate(value):
    group, sep, number = value.partition("=")
    try:
        number = float(number)
    except ValueError:
        number = -1
    if not sep or not group or not 0 <= number <= 1:
        raise ValueError(value)
    return group, number


class Command(BaseCommand):
    help = (
        "Simulate a fleet: every device is a python-tuf client (or, with --aktualizr-share, one speaking aktualizr-lite's protocol) polling the gateway over mutual TLS "
        "with its own key, downloading, installing and reporting updates."
    )

    def add_arguments(self, parser):
        parser.add_argument("--factory", required=True)
        parser.add_argument("--devices", type=int, help="take over at most this many registered devices (by name; default: all)")
        parser.add_argument("--register", type=int, default=0, help="also register this many new devices through the registration endpoint")
        parser.add_argument("--token", help="registration token for --register (default: one is created for the simulator)")
        parser.add_argument("--register-tag", help="tag of the devices registered (default: the most common tag)")
        parser.add_argument("--register-group", help="group of the devices registered")
        parser.add_argument("--register-test", action="store_true", help="register test devices instead of production ones")
        parser.add_argument("--initial-version", type=int, help="version registered devices already run")
        parser.add_argument("--web-url", default="http://127.0.0.1:8000", help="where the registration endpoint is")
        parser.add_argument("--gateway-url", default=settings.BREAKWATER_GATEWAY_URL)
        parser.add_argument("--interval", type=float, default=60.0, help="seconds between polls of a device")
        parser.add_argument("--threads", type=int, default=16)
        parser.add_argument("--fail-rate", type=rate, action="append", default=[], metavar="GROUP=RATE",
                            help="share of installs failing in GROUP ('*': any group, '-': no group); repeatable")
        parser.add_argument("--offline-ratio", type=float, default=0.0, help="share of devices that stay offline")
        parser.add_argument("--never-return", type=int, default=0, help="production devices that go silent for good after an update")
        parser.add_argument("--reboot-delay", type=float, default=5.0, help="seconds an install takes (the reboot)")
        parser.add_argument("--duration", type=float, help="stop after this many seconds (default: run until Ctrl-C)")
        parser.add_argument("--progress", type=float, default=10.0, help="seconds between progress lines")
        parser.add_argument("--keystore", help="folder of the devices' keys and TUF metadata (default: var/simulator/<factory>)")
        parser.add_argument("--aktualizr-share", type=float, default=0.0,
                            help="share of devices (new to the simulator) that speak aktualizr-lite's protocol instead of python-tuf's")
        parser.add_argument("--seed", type=int, help="random seed (which devices are offline, which installs fail)")

    def handle(self, *args, **o):
        if not 0 <= o["offline_ratio"] <= 1:
            raise CommandError("--offline-ratio must be between 0 and 1")
        if not 0 <= o["aktualizr_share"] <= 1:
            raise CommandError("--aktualizr-share must be between 0 and 1")
        if o["interval"] <= 0 or o["threads"] < 1:
            raise CommandError("--interval must be positive and --threads at least 1")
        factory = get_factory(o["factory"])
        keystore = Keystore(o["keystore"] or settings.VAR_DIR / "simulator" / factory.name)
        with application_errors():
            identities = {i.uuid: i for i in take_over(factory=factory, keystore=keystore, limit=o["devices"])}
            registered = [i for i in identities.values() if i.source == "registered"]
            missing = o["register"] - len(registered)
            if missing > 0:
                identities.update({i.uuid: i for i in self.register(factory, keystore, missing, o)})
        if not identities:
            raise CommandError(f"factory {factory.name} has no devices; seed some (seed_fleet) or use --register")
        self.stdout.write(f"Simulating {counted(len(identities), 'device')} of {factory.name} against {o['gateway_url']} ({counted(o['threads'], 'thread')})")
        simulator = Simulator(
            identities=list(identities.values()),
            keystore=keystore,
            gateway_url=o["gateway_url"],
            interval=o["interval"],
            threads=o["threads"],
            fail_rates=dict(o["fail_rate"]),
            offline_ratio=o["offline_ratio"],
            never_return=o["never_return"],
            reboot_delay=o["reboot_delay"],
            seed=o["seed"],
            out=self.stdout,
            aktualizr_share=o["aktualizr_share"],
        )
        try:
            simulator.run(duration=o["duration"], progress_every=o["progress"])
        except KeyboardInterrupt:
            pass

    def register(self, factory, keystore, count, o):
        tag = o["register_tag"] or self.common_tag(factory)
        group = None
        if o["register_group"]:
            group = DeviceGroup.objects.filter(factory=factory, name=o["register_group"]).first()
            if group is None:
                raise CommandError(f"device group {o['register_group']} does not exist")
        token = o["token"]
        if not token:
            _, token = registration_token_create(
                factory=factory, actor=None, tag=tag, group=group, production=not o["register_test"], max_uses=count, expires_days=1, name="fleet simulator"
            )
        hardware_ids = sorted(set(Device.objects.filter(factory=factory).exclude(hardware_id="").values_list("hardware_id", flat=True))) or ["intel-corei7-64"]
        self.stdout.write(f"Registering {counted(count, 'device')} through {o['web_url']}/devices/register/ ...")
        # The aktualizr-lite share registers as lmp-device-register does; the others as today.
        lmp = int(round(count * o["aktualizr_share"]))
        try:
            return register(
                web_url=o["web_url"],
                token=token,
                factory_name=factory.name,
                keystore=keystore,
                count=count - lmp,
                hardware_ids=hardware_ids,
                production=not o["register_test"],
                target_version=o["initial_version"],
            ) + register_lmp(
                web_url=o["web_url"],
                token=token,
                factory_name=factory.name,
                keystore=keystore,
                count=lmp,
                hardware_ids=hardware_ids,
                tag=tag,
                group=group.name if group else None,
                production=not o["register_test"],
                target_version=o["initial_version"],
            )
        except Exception as exc:
            raise CommandError(f"registration failed: {exc}") from None

    @staticmethod
    def common_tag(factory):
        from django.db.models import Count

        row = Device.objects.filter(factory=factory).values("tag").annotate(n=Count("id")).order_by("-n").first()
        return row["tag"] if row else "main"
