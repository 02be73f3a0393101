"""Property-based: whatever sequence of rollouts runs, the selection invariants hold."""
import math

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.models import Device
from factory.errors import ApplicationError
from waves.models import WaveDevice, WaveGroup
from waves.services import wave_rollout

from .conftest import seed


@pytest.fixture
def mixed_fleet(factory, builds):
    seed(factory, groups={"canary": 6, "beta": 15}, ungrouped=20, test_devices=8, online_ratio=0.6)
    seed(factory, groups={"beta": 5}, ungrouped=5, version=42)  # already updated
    seed(factory, ungrouped=5, version=43)  # newer
    seed(factory, groups={"canary": 3}, ungrouped=4, tag="other-tag")


operation = st.tuples(
    st.sampled_from(["limit", "percent", "group", "group-limit", "uuids", "uuids-limit"]),
    st.integers(min_value=1, max_value=30),
    st.sampled_from(["canary", "beta"]),
    st.booleans(),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(operation, min_size=1, max_size=6), data=st.data())
def test_never_a_test_device_another_tag_twice_an_updated_device_or_more_than_asked(factory, bob, mixed_fleet, wave, ops, data):
    everything = [str(u) for u in Device.objects.values_list("uuid", flat=True)]
    sid = transaction.savepoint()
    try:
        for kind, n, group, dry_run in ops:
            kwargs = {}
            if kind in ("limit", "group-limit", "uuids-limit"):
                kwargs["limit"] = str(n)
            if kind == "percent":
                kwargs["limit"] = f"{n}%"
            if kind.startswith("group"):
                kwargs["group"] = group
            if kind.startswith("uuids"):
                kwargs["uuids"] = ",".join(data.draw(st.lists(st.sampled_from(everything), min_size=1, max_size=25)))
            staged_before = set(WaveDevice.objects.filter(wave=wave).values_list("device__uuid", flat=True))
            groups_before = set(WaveGroup.objects.filter(wave=wave).values_list("group_id", flat=True))
            try:
                result = wave_rollout(wave=wave, actor=bob, dry_run=dry_run, **kwargs)
            except ApplicationError:
                continue
            picked = Device.objects.filter(uuid__in=[d["uuid"] for d in result.devices])
            assert picked.count() == len(result.devices)  # never the same device twice in one rollout
            for device in picked:
                assert device.is_production and device.tag == wave.tag
                assert device.uuid not in staged_before and device.group_id not in groups_before
                assert device.target_version is None or device.target_version < wave.version
                if "group" in kwargs:
                    assert device.group.name == group
            if kind in ("limit", "group-limit", "uuids-limit"):
                assert result.count <= n
            if kind == "percent":
                assert result.count <= math.ceil(Device.objects.filter(is_production=True, tag=wave.tag).count() * n / 100)
            if not dry_run and not result.full_group:
                staged_after = set(WaveDevice.objects.filter(wave=wave).values_list("device__uuid", flat=True))
                assert len(staged_after) == len(staged_before) + result.count
    finally:
        transaction.savepoint_rollback(sid)
