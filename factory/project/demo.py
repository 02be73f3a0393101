"""The demo factory, built through the same services every door uses."""
from django.conf import settings
from django.contrib.auth import get_user_model

from devices.fleet import fleet_seed
from devices.models import Device
from factory import ostree
from factory.models import CiTarget, Factory, Membership, Role
from factory.services import user_create
from factory.tuf.selectors import production_targets_version
from factory.tuf.services.repository import ci_build_publish, factory_create
from factory.tuf.services.root_changes import demo_offline_key
from waves.models import Wave
from waves.services import wave_complete, wave_init, wave_sign

DEMO_FACTORY = "demo"
DEMO_TAG = "production"
DEMO_HARDWARE_IDS = ["intel-corei7-64", "raspberrypi4-64"]
DEMO_BUILDS = [40, 41, 42]
DEMO_USERS = [
    ("admin", Role.ADMIN, "admin-demo-pass"),
    ("release", Role.RELEASE_MANAGER, "release-demo-pass"),
    ("qa", Role.QA, "qa-demo-pass"),
    ("support", Role.SUPPORT, "support-demo-pass"),
]
DEMO_GROUPS = {"canary": 5, "beta": 20, "us-east": 250, "us-west": 200, "eu-emea": 250, "apac": 175}
DEMO_UNGROUPED = 100
DEMO_TEST_DEVICES = 50
DEMO_PRODUCTION_VERSION = 41
DEMO_INITIAL_WAVE = "initial-41"


def _demo_production_targets(factory, release, archive):
    """Production targets at 41 for the tag, reached the real way: a wave, signed, completed."""
    if production_targets_version(factory=factory, tag=DEMO_TAG) is not None:
        return
    wave = Wave.objects.filter(factory=factory, name=DEMO_INITIAL_WAVE).first()
    if wave is None:
        wave = wave_init(factory=factory, actor=release, name=DEMO_INITIAL_WAVE, version=DEMO_PRODUCTION_VERSION, tag=DEMO_TAG)
    if wave.status == Wave.Status.UNSIGNED:
        wave = wave_sign(wave=wave, actor=release, key_archive=archive)
    wave_complete(wave=wave, actor=release)


def demo_load(stdout=None):
    factory = Factory.objects.filter(name=DEMO_FACTORY).first() or factory_create(name=DEMO_FACTORY)
    users = []
    for username, role, password in DEMO_USERS:
        user = get_user_model().objects.filter(username=username).first()
        membership = Membership.objects.filter(user=user, factory=factory).first() if user else None
        if membership is None or membership.role != role or not user.check_password(password):
            user_create(username=username, factory=factory, role=role, password=password)
        users.append((username, role.value, password))
    for version in DEMO_BUILDS:
        if not CiTarget.objects.filter(factory=factory, version=version).exists():
            ci_build_publish(factory=factory, version=version, hardware_ids=DEMO_HARDWARE_IDS, tags=[DEMO_TAG])
    release = get_user_model().objects.get(username="release")
    key_path, _ = demo_offline_key(factory=factory, actor=release, path=settings.VAR_DIR / "demo-offline-targets-key.tgz")
    notes = [f"\nOffline targets key (sign waves with it in the dashboard or with breakwater -k): {key_path}"]
    _demo_production_targets(factory, release, key_path.read_bytes())
    if ostree.available():
        notes.append("OSTree: found; CI publishes OSTree builds with `breakwater targets publish-ostree` (the demo's builds are blob targets)")
    else:
        notes.append("OSTree: `ostree` is not installed, so builds are blob targets only (apt-get install ostree for OSTree builds)")
    if not Device.objects.filter(factory=factory).exists():
        fleet_seed(
            factory=factory,
            tag=DEMO_TAG,
            groups=DEMO_GROUPS,
            ungrouped=DEMO_UNGROUPED,
            test_devices=DEMO_TEST_DEVICES,
            online_ratio=0.9,
            version=DEMO_PRODUCTION_VERSION,
            hardware_ids=DEMO_HARDWARE_IDS,
        )
    return {"factory": factory, "users": users, "notes": notes}
