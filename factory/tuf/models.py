"""The TUF repository of a factory: its keys, its CI and production roots, the signed views
devices are served, and root changes waiting for offline signatures.

Metadata is stored as the exact bytes served: re-serialising is not guaranteed to be identical.
The tables keep the names they had when these models belonged to the `factory` app
(factory/migrations/0005_tuf_models_move.py), so existing databases keep their rows.
"""
from django.conf import settings
from django.db import models
from django.db.models import Q


# The tag of a factory's shared empty production view, served to production devices on tags
# nothing was released for. No real tag is empty (every door validates tags, the gateway's
# x-ats-tags included), so it never meets one.
EMPTY_TAG = ""


class Channel(models.TextChoices):
    CI = "ci", "CI (test devices)"
    PRODUCTION = "production", "Production"


class TufRepository(models.Model):
    """Per factory: where root signing lives and what the production root demands."""

    factory = models.OneToOneField("factory.Factory", on_delete=models.CASCADE, related_name="tuf_repository")
    # Both roots move in lockstep, so one version number describes them.
    root_version = models.PositiveIntegerField(default=1)
    root_expires_at = models.DateTimeField()
    # True while the server holds a root key (bootstrap); False once root signing is user-held.
    root_online = models.BooleanField(default=True)
    production_targets_threshold = models.PositiveSmallIntegerField(default=1)
    # Empty production targets, served to production tags that never completed a wave. Once an
    # offline targets key exists the user signs it too, so it stays valid under threshold 2.
    baseline_targets = models.BinaryField()
    baseline_expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "factory_tufrepository"
        verbose_name_plural = "TUF repositories"

    def __str__(self):
        return f"TUF repository of {self.factory_id}"


class TufKey(models.Model):
    """A public key of one role; online keys also carry their private key, Fernet-encrypted."""

    class Role(models.TextChoices):
        ROOT = "root"
        TARGETS = "targets"
        SNAPSHOT = "snapshot"
        TIMESTAMP = "timestamp"

    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="tuf_keys")
    role = models.CharField(max_length=16, choices=Role.choices)
    keyid = models.CharField(max_length=64)
    public = models.JSONField()
    # Only online keys have it; offline keys never reach the database.
    private_encrypted = models.BinaryField(null=True, blank=True)
    online = models.BooleanField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "factory_tufkey"
        constraints = [
            models.UniqueConstraint(fields=["factory", "keyid"], name="tufkey_factory_keyid_unique"),
            models.CheckConstraint(condition=Q(online=True) | Q(private_encrypted__isnull=True), name="tufkey_offline_has_no_private"),
        ]
        indexes = [models.Index(fields=["factory", "role"], name="tufkey_factory_role")]

    def __str__(self):
        return f"{self.role} {self.keyid[:8]}"


class TufRoot(models.Model):
    """One signed root version of one channel, served as N.root.json."""

    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="tuf_roots")
    channel = models.CharField(max_length=16, choices=Channel.choices)
    version = models.PositiveIntegerField()
    data = models.BinaryField()
    # The same root in the libaktualizr flavour (factory/tuf/aktualizr.py), signed in the same
    # step; empty for a root made before the flavour existed whose keys the server no longer holds.
    aktualizr_data = models.BinaryField(default=b"", blank=True)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "factory_tufroot"
        constraints = [models.UniqueConstraint(fields=["factory", "channel", "version"], name="tufroot_factory_channel_version_unique")]

    def __str__(self):
        return f"{self.channel} root v{self.version}"


