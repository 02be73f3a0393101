"""Waves, their rollouts and staged devices or groups, and QA's saved device lists."""
from django.conf import settings
from django.db import models
from django.db.models import Q


class Wave(models.Model):
    class Status(models.TextChoices):
        # Initialized, but the offline signatures do not meet the production root's threshold yet.
        UNSIGNED = "unsigned"
        ACTIVE = "active"
        COMPLETE = "complete"
        CANCELED = "canceled"

    OPEN_STATUSES = (Status.UNSIGNED, Status.ACTIVE)

    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="waves")
    name = models.CharField(max_length=64)
    version = models.PositiveIntegerField()
    tag = models.CharField(max_length=64)
    source_tag = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UNSIGNED)
    pruned_versions = models.JSONField(default=list, blank=True)
    expires_at = models.DateTimeField()
    # The exact signed TUF targets bytes (signatures accumulate here until the threshold is met).
    targets = models.BinaryField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    finished_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["factory", "name"], name="wave_factory_name_unique"),
            # One open wave per tag, enforced by the database so concurrent inits cannot both win.
            models.UniqueConstraint(
                fields=["factory", "tag"], condition=Q(status__in=["unsigned", "active"]), name="wave_one_open_per_tag"
            ),
        ]
        indexes = [models.Index(fields=["factory", "status", "-created_at"], name="wave_factory_status")]

    def __str__(self):
        return self.name

    @property
    def is_open(self):
        return self.status in self.OPEN_STATUSES


class Rollout(models.Model):
    """One rollout command: who, when, scope, options and the exact devices it staged."""

    wave = models.ForeignKey(Wave, on_delete=models.CASCADE, related_name="rollouts")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    group = models.ForeignKey("devices.DeviceGroup", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    group_name = models.CharField(max_length=64, blank=True)
    limit = models.CharField(max_length=16, blank=True)
    uuids_count = models.PositiveIntegerField(default=0)
    full_group = models.BooleanField(default=False)
    device_count = models.PositiveIntegerField(default=0)
    options = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["created_at", "id"]


class WaveDevice(models.Model):
    """A device staged in a wave by a rollout."""

    wave = models.ForeignKey(Wave, on_delete=models.CASCADE, related_name="staged_devices")
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="wave_stagings")
    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="staged_devices")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["wave", "device"], name="wavedevice_once_per_wave")]
        indexes = [models.Index(fields=["device"], name="wavedevice_device")]


class WaveGroup(models.Model):
    """A full-group rollout: every device in the group, now or later, gets the wave."""

    wave = models.ForeignKey(Wave, on_delete=models.CASCADE, related_name="staged_groups")
    group = models.ForeignKey("devices.DeviceGroup", on_delete=models.CASCADE, related_name="wave_stagings")
    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="staged_groups")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["wave", "group"], name="wavegroup_once_per_wave")]


class SavedDeviceList(models.Model):
    """QA's named UUID list, edited and reused in rollouts."""

    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="saved_device_lists")
    name = models.CharField(max_length=100)
    uuids = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["factory", "name"], name="savedlist_factory_name_unique")]
        ordering = ["name"]

    def __str__(self):
        return self.name
