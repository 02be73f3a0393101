"""Devices, device groups, registration tokens, the events devices report, and the reports the
database refused (dead letters)."""
import uuid
from datetime import datetime, timezone as dt_timezone

from django.db import models
from django.db.models import Q


class DeviceGroup(models.Model):
    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="device_groups")
    name = models.CharField(max_length=64)
    description = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["factory", "name"], name="devicegroup_factory_name_unique")]
        ordering = ["name"]

    def __str__(self):
        return self.name


class Device(models.Model):
    """A registered device. `is_production` is copied from its certificate at registration, never edited."""

    # No index of their own: the indexes below lead with factory and group (see Meta), and every
    # index is one more entry written when a device's row moves (a new version, tag or group).
    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="devices", db_index=False)
    uuid = models.UUIDField(default=uuid.uuid4)
    name = models.CharField(max_length=128)
    is_production = models.BooleanField(default=False)
    tag = models.CharField(max_length=64)
    # The tag a release manager moved the device to (`devices config updates --tag`), or "". While
    # set it is the device's tag whatever its x-ats-tags header says, and the gateway hands the
    # device a config fragment naming it, as fioctl's z-50-fioctl.toml does.
    config_tag = models.CharField(max_length=64, blank=True, default="")
    group = models.ForeignKey(DeviceGroup, null=True, blank=True, on_delete=models.SET_NULL, related_name="devices", db_index=False)
    hardware_id = models.CharField(max_length=128, blank=True)
    target_name = models.CharField(max_length=255, blank=True)
    target_version = models.PositiveIntegerField(null=True, blank=True)
    # The highest targets metadata version the gateway served this device (from its check-ins):
    # tells whether a device has seen a wave's targets, even if it has not installed them.
    targets_version_seen = models.PositiveIntegerField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    # The certificate itself lives in DeviceCertificate; the gateway needs only the serial.
    certificate_serial = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Random sort key, fixed at creation, so a pseudo-random sample is an index range scan.
    sample_key = models.FloatField(default=0.0)

    # Every poll moves last_seen (and may raise targets_version_seen): neither is in an index, so
    # on PostgreSQL the check-in's UPDATE is a heap-only (HOT) update that adds no index entries
    # and stays in the row's page, in the room the table's fillfactor keeps free (migration
    # 0008; a long transaction anywhere on the server holds back the reclaiming of old versions,
    # and once a page's room is used up, polls write new index entries again until it ends). An index on either would make every poll add an entry to every index of the table.
    # Without one, sorting a million devices by last seen takes about 150 ms, and the online and
    # offline filters and counts read the scope's devices as they did.
    class Meta:
        constraints = [models.UniqueConstraint(fields=["factory", "uuid"], name="device_factory_uuid_unique")]
        indexes = [
            models.Index(fields=["uuid"], name="device_uuid"),
            models.Index(fields=["factory", "is_production", "tag", "group"], name="device_scope"),
            models.Index(fields=["factory", "is_production", "tag", "sample_key"], name="device_sample"),
            models.Index(fields=["group", "sample_key"], name="device_group_sample"),
            models.Index(fields=["factory", "tag", "target_version"], name="device_tag_version"),
            models.Index(fields=["factory", "name"], name="device_name"),
            # The devices that joined a group lately: the wave status counts them apart (waves/status.py).
            models.Index(fields=["group", "created_at"], name="device_group_joined"),
        ]

    def __str__(self):
        return self.name or str(self.uuid)

    @property
    def certificate(self):
        """The PEM of the device's current certificate; "" for a row loaded without one."""
        try:
            return self.certificate_record.pem
        except DeviceCertificate.DoesNotExist:
            return ""


class FleetCount(models.Model):
    """How many production devices share one combination of the columns the wave status reads:
    tag, group, version, targets version served and the minute last seen. Kept by the database
    itself on PostgreSQL (triggers of migration 0009, in the transaction of every device write),
    so the status reads a few hundred rows instead of the fleet (waves/status_counts.py).

    Rows are deltas, only ever inserted by the writers, so concurrent writers never wait on one
    another's counts: a key's count is the sum of its rows, and the status cycle folds each key's
    rows into one (`status_counts.counts_compact`). "None" is 0 for the group and -1 for the
    others; the factory is a plain id, as the rows of a deleted factory net to nothing."""

    factory_id = models.BigIntegerField()
    tag = models.CharField(max_length=64)
    group_id = models.BigIntegerField()
    target_version = models.BigIntegerField()
    targets_seen = models.BigIntegerField()
    seen_minute = models.BigIntegerField()
    n = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["factory_id", "tag"], name="fleetcount_tag")]


class DeviceCertificate(models.Model):
    """A device's current certificate, off the device row: at about 1.2 kB it would be most of
    the row, and every fleet-wide pass (wave status, selection, lists) would read it from disk."""

    device = models.OneToOneField(Device, primary_key=True, on_delete=models.CASCADE, related_name="certificate_record")
    pem = models.TextField()


class DeviceCA(models.Model):
    """The factory's device certificate authority: it signs the certificates devices register with.

    It is itself signed by the device root CA (GatewayIdentity), so gateways trust one root and
    still tell factories apart by the CA that issued a device's certificate.

    The private key is encrypted at rest with the settings' key encryption key.
    """

    factory = models.OneToOneField("factory.Factory", on_delete=models.CASCADE, related_name="device_ca")
    certificate = models.TextField()
    private_key = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"device CA of {self.factory_id}"


