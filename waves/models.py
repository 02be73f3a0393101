"""Waves, their rollouts and staged devices or groups, and QA's saved device lists."""
from django.conf import settings
from django.db import models
from django.db.models import Q


class Wave(models.Model):
    class Status(models.TextChoices):
        # Initialized, but the offline signatures do not meet the production root's threshold yet.
        UNSIGNED = "unsigned"
        ACTIVE = "active"
        # A pre-signed rollback held by a running plan: signed with the offline key when the plan
        # started, activated (and its devices staged) only if the plan halts on a failure gate.
        ARMED = "armed"
        COMPLETE = "complete"
        CANCELED = "canceled"

    OPEN_STATUSES = (Status.UNSIGNED, Status.ACTIVE)

    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="waves")
    name = models.CharField(max_length=64)
    version = models.PositiveIntegerField()
    tag = models.CharField(max_length=64)
    source_tag = models.CharField(max_length=64, blank=True)
    # A re-release (a revert): the CI build whose content the wave carries at its own, higher,
    # `version`; null for a wave of build `version` itself.
    rerelease_of = models.PositiveIntegerField(null=True, blank=True)
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
    # When failed devices were last offered the wave again (WaveRetry); null: never, so the
    # status reads skip the per-report retry check (waves/outcomes.py).
    retried_at = models.DateTimeField(null=True, blank=True)
    # The database keeps this wave's status counts (WaveActivity, WaveActivityCount) up to date:
    # from its creation until it has been finished longer than the status follows it.
    counts_ready = models.BooleanField(default=True)

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

    @property
    def build_version(self):
        """The CI build whose content the wave releases."""
        return self.rerelease_of or self.version


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
    # A full-group rollout stages the group, not its devices: the request does not count them
    # (that pass grows with the group), and the count arrives right after the commit
    # (waves/rollout_counts.py). None until then.
    device_count = models.PositiveIntegerField(null=True, default=0)
    options = models.JSONField(default=dict, blank=True)
    # The plan phase this rollout is a batch of (a paced phase stages its devices in several).
    phase = models.ForeignKey("PlanPhase", null=True, blank=True, on_delete=models.SET_NULL, related_name="batches")

    class Meta:
        ordering = ["created_at", "id"]


class WaveDevice(models.Model):
    """A device staged in a wave by a rollout."""

    # The (wave, device) unique index serves lookups by wave; fewer indexes keep a 10,000-device
    # rollout's insert cheap.
    wave = models.ForeignKey(Wave, on_delete=models.CASCADE, related_name="staged_devices", db_index=False)
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="wave_stagings")
    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="staged_devices")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["wave", "device"], name="wavedevice_once_per_wave")]


class WaveActivity(models.Model):
    """What one device did in one wave: the furthest step it reported on the wave's version (1
    download, 2 install), its last success, failure and report, and the rollout that staged it
    on its own. Only devices with such activity have a row. Kept by the database on PostgreSQL
    (migration 0008's triggers on events, stagings and retries), for the waves whose counts it
    keeps (`Wave.counts_ready`)."""

    wave = models.ForeignKey(Wave, on_delete=models.CASCADE, related_name="+")
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="+", db_index=False)
    progress = models.SmallIntegerField(default=0)
    last_success = models.DateTimeField(null=True)
    last_failure = models.DateTimeField(null=True)
    last_report = models.DateTimeField(null=True)
    # The staging's rollout, as a plain id: rollouts are never deleted without their wave.
    rollout_id = models.BigIntegerField(null=True)

    class Meta:
        # Led by the device: every device write looks up the device's activity.
        constraints = [models.UniqueConstraint(fields=["device", "wave"], name="waveactivity_once_per_device_wave")]


class WaveActivityCount(models.Model):
    """How many production devices on the wave's tag with activity share one key: the device's
    FleetCount columns (devices/models.py) and their activity's step, outcome, staging rollout
    and the minute of the last report (kept only while it can still make the device stuck).
    "None" is 0 or -1. Delta rows, as FleetCount's; the wave is a plain id, so a wave deleted
    with its activity leaves rows that net to nothing, which the compaction drops."""

    wave_id = models.BigIntegerField()
    group_id = models.BigIntegerField()
    target_version = models.BigIntegerField()
    targets_seen = models.BigIntegerField()
    seen_minute = models.BigIntegerField()
    progress = models.SmallIntegerField()
    failed = models.BooleanField()
    rollout_id = models.BigIntegerField()
    since_minute = models.BigIntegerField()
    n = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["wave_id"], name="waveactivitycount_wave")]


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


class WaveStatusSample(models.Model):
    """One point of a wave's status time series: per-group counts of devices in each state.

    `bucket` is the sample time divided by the aggregation interval; the unique constraint makes
    a re-run of the same aggregation (a retried or duplicated task) a no-op instead of a double count.
    """

    wave = models.ForeignKey(Wave, on_delete=models.CASCADE, related_name="status_samples")
    bucket = models.BigIntegerField()
    taken_at = models.DateTimeField()
    totals = models.JSONField(default=dict)
    groups = models.JSONField(default=dict)
    update_times = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["wave", "bucket"], name="wavestatussample_once_per_bucket")]
        ordering = ["wave", "bucket"]


