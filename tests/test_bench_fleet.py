"""The bench fleet loader (bench/fleet.py) writes every column the device table requires: a
new NOT NULL column without a value in its COPY breaks `make bench` before any figure."""
import pytest

from bench.fleet import BENCH_TAG, bench_fleet, bench_wave, big_group_size
from devices.models import Device, DeviceGroup
from waves.services import wave_rollout

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_a_small_bench_fleet_loads_and_rolls_out():
    factory = bench_fleet(total=2_000, groups=10, big_group=big_group_size(2_000))
    assert Device.objects.filter(factory=factory, is_production=True, tag=BENCH_TAG).count() == 2_000
    assert Device.objects.filter(group=DeviceGroup.objects.get(factory=factory, name="big")).count() == 200
    # A second call finds the fleet loaded; another size in the same database is refused.
    assert bench_fleet(total=2_000, groups=10).pk == factory.pk
    with pytest.raises(SystemExit, match="one size per database"):
        bench_fleet(total=3_000, groups=10)

    wave = bench_wave(factory)
    assert wave_rollout(wave=wave, actor=None, limit="100").count == 100
    assert wave_rollout(wave=wave, actor=None, group="big").full_group