class GatewayIdentity(models.Model):
    """The gateway's TLS trust: its server certificate and the CA devices trust it by, and the
    device root CA that signs every factory's device CA (the one CA gateways ask clients to chain to).

    Generated on first use and kept in the database so that every gateway process on every machine
    presents and trusts the same ones.
    """

    name = models.CharField(max_length=32, unique=True, default="default")
    ca_certificate = models.TextField()
    ca_private_key = models.BinaryField()
    certificate = models.TextField()
    private_key = models.BinaryField()
    hosts = models.JSONField(default=list)
    device_root_certificate = models.TextField(default="")
    device_root_private_key = models.BinaryField(default=b"")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)


class RegistrationToken(models.Model):
    """Lets a device register itself. Only a SHA-256 of the secret is stored."""

    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="registration_tokens")
    name = models.CharField(max_length=100, blank=True)
    # The start of the secret, shown in lists so an admin can tell tokens apart.
    prefix = models.CharField(max_length=16, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    tag = models.CharField(max_length=64)
    group = models.ForeignKey(DeviceGroup, null=True, blank=True, on_delete=models.SET_NULL)
    allow_production = models.BooleanField(default=False)
    max_uses = models.PositiveIntegerField(null=True, blank=True)
    uses = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(max_uses__isnull=True) | Q(uses__lte=models.F("max_uses")), name="regtoken_uses_within_max"),
        ]


class ReportedTime(models.DateTimeField):
    """A time a device reported: read back clamped to the years Python can show.

    The gateway refuses times far from its clock, but rows stored before it did (or written by
    hand) can hold any time the database takes, and PostgreSQL takes years past 9999, which no
    Python datetime holds: reading one would fail every page of the device's events. Only the
    SELECT is clamped; filters and ordering use the stored value, and its index.
    """

    EARLIEST = datetime(1, 1, 2, tzinfo=dt_timezone.utc)
    LATEST = datetime(9999, 12, 30, tzinfo=dt_timezone.utc)  # a day short: local time must fit too

    def select_format(self, compiler, sql, params):
        ops = compiler.connection.ops
        low, high = ops.adapt_datetimefield_value(self.EARLIEST), ops.adapt_datetimefield_value(self.LATEST)
        if compiler.connection.vendor == "sqlite":
            return f"MIN(MAX({sql}, %s), %s)", (*params, low, high)
        return f"LEAST(GREATEST({sql}, %s), %s)", (*params, low, high)


class DeviceEvent(models.Model):
    """A progress report from a device: download and install steps, with success or failure."""

    class Type(models.TextChoices):
        DOWNLOAD_STARTED = "download-started"
        DOWNLOAD_COMPLETED = "download-completed"
        INSTALL_STARTED = "install-started"
        INSTALL_APPLIED = "install-applied"
        INSTALL_COMPLETED = "install-completed"

    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="device_events")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="events")
    event_type = models.CharField(max_length=32, choices=Type.choices)
    target_name = models.CharField(max_length=255, blank=True)
    target_version = models.PositiveIntegerField(null=True, blank=True)
    success = models.BooleanField(null=True, blank=True)
    detail = models.TextField(blank=True)
    reported_at = ReportedTime()
    received_at = models.DateTimeField(auto_now_add=True)
    # The id the device gave the event (aktualizr-lite's "id"), "" when it gave none. A client
    # that re-sends a batch it thinks was lost sends the same ids: the constraint keeps one row.
    event_id = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["device", "-reported_at"], name="event_device_recent"),
            models.Index(fields=["factory", "target_version", "event_type"], name="event_version_type"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["device", "event_id"], condition=~Q(event_id=""), name="event_device_event_id_unique"),
        ]


class DeviceReport(models.Model):
    """The latest report of one kind a device sent (its hardware, network, client configuration,
    apps, the client it runs): text from the device, checked by `devices.reports`, shown escaped.

    One row per device and kind, replaced by the next report of that kind (in its page, where the
    room the table's fillfactor keeps allows: migration 0008).
    """

    class Kind(models.TextChoices):
        SYSTEM_INFO = "system-info"  # PUT /system_info: lshw JSON
        NETWORK = "network"  # PUT /system_info/network: JSON
        CONFIG = "config"  # PUT /system_info/config: the client's TOML configuration
        APPS_STATES = "apps-states"  # POST /apps-states: JSON
        CLIENT = "client"  # from the request headers: User-Agent, x-ats-ostreehash, x-ats-dockerapps

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="reports")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    content = models.TextField()
    received_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "kind"], name="devicereport_device_kind_unique")]


class DeadLetter(models.Model):
    """A buffered report the database refused (or that did not even decode), set aside by the
    flush so that it holds back no other device's reports. Operators read, count and purge them."""

    class Kind(models.TextChoices):
        EVENT = "event"
        CHECKIN = "check-in"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    # Plain ids, not foreign keys: the device may be gone, or the id itself may be what is wrong.
    factory_id = models.BigIntegerField(null=True, blank=True)
    device_id = models.BigIntegerField(null=True, blank=True)
    # The row as JSON with every non-ASCII character escaped: storable whatever the row held.
    raw = models.TextField()
    error = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["factory_id", "-created_at"], name="deadletter_factory_recent"),
            models.Index(fields=["created_at"], name="deadletter_created"),
        ]
