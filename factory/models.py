"""Factories (tenants), who may act on them, what they did, the CI builds they publish (and the
targets they pruned) and the builds they marked bad."""
from django.conf import settings
from django.db import models


class Factory(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "factories"

    def __str__(self):
        return self.name


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    RELEASE_MANAGER = "release-manager", "Release manager"
    QA = "qa", "QA"
    SUPPORT = "support", "Support"


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    factory = models.ForeignKey(Factory, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=32, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "factory"], name="membership_user_factory_unique")]

    def __str__(self):
        return f"{self.user} @ {self.factory} ({self.role})"


class ApiToken(models.Model):
    """A per-user token for one factory. Only a SHA-256 of the secret is stored."""

    factory = models.ForeignKey(Factory, on_delete=models.CASCADE, related_name="api_tokens")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.prefix}… ({self.user})"


APPEND_ONLY = "the audit log is append-only"


class AuditEntryQuerySet(models.QuerySet):
    """Refuses the bulk writes that would change or remove history; the database refuses them too
    (migration 0004), whatever door they come through."""

    def update(self, **kwargs):
        raise ValueError(f"{APPEND_ONLY}: audit entries cannot be updated")

    def bulk_update(self, objs, fields, batch_size=None):
        raise ValueError(f"{APPEND_ONLY}: audit entries cannot be updated")

    def delete(self):
        raise ValueError(f"{APPEND_ONLY}: audit entries cannot be deleted")


class AuditEntry(models.Model):
    """Append-only record of every state change: who, what, when, details.

    A factory or user with history cannot be deleted (PROTECT): deleting them would have to delete
    or rewrite their entries. Deactivate a user instead; the actor's name is kept as text anyway."""

    factory = models.ForeignKey(Factory, on_delete=models.PROTECT, related_name="audit_entries")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    actor_name = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=255, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["factory", "-created_at"], name="audit_factory_recent"),
            models.Index(fields=["factory", "action", "-created_at"], name="audit_factory_action"),
        ]

    def save(self, *args, **kwargs):
        # A new instance carrying an existing id would make Django try an UPDATE first.
        if not self._state.adding or (self.pk is not None and not kwargs.get("force_insert")):
            raise ValueError(f"{APPEND_ONLY}: an entry cannot be saved again")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError(f"{APPEND_ONLY}: audit entries cannot be deleted")


class CiTarget(models.Model):
    """One target of a CI build: one per hardware ID, named <hwid>-lmp-<version>."""

    factory = models.ForeignKey(Factory, on_delete=models.CASCADE, related_name="ci_targets")
    name = models.CharField(max_length=255)
    version = models.PositiveIntegerField()
    hardware_id = models.CharField(max_length=128)
    sha256 = models.CharField(max_length=64)
    length = models.PositiveBigIntegerField()
    custom = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["factory", "name"], name="citarget_factory_name_unique"),
            models.UniqueConstraint(fields=["factory", "version", "hardware_id"], name="citarget_factory_version_hwid_unique"),
        ]
        indexes = [models.Index(fields=["factory", "-version"], name="citarget_factory_version")]

    @property
    def tags(self):
        return self.custom.get("tags", [])

    def __str__(self):
        return self.name


class PrunedTarget(models.Model):
    """A CI target taken out of the CI targets metadata (`targets prune`).

    Its name and version stay taken: a pruned number is never published again with other content,
    and the next build or re-release still numbers above it. The audit log says who pruned it.
    """

    factory = models.ForeignKey(Factory, on_delete=models.CASCADE, related_name="pruned_targets")
    name = models.CharField(max_length=255)
    version = models.PositiveIntegerField()
    hardware_id = models.CharField(max_length=128)
    sha256 = models.CharField(max_length=64)
    tags = models.JSONField(default=list)
    pruned_at = models.DateTimeField()
    pruned_by_name = models.CharField(max_length=150)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["factory", "name"], name="prunedtarget_factory_name_unique")]
        indexes = [models.Index(fields=["factory", "version"], name="prunedtarget_factory_version")]

    def __str__(self):
        return f"{self.name} (pruned)"


class RereleaseVersion(models.Model):
    """A version number a re-release (a revert or a rollback) took from the factory's build sequence.

    Builds and re-releases share one sequence of numbers: a re-release takes the next number above
    every CI build and every earlier re-release, and CI cannot publish a build under a number taken
    here, so a target name and a version always mean one content.
    """

    factory = models.ForeignKey(Factory, on_delete=models.CASCADE, related_name="rerelease_versions")
    version = models.PositiveIntegerField()
    # The CI build whose content the re-release carries.
    build_version = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["factory", "version"], name="rereleaseversion_factory_version_unique")]

    def __str__(self):
        return f"{self.version} (build {self.build_version})"


class BadBuild(models.Model):
    """A CI build someone marked bad: it may not go into a new wave or rollout on any tag (nor a
    re-release of it) until it is unmarked. Unmarking deletes the row; the audit log keeps both."""

    REASON_MAX = 500

    factory = models.ForeignKey(Factory, on_delete=models.CASCADE, related_name="bad_builds")
    version = models.PositiveIntegerField()
    reason = models.CharField(max_length=REASON_MAX)
    marked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Kept as text, like the audit log's actor: the name stays if the user is deleted.
    marked_by_name = models.CharField(max_length=150)
    marked_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["factory", "version"], name="badbuild_factory_version_unique")]

    def __str__(self):
        return f"build {self.version} (bad: {self.reason})"
