"""Seeding a fleet of registered devices for demos and tests, and a separate bulk loader for
benchmarks.

`fleet_seed` registers each device like a provisioning line would: a key generated for the
device, a CSR, a certificate signed by the factory's device CA through the registration service
(`devices_register`). Their history (last seen, current target) is written as check-ins, like
the gateway's. The private keys are not kept: the fleet simulator takes devices over by having
new certificates issued to keys it generates (see devices.simulator).

`fleet_load_for_benchmark` is not registration: it inserts device rows without certificates
(such devices cannot reach the gateway) so that benchmarks can build million-device factories.
"""
import random
import uuid
from datetime import datetime, timedelta, timezone as dt_timezone

from django.db import transaction
from django.utils import timezone

from factory.models import CiTarget

from . import pki
from .checkins import Checkin, checkins_write
from .gateway_identity import gateway_endpoint
from .models import Device, DeviceGroup
from .selectors import device_ca_certificate
from .services import device_certificates_renew, device_group_create, devices_register
from .simulator import Identity

DEFAULT_HARDWARE_ID = "intel-corei7-64"


def _hardware_ids(factory, hardware_ids):
    if hardware_ids:
        return list(hardware_ids)
    return sorted(set(CiTarget.objects.filter(factory=factory).values_list("hardware_id", flat=True))) or [DEFAULT_HARDWARE_ID]


def _group(factory, name):
    if not name:
        return None
    return DeviceGroup.objects.filter(factory=factory, name=name).first() or device_group_create(factory=factory, name=name)


def _history(version, hwid, online, now):
    last_seen = now - timedelta(minutes=random.randint(0, 30)) if online else now - timedelta(days=random.randint(1, 5))
    if version is None:
        return Checkin(seen=last_seen.timestamp())
    return Checkin(seen=last_seen.timestamp(), target_name=f"{hwid}-lmp-{version}", target_version=version)


def fleet_seed(*, factory, tag, groups=None, ungrouped=0, test_devices=0, online_ratio=1.0, version=None, hardware_ids=None):
    """Register production devices per group, ungrouped ones and test devices on `tag`.

    `version` sets the target they already run, `online_ratio` how many were seen recently.
    Returns {"production": n, "test": n}.
    """
    groups = groups or {}
    hardware_ids = _hardware_ids(factory, hardware_ids)
    now = timezone.now()
    counts = {"production": 0, "test": 0}
    plan = [(name, count, True) for name, count in groups.items()] + [(None, ungrouped, True), (None, test_devices, False)]
    with transaction.atomic():
        for group_name, count, production in plan:
            if not count:
                continue
            group = _group(factory, group_name)
            prefix = group_name or ("prod" if production else "test")
            start = Device.objects.filter(factory=factory, name__startswith=f"{prefix}-").count()
            requests = []
            for i in range(count):
                requests.append(
                    {
                        "csr": pki.device_csr_build(private_key=pki.key_generate(), device_uuid=uuid.uuid4(), factory_name=factory.name, production=production),
                        "name": f"{prefix}-{start + i + 1:04d}",
                        "hardware_id": hardware_ids[i % len(hardware_ids)],
                    }
                )
            registered = devices_register(factory=factory, actor=None, tag=tag, group=group, requests=requests, allow_production=production)
            checkins_write(
                {r.device.pk: _history(version, r.device.hardware_id, random.random() < online_ratio, now) for r in registered}
            )
            counts["production" if production else "test"] += len(registered)
    return counts


def fleet_load_for_benchmark(*, factory, tag, groups=None, ungrouped=0, test_devices=0, online_ratio=1.0, version=None, hardware_ids=None, batch=5000):
    """Insert device rows in bulk, without certificates, for benchmarks of million-device factories.

    Same shape as `fleet_seed` (names, groups, history), minutes instead of hours at 1,000,000
    devices; these devices cannot connect to the gateway.
    """
    groups = groups or {}
    hardware_ids = _hardware_ids(factory, hardware_ids)
    now = timezone.now()
    counts = {"production": 0, "test": 0}
    plan = [(name, count, True) for name, count in groups.items()] + [(None, ungrouped, True), (None, test_devices, False)]
    for group_name, count, production in plan:
        group = _group(factory, group_name)
        prefix = group_name or ("prod" if production else "test")
        start = Device.objects.filter(factory=factory, name__startswith=f"{prefix}-").count()
        for offset in range(0, count, batch):
            rows = []
            for i in range(offset, min(count, offset + batch)):
                hwid = hardware_ids[i % len(hardware_ids)]
                history = _history(version, hwid, random.random() < online_ratio, now)
                rows.append(
                    Device(
                        factory=factory,
                        uuid=uuid.uuid4(),
                        name=f"{prefix}-{start + i + 1:04d}",
                        tag=tag,
                        is_production=production,
                        group=group,
                        hardware_id=hwid,
                        target_name=history.target_name or "",
                        target_version=history.target_version,
                        last_seen=datetime.fromtimestamp(history.seen, tz=dt_timezone.utc),
                        sample_key=random.random(),
                    )
                )
            with transaction.atomic():
                Device.objects.bulk_create(rows, batch_size=1000)
            counts["production" if production else "test"] += len(rows)
    return counts


def take_over(*, factory, keystore, limit=None, names=None):
    """Give the simulator keys for devices already registered in `factory` (by name order).

    Devices whose stored certificate is still current are reused; the others get a new key and a
    certificate from `device_certificates_renew`. Returns the identities.
    """
    keystore.server_ca.write_text(gateway_endpoint()["ca_certificate"])
    devices = Device.objects.filter(factory=factory).select_related("group").order_by("name", "id")
    if names:
        devices = devices.filter(name__in=names)
    if limit is not None:
        devices = devices[:limit]
    known = keystore.load()
    identities, renew, keys = [], {}, {}
    for device in devices:
        identity = Identity(
            uuid=str(device.uuid),
            name=device.name,
            hardware_id=device.hardware_id,
            production=device.is_production,
            tag=device.tag,
            group=device.group.name if device.group_id else None,
            serial=device.certificate_serial,
            target_name=device.target_name,
            target_version=device.target_version,
            last_seen=device.last_seen.timestamp() if device.last_seen else None,
        )
        mine = known.get(identity.uuid)
        if mine is not None and mine.serial == device.certificate_serial:
            mine.group, mine.tag, mine.last_seen = identity.group, identity.tag, identity.last_seen
            identities.append(mine)
            continue
        key = pki.key_generate()
        keys[identity.uuid] = key
        renew[identity.uuid] = pki.device_csr_build(private_key=key, device_uuid=identity.uuid, factory_name=factory.name, production=device.is_production)
        identities.append(identity)
    if renew:
        ca = device_ca_certificate(factory=factory)
        for start in range(0, len(renew), 2000):
            chunk = dict(list(renew.items())[start : start + 2000])
            issued = device_certificates_renew(factory=factory, actor=None, csrs=chunk)
            by_uuid = {i.uuid: i for i in identities}
            for device_uuid, cert in issued.items():
                identity = by_uuid[str(device_uuid)]
                identity.serial = pki.serial_hex(pki.cert_load(cert))
                keystore.save(identity, key_pem=pki.key_pem(keys[identity.uuid]), chain_pem=cert + ca)
    return identities
