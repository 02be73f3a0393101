"""Seeding a fleet of registered devices for demos, tests and benchmarks."""
import random
import uuid
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from factory.models import CiTarget

from .models import Device, DeviceGroup
from .services import device_create


def fleet_seed(*, factory, tag, groups=None, ungrouped=0, test_devices=0, online_ratio=1.0, version=None, hardware_ids=None):
    """Register production devices per group, ungrouped ones and test devices on `tag`.

    Each device is registered like a real one (see devices.services.device_create); `version`
    sets the target it already runs, `online_ratio` how many were seen recently.
    """
    groups = groups or {}
    if not hardware_ids:
        hardware_ids = sorted(set(CiTarget.objects.filter(factory=factory).values_list("hardware_id", flat=True))) or ["intel-corei7-64"]
    now = timezone.now()
    counts = {"production": 0, "test": 0}
    plan = [(name, count, True) for name, count in groups.items()] + [(None, ungrouped, True), (None, test_devices, False)]
    with transaction.atomic():
        for group_name, count, production in plan:
            group = DeviceGroup.objects.get_or_create(factory=factory, name=group_name)[0] if group_name else None
            prefix = group_name or ("prod" if production else "test")
            start = Device.objects.filter(factory=factory, name__startswith=f"{prefix}-").count()
            for i in range(count):
                hwid = hardware_ids[i % len(hardware_ids)]
                device = device_create(
                    factory=factory,
                    uuid=uuid.uuid4(),
                    name=f"{prefix}-{start + i + 1:04d}",
                    tag=tag,
                    is_production=production,
                    group=group,
                    hardware_id=hwid,
                )
                online = random.random() < online_ratio
                last_seen = now - timedelta(minutes=random.randint(0, 30)) if online else now - timedelta(days=random.randint(1, 5))
                fields = {"last_seen": last_seen}
                if version is not None:
                    fields.update(target_version=version, target_name=f"{hwid}-lmp-{version}")
                Device.objects.filter(pk=device.pk).update(**fields)
                counts["production" if production else "test"] += 1
    return counts
