"""Certificates live off the device row; the migration that moved them there keeps every one."""
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from devices.models import Device, DeviceCertificate

BEFORE = [("devices", "0003_device_root_ca")]
AFTER = [("devices", "0004_device_certificate_table")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def _migrate_latest():
    # Later migrations of the app must come back too, or every test after this one
    # runs on a schema without their tables.
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_the_move_keeps_every_certificate_both_ways():
    from factory.tuf.services.repository import factory_create

    factory = factory_create(name="acme")
    try:
        _migrate(BEFORE)
        with connection.cursor() as cursor:
            for n, pem in enumerate(["-----BEGIN CERTIFICATE-----\nA\n", "", "-----BEGIN CERTIFICATE-----\nC\n"]):
                cursor.execute(
                    "INSERT INTO devices_device (factory_id, uuid, name, is_production, tag, hardware_id, target_name, certificate, "
                    "certificate_serial, created_at, sample_key) VALUES (%s, %s, %s, %s, 'production', '', '', %s, '', %s, 0.5)",
                    [factory.id, f"00000000-0000-4000-8000-00000000000{n}", f"dev-{n}", True, pem, "2026-01-01 00:00:00+00:00"],
                )
        _migrate(AFTER)
        # Read in SQL: the models of today may have columns this schema does not have yet.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT d.name, COALESCE(c.pem, '') FROM devices_device d LEFT JOIN devices_devicecertificate c ON c.device_id = d.id "
                "WHERE d.factory_id = %s ORDER BY d.name",
                [factory.id],
            )
            pems = dict(cursor.fetchall())
            cursor.execute("SELECT COUNT(*) FROM devices_devicecertificate")
            stored = cursor.fetchone()[0]
        assert pems == {"dev-0": "-----BEGIN CERTIFICATE-----\nA\n", "dev-1": "", "dev-2": "-----BEGIN CERTIFICATE-----\nC\n"}
        assert stored == 2  # a device without a certificate has no row

        _migrate(BEFORE)
        with connection.cursor() as cursor:
            cursor.execute("SELECT name, certificate FROM devices_device WHERE factory_id = %s ORDER BY name", [factory.id])
            assert [tuple(r) for r in cursor.fetchall()] == [(name, pems[name]) for name in sorted(pems)]
    finally:
        # Whatever failed above, every later test needs today's schema.
        _migrate_latest()
    assert {d.name: d.certificate for d in Device.objects.filter(factory=factory)} == pems
    assert DeviceCertificate.objects.count() == 2


@pytest.mark.django_db
def test_the_device_row_holds_no_certificate():
    # Every fleet-wide pass reads the device rows: the ~1.2 kB PEM stays in its own table.
    assert "certificate" not in {f.name for f in Device._meta.concrete_fields}
