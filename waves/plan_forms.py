"""Forms of the rollout plan pages: the phase editor (a formset), fill-ins from the seed's
large-fleet example or a template, saving a template, and the reasons recorded with decisions.

The forms only shape the input; waves.plans checks it, so the editor, the API and the CLI give
the same answers."""
from django import forms
from django.forms import BaseFormSet, formset_factory

from factory.forms import DashboardForm, key_archive_upload_read
from factory.names import NameValidator

from .plans.decisions import MAX_REASON
from .plans.phases import DEFAULT_WAIT_MINUTES, MAX_MINUTES, MAX_PHASES, PHASE_KEYS, PHASE_NAME_MAX, phase_as_input
from .plans import templates as plan_templates
from .models import PlanPhase
from .retries import MAX_RETRIES

WHOLE_FLEET = ""


def percent(ratio):
    """0.9 -> "90%" for the editor; None -> ""."""
    if ratio is None or ratio == "":
        return ""
    if isinstance(ratio, str):
        return ratio
    return f"{ratio * 100:.10g}%"


class PlanRollbackForm(DashboardForm):
    """Starting a plan with a pre-signed rollback: whom it moves back, and the key that signs it now."""

    rollback_scope = forms.ChoiceField(
        required=False,
        label="Pre-signed rollback",
        choices=[("", "none: a halt stays a halt"), ("staged", "move the staged devices back on a halt"), ("failed", "move the failed devices back on a halt")],
    )
    key_archive = forms.FileField(
        required=False, label="Offline targets key archive (.tgz)", help_text="Signs the rollback now, in memory, once; it is never stored."
    )

    def clean_key_archive(self):
        upload = self.cleaned_data.get("key_archive")
        return None if upload is None else key_archive_upload_read(upload)

    def clean(self):
        data = super().clean()
        if bool(data.get("rollback_scope")) != bool(data.get("key_archive")):
            raise forms.ValidationError("A pre-signed rollback needs both a scope and the offline key archive that signs it.")
        return data

    def rollback(self):
        data = self.cleaned_data
        return {"scope": data["rollback_scope"], "key_archive": data["key_archive"]} if data.get("rollback_scope") else None