class RolloutPlan(models.Model):
    """Ordered rollout phases for one wave, advanced by evidence (gates) or approval."""

    class Status(models.TextChoices):
        DRAFT = "draft"
        RUNNING = "running"
        PAUSED = "paused"
        HALTED = "halted"
        FINISHED = "finished"
        CANCELED = "canceled"

    wave = models.OneToOneField(Wave, on_delete=models.CASCADE, related_name="plan")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    webhook_url = models.URLField(blank=True)
    halted_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Claimed by the evaluator with a conditional update so two workers never act twice.
    evaluating_until = models.DateTimeField(null=True, blank=True)
    # Maintenance windows: phases stage devices only inside them. A window is
    # {"days": ["mon", ...], "start": "HH:MM", "end": "HH:MM"} in `timezone`; `group_windows`
    # maps a group name to its own windows, which replace the plan's for that group's phases.
    windows = models.JSONField(default=list, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    group_windows = models.JSONField(default=dict, blank=True)
    # The pre-signed rollback (an ARMED re-release wave) and whom it moves back on a halt.
    rollback_wave = models.OneToOneField(Wave, null=True, blank=True, on_delete=models.SET_NULL, related_name="rollback_of_plan")
    rollback_scope = models.CharField(max_length=16, blank=True)


class PlanPhase(models.Model):
    class Advance(models.TextChoices):
        AUTO = "auto"
        APPROVAL = "approval"

    class Status(models.TextChoices):
        PENDING = "pending"
        WATCHING = "watching"
        AWAITING_APPROVAL = "awaiting-approval"
        PASSED = "passed"
        FAILED = "failed"

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="phases")
    position = models.PositiveIntegerField()
    name = models.CharField(max_length=64, blank=True)
    # scope: the exact rollout semantics of the seed
    group_name = models.CharField(max_length=64, blank=True)
    limit = models.CharField(max_length=16, blank=True)
    saved_list = models.ForeignKey(SavedDeviceList, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    uuids = models.TextField(blank=True)
    # wait-and-watch and gates
    wait_minutes = models.PositiveIntegerField(default=60)
    min_reporting = models.PositiveIntegerField(default=0)
    min_success_ratio = models.FloatField(null=True, blank=True)
    max_failure_ratio = models.FloatField(null=True, blank=True)
    max_unhealthy = models.PositiveIntegerField(null=True, blank=True)
    stuck_after_minutes = models.PositiveIntegerField(null=True, blank=True)
    advance = models.CharField(max_length=16, choices=Advance.choices, default=Advance.AUTO)
    approver_must_differ = models.BooleanField(default=False)
    # Pacing: at most `pace_per_minute` devices a minute, or batches growing from `pace_start`
    # by `pace_factor` each minute up to `pace_ceiling`; none set stages the phase at once.
    pace_per_minute = models.PositiveIntegerField(null=True, blank=True)
    pace_start = models.PositiveIntegerField(null=True, blank=True)
    pace_factor = models.FloatField(null=True, blank=True)
    pace_ceiling = models.PositiveIntegerField(null=True, blank=True)
    # Kept as batches are staged, so a paced tick never counts the phase's devices.
    staged_count = models.PositiveIntegerField(default=0)
    batches_done = models.BooleanField(default=False)
    last_batch_at = models.DateTimeField(null=True, blank=True)
    # Offer the wave again to a device that reported a failure, up to this many times.
    retry_failed = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    rollout = models.ForeignKey(Rollout, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["plan", "position"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "position"], name="planphase_position_unique"),
            models.CheckConstraint(
                condition=(Q(min_success_ratio__isnull=True) | Q(min_success_ratio__gte=0, min_success_ratio__lte=1))
                & (Q(max_failure_ratio__isnull=True) | Q(max_failure_ratio__gte=0, max_failure_ratio__lte=1)),
                name="planphase_ratios_between_0_and_1",
            ),
            models.CheckConstraint(condition=Q(pace_factor__isnull=True) | Q(pace_factor__gt=1), name="planphase_pace_factor_above_1"),
        ]


class WaveRetry(models.Model):
    """The wave offered again to a device that reported a failure: `count` times, the last at
    `retried_at`. A failure reported before `retried_at` no longer counts (waves/outcomes.py)."""

    wave = models.ForeignKey(Wave, on_delete=models.CASCADE, related_name="retries")
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="+")
    count = models.PositiveSmallIntegerField(default=1)
    retried_at = models.DateTimeField()
    retried_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["wave", "device"], name="waveretry_once_per_wave_device")]


class PlanDecision(models.Model):
    """Every decision on a plan, with its evidence: advance, wait, halt, approve, pause, resume."""

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="decisions")
    phase = models.ForeignKey(PlanPhase, null=True, blank=True, on_delete=models.CASCADE, related_name="decisions")
    kind = models.CharField(max_length=16)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField(blank=True)
    evidence = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]


class PlanTemplate(models.Model):
    """A saved plan (phases as data) that can be applied to any new wave."""

    factory = models.ForeignKey("factory.Factory", on_delete=models.CASCADE, related_name="plan_templates")
    name = models.CharField(max_length=100)
    phases = models.JSONField(default=list)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["factory", "name"], name="plantemplate_factory_name_unique")]
        ordering = ["name"]
