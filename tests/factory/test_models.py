"""Invariants the database itself enforces, so no door and no race can break them."""
import threading
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from devices.models import Device, DeviceGroup
from factory.models import AuditEntry
from factory.services import audit_record
from waves.models import Rollout, Wave, WaveDevice, WaveGroup


def make_wave(factory, name, tag="production", status="active"):
    return Wave.objects.create(factory=factory, name=name, version=42, tag=tag, status=status, expires_at=timezone.now() + timedelta(days=30))


def make_device(factory, uuid="ab8ecb00-8ed4-42ff-90b2-815b371c0f86"):
    return Device.objects.create(factory=factory, uuid=uuid, name="d", tag="production", is_production=True)


def test_device_uuid_is_unique_per_factory_only(factory, other_factory):
    make_device(factory)
    make_device(other_factory)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_device(factory)


def test_wave_name_is_unique_per_factory(factory, other_factory):
    make_wave(factory, "v2", status="complete")
    make_wave(other_factory, "v2", status="complete")
    with pytest.raises(IntegrityError), transaction.atomic():
        make_wave(factory, "v2", tag="other", status="complete")


def test_one_open_wave_per_tag(factory):
    make_wave(factory, "a", status="complete")
    make_wave(factory, "b", status="canceled")
    make_wave(factory, "c", status="active")
    make_wave(factory, "d", tag="eu", status="unsigned")
    for status in ("active", "unsigned"):
        with pytest.raises(IntegrityError), transaction.atomic():
            make_wave(factory, f"e-{status}", status=status)


def test_a_device_is_staged_at_most_once_per_wave(factory):
    wave = make_wave(factory, "w")
    device = make_device(factory)
    rollout = Rollout.objects.create(wave=wave)
    WaveDevice.objects.create(wave=wave, device=device, rollout=rollout)
    with pytest.raises(IntegrityError), transaction.atomic():
        WaveDevice.objects.create(wave=wave, device=device, rollout=Rollout.objects.create(wave=wave))


def test_a_group_is_staged_at_most_once_per_wave(factory):
    wave = make_wave(factory, "w")
    group = DeviceGroup.objects.create(factory=factory, name="canary")
    WaveGroup.objects.create(wave=wave, group=group, rollout=Rollout.objects.create(wave=wave))
    with pytest.raises(IntegrityError), transaction.atomic():
        WaveGroup.objects.create(wave=wave, group=group, rollout=Rollout.objects.create(wave=wave))


def test_audit_entries_are_append_only(factory, alice):
    entry = audit_record(factory=factory, actor=alice, action="test.thing", target="x")
    entry.action = "tampered"
    with pytest.raises(ValueError):
        entry.save()
    with pytest.raises(ValueError):
        entry.delete()
    assert AuditEntry.objects.get(pk=entry.pk).action == "test.thing"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_transactions_creating_an_active_wave_on_one_tag_exactly_one_wins(factory):
    barrier = threading.Barrier(2)
    outcomes = []

    def create(name):
        try:
            with transaction.atomic():
                barrier.wait()
                make_wave(factory, name)
            outcomes.append("won")
        except IntegrityError:
            outcomes.append("lost")
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(n,)) for n in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost", "won"]
    assert Wave.objects.filter(tag="production", status="active").count() == 1