class PhaseForm(DashboardForm):
    name = forms.CharField(
        required=False,
        max_length=PHASE_NAME_MAX,
        label="Name",
        validators=[NameValidator("A phase name", max_length=PHASE_NAME_MAX, required=False)],
        widget=forms.TextInput(attrs={"placeholder": "e.g. us-east canary"}),
    )
    group = forms.ChoiceField(required=False, label="Scope")
    limit = forms.CharField(
        required=False, max_length=16, label="Limit", help_text="N devices or N% of the scope; empty: all of it.", widget=forms.TextInput(attrs={"placeholder": "5 or 5%"})
    )
    saved_list = forms.ChoiceField(required=False, label="Saved device list")
    uuids = forms.CharField(
        required=False, label="…or device UUIDs", widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false", "autocomplete": "off", "class": "mono"})
    )
    wait_minutes = forms.IntegerField(min_value=0, max_value=MAX_MINUTES, initial=DEFAULT_WAIT_MINUTES, label="Wait and watch (min)")
    min_reporting = forms.IntegerField(required=False, min_value=0, label="At least reporting", help_text="Devices (all staged, if fewer).")
    min_success_ratio = forms.CharField(required=False, max_length=10, label="Success at least", widget=forms.TextInput(attrs={"placeholder": "90%"}))
    max_failure_ratio = forms.CharField(
        required=False, max_length=10, label="Failures at most", help_text="Above it the plan halts.", widget=forms.TextInput(attrs={"placeholder": "10%"})
    )
    stuck_after_minutes = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_MINUTES, label="Silent after (min)", help_text="Staged and silent: stuck (failed)."
    )
    max_unhealthy = forms.IntegerField(
        required=False, min_value=0, label="Silent after updating, at most", help_text="Above it the plan halts."
    )
    advance = forms.ChoiceField(choices=[("auto", "Automatically"), ("approval", "On approval")], initial="auto", label="Advance")
    approver_must_differ = forms.BooleanField(required=False, label="Approver must not be the author")
    pace_per_minute = forms.IntegerField(
        required=False, min_value=1, label="Pace: devices a minute", help_text="Stage in batches of at most this many a minute; empty: all at once."
    )
    pace_start = forms.IntegerField(required=False, min_value=1, label="…or growing: first batch")
    pace_factor = forms.FloatField(required=False, label="Growth each minute", help_text="Above 1, e.g. 2 doubles each batch.", widget=forms.TextInput(attrs={"placeholder": "2"}))
    pace_ceiling = forms.IntegerField(required=False, min_value=1, label="Largest batch")
    retry_failed = forms.IntegerField(
        required=False, min_value=0, max_value=MAX_RETRIES, label="Retry a failed device",
        help_text="Times the wave is offered again to a device that failed, before its failure counts against the gates.",
    )  # fmt: skip

    SCOPE = ("group", "limit", "saved_list", "uuids")

    def __init__(self, *args, groups=(), saved_lists=(), lock=None, **kwargs):
        super().__init__(*args, **kwargs)
        group_choices = [(WHOLE_FLEET, "Whole fleet")] + [(g, f"Group {g}") for g in groups]
        list_choices = [("", "No saved list")] + [(s, s) for s in saved_lists]
        # A value no longer offered (a deleted group, a template's {group}) still shows as it is.
        for name, choices in (("group", group_choices), ("saved_list", list_choices)):
            current = self.initial.get(name) or ""
            if current and current not in dict(choices):
                choices.append((current, f"{current} (missing)"))
            self.fields[name].choices = choices
        self.lock = lock
        # A phase that rolled out keeps its scope; a passed one keeps everything.
        locked = self.fields if lock == "all" else (self.SCOPE if lock == "scope" else ())
        for name in locked:
            self.fields[name].disabled = True

    def phase(self):
        """The phase in the services' spelling."""
        data = self.cleaned_data
        return {key: data.get(key) for key in PHASE_KEYS if data.get(key) not in (None, "")} | {
            "approver_must_differ": bool(data.get("approver_must_differ")),
            "wait_minutes": data.get("wait_minutes") if data.get("wait_minutes") is not None else DEFAULT_WAIT_MINUTES,
        }


class BasePhaseFormSet(BaseFormSet):
    def __init__(self, *args, groups=(), saved_lists=(), locks=(), **kwargs):
        self.groups, self.saved_lists, self.locks = groups, saved_lists, list(locks)
        super().__init__(*args, **kwargs)

    def get_form_kwargs(self, index):
        lock = self.locks[index] if index is not None and index < len(self.locks) else None
        return {"groups": self.groups, "saved_lists": self.saved_lists, "lock": lock}

    def add_fields(self, form, index):
        super().add_fields(form, index)
        if "DELETE" in form.fields:
            form.fields["DELETE"].label = "Remove this phase"
            if index is not None and index < len(self.locks) and self.locks[index]:
                form.fields["DELETE"].disabled = True

    def phases(self):
        """The kept phases, in order; untouched new rows are left out."""
        out = []
        for index, form in enumerate(self.forms):
            if not hasattr(form, "cleaned_data") or (self.can_delete and self._should_delete_form(form)):
                continue
            if index >= self.initial_form_count() and not form.has_changed():
                continue
            out.append(form.phase())
        return out


PhaseFormSet = formset_factory(
    PhaseForm, formset=BasePhaseFormSet, extra=0, can_delete=True, max_num=MAX_PHASES, validate_max=True, absolute_max=MAX_PHASES
)


def phase_initial(phase):
    """A phase (stored, or a dict in the services' spelling) as the editor's initial values."""
    data = phase_as_input(phase) if isinstance(phase, PlanPhase) else dict(phase)
    data["min_success_ratio"] = percent(data.get("min_success_ratio"))
    data["max_failure_ratio"] = percent(data.get("max_failure_ratio"))
    uuids = data.get("uuids") or ""
    data["uuids"] = "\n".join(uuids) if isinstance(uuids, list) else uuids
    return {k: v for k, v in data.items() if v is not None}


