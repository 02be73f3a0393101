"""Wave fixtures: a fleet like the seed's, CI builds 41 and 42, and an active wave of 42."""
import pytest

from devices.fleet import fleet_seed
from devices.models import Device
from factory.tuf.services.repository import ci_build_publish
from waves.services import wave_init, wave_sign

TAG = "production"
HWIDS = ["intel-corei7-64", "raspberrypi4-64"]


@pytest.fixture
def builds(factory, offline_key):
    """CI builds 40-43 on the production tag (and bob's offline key, so waves can be signed)."""
    for version in (40, 41, 42, 43):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])


@pytest.fixture
def offline_key(factory, bob):
    """bob's personal offline targets key, registered with the factory; returns the archive bytes."""
    from tests.tuf_helpers import offline_targets_key

    return offline_targets_key(factory=factory, actor=bob)


def seed(factory, groups=None, ungrouped=0, test_devices=0, online_ratio=1.0, version=41, tag=TAG):
    fleet_seed(
        factory=factory,
        tag=tag,
        groups=groups or {},
        ungrouped=ungrouped,
        test_devices=test_devices,
        online_ratio=online_ratio,
        version=version,
        hardware_ids=HWIDS,
    )


@pytest.fixture
def fleet100(factory, builds):
    """The seed's small fleet: 100 production devices, canary (5) and beta (20), 10 test devices."""
    seed(factory, groups={"canary": 5, "beta": 20}, ungrouped=75, test_devices=10)
    return Device.objects.filter(factory=factory)


def make_wave(factory, actor, archive, name="v2.0-update", version=42, tag=TAG, **kwargs):
    wave = wave_init(factory=factory, actor=actor, name=name, version=version, tag=tag, **kwargs)
    return wave_sign(wave=wave, actor=actor, key_archive=archive)


@pytest.fixture
def wave(factory, bob, builds, offline_key):
    return make_wave(factory, bob, offline_key)