class TufView(models.Model):
    """A complete signed view (targets, snapshot, timestamp) some devices are served.

    One CI view per factory, one production view per tag, one wave view per active wave. The CI
    and production rows are the anchors of their channel/tag: they hold the version counter
    shared with the tag's wave view, the token that invalidates cached device resolutions, and
    the claim that keeps two workers from re-signing the same tag at once.
    """

    class Kind(models.TextChoices):
        CI = "ci"
        PRODUCTION = "production"
        WAVE = "wave"

    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="tuf_views")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    tag = models.CharField(max_length=64, blank=True)
    wave = models.ForeignKey("waves.Wave", null=True, blank=True, on_delete=models.CASCADE, related_name="tuf_views")
    targets = models.BinaryField()
    snapshot = models.BinaryField()
    timestamp = models.BinaryField()
    targets_hash = models.CharField(max_length=64)
    snapshot_hash = models.CharField(max_length=64)
    timestamp_hash = models.CharField(max_length=64)
    # The libaktualizr-flavour siblings of the three files, signed with them by the same keys at
    # the same versions; the aktualizr snapshot describes the aktualizr targets, the aktualizr
    # timestamp the aktualizr snapshot. Empty only for rows signed before the flavour existed
    # whose targets were signed offline: they appear with the next signing of those targets.
    aktualizr_targets = models.BinaryField(default=b"", blank=True)
    aktualizr_snapshot = models.BinaryField(default=b"", blank=True)
    aktualizr_timestamp = models.BinaryField(default=b"", blank=True)
    aktualizr_targets_hash = models.CharField(max_length=64, blank=True, default="")
    aktualizr_snapshot_hash = models.CharField(max_length=64, blank=True, default="")
    aktualizr_timestamp_hash = models.CharField(max_length=64, blank=True, default="")
    targets_version = models.PositiveIntegerField()
    # Snapshot and timestamp share this version, taken from the anchor's counter.
    version = models.PositiveBigIntegerField()
    targets_expires_at = models.DateTimeField()
    snapshot_expires_at = models.DateTimeField()
    timestamp_expires_at = models.DateTimeField()
    # Production views of tags that never completed a wave serve the repository's baseline.
    baseline = models.BooleanField(default=False)
    # Changes whenever the bytes change: cached bytes are keyed by it.
    token = models.CharField(max_length=32)
    # Anchor rows only.
    counter = models.PositiveBigIntegerField(default=0)
    staging_token = models.CharField(max_length=32, blank=True)
    refresh_claimed_until = models.DateTimeField(null=True, blank=True)
    refresh_claim = models.CharField(max_length=32, blank=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "factory_tufview"
        constraints = [
            models.UniqueConstraint(fields=["factory"], condition=Q(kind="ci"), name="tufview_one_ci_per_factory"),
            models.UniqueConstraint(fields=["factory", "tag"], condition=Q(kind="production"), name="tufview_one_production_per_tag"),
            models.UniqueConstraint(fields=["wave"], condition=Q(kind="wave"), name="tufview_one_per_wave"),
            models.CheckConstraint(condition=Q(kind="wave", wave__isnull=False) | (~Q(kind="wave") & Q(wave__isnull=True)), name="tufview_wave_iff_kind_wave"),
        ]
        indexes = [
            models.Index(fields=["factory", "tag", "kind"], name="tufview_factory_tag"),
            models.Index(fields=["timestamp_expires_at"], name="tufview_timestamp_expiry"),
        ]

    def __str__(self):
        return f"{self.kind} view {self.tag or ''} v{self.version}"


class TufTargetsSibling(models.Model):
    """Offline signatures of the libaktualizr flavour of a targets document (a wave's targets, a
    baseline or production targets re-signed for a root change), found again by the hash of the
    sibling's signing payload, which follows from the TUF targets' signed content alone."""

    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="tuf_targets_siblings")
    payload_hash = models.CharField(max_length=64)
    data = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["factory", "payload_hash"], name="tuftargetssibling_factory_payload_unique")]

    def __str__(self):
        return f"aktualizr targets {self.payload_hash[:8]}"


class TufRootChange(models.Model):
    """A new root version (and any targets it forces to re-sign) waiting for offline signatures.

    `documents` is a list of {"name", "kind", "tag", "data" (base64 of the signed metadata),
    "source_hash"}; kinds are "root-ci", "root-production", "baseline" and "production".
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        APPLIED = "applied"
        ABANDONED = "abandoned"

    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="tuf_root_changes")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    action = models.CharField(max_length=32)
    details = models.JSONField(default=dict, blank=True)
    base_root_version = models.PositiveIntegerField()
    documents = models.JSONField(default=list)
    # The public key the change introduces (not yet a TufKey row until applied).
    new_key = models.JSONField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "factory_tufrootchange"
        constraints = [
            models.UniqueConstraint(fields=["factory"], condition=Q(status="pending"), name="tufrootchange_one_pending_per_factory"),
        ]

    def __str__(self):
        return f"{self.action} ({self.status})"