def settings_initial(plan):
    """A plan's settings (webhook, maintenance windows) as the editor's initial values."""
    from .plans.windows import window_text

    if plan is None:
        return {"timezone": "UTC"}
    return {
        "webhook_url": plan.webhook_url,
        "windows": "\n".join(window_text(w) for w in plan.windows or []),
        "timezone": plan.timezone,
        "group_windows": "\n".join(f"{g}={window_text(w)}" for g, ws in sorted((plan.group_windows or {}).items()) for w in ws),
    }


class PlanSettingsForm(DashboardForm):
    webhook_url = forms.URLField(
        required=False,
        max_length=200,
        assume_scheme="https",
        label="Webhook URL",
        help_text="Optional. Breakwater POSTs JSON here when the plan halts, needs an approval, or ends.",
    )
    windows = forms.CharField(
        required=False,
        max_length=2000,
        label="Maintenance windows",
        help_text="One a line, e.g. mon-fri 02:00-05:00 (an end before the start crosses midnight). Phases release devices only inside them; empty: any time.",
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false", "class": "mono"}),
    )
    timezone = forms.CharField(required=False, max_length=64, label="Time zone of the windows", widget=forms.TextInput(attrs={"placeholder": "Europe/Berlin"}))
    group_windows = forms.CharField(
        required=False,
        max_length=4000,
        label="A group's own windows",
        help_text="One a line, GROUP=WINDOW, e.g. beta=sat 00:00-06:00: they replace the plan's for that group's phases.",
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false", "class": "mono"}),
    )

    def windows_kwargs(self):
        """The windows in plan_set's spelling (the service checks them)."""
        data = self.cleaned_data
        return {
            "windows": data.get("windows") or [],
            "time_zone": data.get("timezone") or "UTC",
            "group_windows": [line.strip() for line in (data.get("group_windows") or "").splitlines() if line.strip()],
        }


class LargeFleetForm(DashboardForm):
    group = forms.ChoiceField(label="Group", help_text="5 devices, then 20, then 100, then the rest of this group.")
    wait_minutes = forms.IntegerField(min_value=0, max_value=MAX_MINUTES, initial=60, label="Wait after each phase (min)")
    approval_before_rest = forms.BooleanField(required=False, label="Ask for an approval before the rest of the group")

    def __init__(self, *args, groups=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["group"].choices = [(g, g) for g in groups]


class TemplateFillForm(DashboardForm):
    template = forms.ChoiceField(label="Template")
    groups = forms.CharField(
        required=False, max_length=2000, label="Groups, in order", help_text="For a per-group template: e.g. us-east, us-west, eu-emea."
    )

    def __init__(self, *args, templates=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["template"].choices = [(t, t) for t in templates]

    def group_list(self):
        return [g for g in self.cleaned_data["groups"].replace(",", " ").split() if g]


class TemplateSaveForm(DashboardForm):
    name = forms.CharField(
        max_length=plan_templates.TEMPLATE_NAME_MAX,
        label="Template name",
        error_messages={"required": "Give the template a name."},
        validators=[NameValidator("A template name", max_length=plan_templates.TEMPLATE_NAME_MAX, forbidden=plan_templates.TEMPLATE_NAME_FORBIDDEN)],
        widget=forms.TextInput(attrs={"placeholder": "e.g. canary, 5%, 25%, all"}),
    )
    replace = forms.BooleanField(required=False, label="Replace a template of the same name")
    per_group = forms.CharField(
        required=False,
        max_length=64,
        label="Make it per group",
        help_text="Optional: this group's name becomes {group}, so the template applies to any group.",
    )


class ReasonForm(DashboardForm):
    reason = forms.CharField(required=False, max_length=MAX_REASON, label="Reason", widget=forms.Textarea(attrs={"rows": 2}))
    # Skipping: which phase (default the current one).
    phase = forms.IntegerField(required=False, min_value=1, max_value=MAX_PHASES)
