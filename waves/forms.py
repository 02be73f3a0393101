"""Forms of the wave pages: list filters, create and sign, the rollout phase flow, confirmations,
and QA's saved device lists."""
from django import forms
from django.core.validators import RegexValidator

from devices.forms import UuidListField, parse_uuids, read_uuid_file
from devices.uuids import MAX_UUIDS
from factory.errors import ApplicationError
from factory.forms import DashboardForm, key_archive_upload_read
from factory.names import NameValidator
from factory.plurals import counted

from . import devicelists
from .models import Wave
from .scope import scope_require
from .services import NAME_RE

WHOLE_FLEET = ""
LIMIT_HELP = "A number of devices (10) or a percentage of the scope (5%). Leave empty for all of the scope."


class WaveFilterForm(DashboardForm):
    status = forms.ChoiceField(required=False, label="Status", choices=[("", "Any status")] + [(s, s) for s in Wave.Status.values])
    tag = forms.ChoiceField(required=False, label="Tag")

    def __init__(self, *args, tags=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tag"].choices = [("", "Any tag")] + [(t, t) for t in tags]


class SelectSomeDisabled(forms.Select):
    """A select whose options in `disabled` are shown but cannot be chosen (a bad build, or one that
    cannot go out on the tag, with why)."""

    def __init__(self, *args, disabled=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.disabled = set(disabled)

    def create_option(self, name, value, *args, **kwargs):
        option = super().create_option(name, value, *args, **kwargs)
        if value in self.disabled:
            option["attrs"]["disabled"] = True
        return option


class WaveCreateForm(DashboardForm):
    name = forms.CharField(
        max_length=64,
        label="Wave name",
        help_text="For example v2.0-update. Letters, digits, . _ and -.",
        validators=[RegexValidator(NAME_RE, "A wave name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.")],
    )
    version = forms.TypedChoiceField(coerce=int, label="CI build", help_text="The CI build (target version) to release.")
    tag = forms.ChoiceField(label="Tag", help_text="Production devices following this tag get the wave.")
    prune = forms.TypedMultipleChoiceField(
        coerce=int,
        required=False,
        label="Prune versions",
        help_text="Versions to drop from the tag's production targets in this wave.",
        widget=forms.CheckboxSelectMultiple,
    )
    expires_days = forms.IntegerField(
        required=False,
        min_value=2,
        max_value=3650,
        label="Expires after (days)",
        help_text="Production targets cannot be re-signed online: devices refuse them once expired. Default 365.",
        widget=forms.NumberInput(attrs={"placeholder": "365"}),
    )
    key_archive = forms.FileField(
        required=False,
        label="Offline targets key archive (.tgz)",
        help_text="Used once, in memory, to sign this wave; it is never stored.",
    )

    def __init__(self, *args, versions=(), tags=(), prune_choices=(), bad=None, refused=None, **kwargs):
        super().__init__(*args, **kwargs)
        bad, refused = bad or {}, refused or {}
        self.fields["version"].widget = SelectSomeDisabled(disabled=set(bad) | set(refused))
        self.fields["version"].choices = [(v, _build_label(v, bad.get(v), refused.get(v))) for v in versions]
        self.fields["tag"].choices = [(t, t) for t in tags]
        self.fields["prune"].choices = [(v, f"version {v}") for v in prune_choices]

    def clean_key_archive(self):
        upload = self.cleaned_data.get("key_archive")
        return None if upload is None else key_archive_upload_read(upload)


def _build_label(version, bad, refused=None):
    if bad is None:
        # Why it cannot go out on this tag, e.g. "version 41 is already in the production targets".
        return f"Build {version} — {refused}" if refused else f"Build {version}"
    # Option text is escaped by the widget; the reason is cut so one option stays one line.
    reason = bad.reason if len(bad.reason) <= 80 else bad.reason[:79] + "…"
    return f"Build {version} — marked bad: {reason} (by {bad.marked_by_name} on {bad.marked_at:%Y-%m-%d})"


class WaveRevertForm(DashboardForm):
    """A revert: the tag, the earlier build to go back to, a name; the bad build to prune."""

    name = WaveCreateForm.base_fields["name"]
    tag = forms.ChoiceField(label="Tag", help_text="Production devices following this tag go back.")
    to_version = forms.TypedChoiceField(
        coerce=int,
        label="Go back to build",
        help_text="Its content (the same hashes, the same OSTree commit) is re-released at the next version number, above "
        "everything the tag has served: devices only ever move up.",
    )
    prune = WaveCreateForm.base_fields["prune"]
    expires_days = WaveCreateForm.base_fields["expires_days"]
    key_archive = WaveCreateForm.base_fields["key_archive"]
    clean_key_archive = WaveCreateForm.clean_key_archive

    def __init__(self, *args, tags=(), builds=(), prune_choices=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tag"].choices = [(t, t) for t in tags]
        self.fields["to_version"].choices = builds
        self.fields["prune"].choices = [(v, f"version {v}") for v in prune_choices]
        self.fields["prune"].help_text = "Drop the bad build from the tag's production targets in this wave."


class WaveSignForm(DashboardForm):
    key_archive = forms.FileField(
        label="Offline targets key archive (.tgz)", help_text="Used once, in memory, to sign this wave; it is never stored."
    )

    def clean_key_archive(self):
        return key_archive_upload_read(self.cleaned_data["key_archive"])


class RolloutForm(DashboardForm):
    group = forms.ChoiceField(required=False, label="Scope", help_text="A device group, or the whole fleet on the wave's tag.")
    limit = forms.CharField(required=False, max_length=16, label="Limit", help_text=LIMIT_HELP, widget=forms.TextInput(attrs={"placeholder": "e.g. 10 or 5%"}))
    uuids = UuidListField(required=False, label="Device UUIDs", help_text="Separated by commas, semicolons, | or new lines.")
    uuids_file = forms.FileField(required=False, label="…or upload a UUID file")
    saved_list = forms.ChoiceField(required=False, label="…or use a saved device list")

    def __init__(self, *args, groups=(), saved_lists=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["group"].choices = [(WHOLE_FLEET, "Whole fleet (every group and no group)")] + [(g.name, f"Group {g.name}") for g in groups]
        self.saved_lists = {str(s.id): s for s in saved_lists}
        self.fields["saved_list"].choices = [("", "No saved list")] + [(str(s.id), s.name) for s in saved_lists]

    def clean_limit(self):
        return self.cleaned_data["limit"].strip()

    def clean_uuids_file(self):
        return read_uuid_file(self.cleaned_data.get("uuids_file"))

    def clean(self):
        data = super().clean()
        sources = []
        if data.get("uuids", "").strip():
            sources.append(("uuids", data["uuids"], "pasted"))
        if data.get("uuids_file"):
            sources.append(("uuids_file", data["uuids_file"], "file"))
        saved = self.saved_lists.get(data.get("saved_list") or "")
        if saved is not None:
            sources.append(("saved_list", saved.uuids, f"saved list {saved.name}"))
        data["uuid_list"] = None
        data["uuid_source"] = ", ".join(label for _, _, label in sources)
        if sources:
            parsed = []
            for field, text, _ in sources:
                try:
                    parsed.extend(parse_uuids(text, purpose="to one rollout"))
                except forms.ValidationError as error:
                    self.add_error(field, error)
                    return data
            unique = list(dict.fromkeys(parsed))
            if len(unique) > MAX_UUIDS:
                self.add_error("uuids", f"Together the lists hold {counted(len(unique), 'device')}; at most {MAX_UUIDS:,} may be given to one rollout.")
            data["uuid_list"] = unique
        if not self.errors:
            try:
                scope_require(group=data.get("group"), limit=data.get("limit"), uuids=sources)
            except ApplicationError as error:
                # "Whole fleet" is no group: the fleet itself is never rolled out to as a group.
                raise forms.ValidationError(f"{error.message}. For the whole fleet, give a limit (for example 100%).") from None
        return data


class PreviewAddForm(DashboardForm):
    uuids = UuidListField(label="Device UUIDs to add or remove", help_text="Separated by commas, semicolons, | or new lines.")

    def clean_uuids(self):
        return parse_uuids(self.cleaned_data["uuids"], purpose="to one rollout")


LIST_NAME = NameValidator("A device list name", max_length=devicelists.NAME_MAX, forbidden=devicelists.NAME_FORBIDDEN)


class SaveListForm(DashboardForm):
    name = forms.CharField(max_length=devicelists.NAME_MAX, label="List name", validators=[LIST_NAME])


class ConfirmNameForm(DashboardForm):
    """The user types the wave's name to confirm an action that cannot be undone."""

    confirm = forms.CharField(max_length=64, label="Type the wave's name to confirm")

    def __init__(self, *args, expected, **kwargs):
        super().__init__(*args, **kwargs)
        self.expected = expected
        self.fields["confirm"].widget.attrs.update(
            {"autocomplete": "off", "spellcheck": "false", "data-expected": expected, "data-confirm-for": "finish-button"}
        )

    def clean_confirm(self):
        if self.cleaned_data["confirm"].strip() != self.expected:
            raise forms.ValidationError(f"Type {self.expected} exactly.")
        return self.cleaned_data["confirm"]


class RolloutConfirmForm(DashboardForm):
    """Carries what the user saw, so a list edited in another tab is not rolled out blindly."""

    count = forms.IntegerField(min_value=0, widget=forms.HiddenInput)
    digest = forms.CharField(max_length=64, widget=forms.HiddenInput)


class DeviceListForm(DashboardForm):
    name = forms.CharField(max_length=devicelists.NAME_MAX, label="Name", validators=[LIST_NAME])
    uuids = UuidListField(required=False, label="Device UUIDs", help_text="Separated by commas, semicolons, | or new lines.")
    uuids_file = forms.FileField(required=False, label="…or import a file", help_text="Its UUIDs are added to the ones above.")

    def clean_uuids_file(self):
        return read_uuid_file(self.cleaned_data.get("uuids_file"))

    def clean(self):
        data = super().clean()
        text = "\n".join(t for t in (data.get("uuids", ""), data.get("uuids_file", "")) if t and t.strip())
        data["uuid_list"] = []
        if text and "uuids" in data and "uuids_file" in data:
            try:
                data["uuid_list"] = parse_uuids(text, purpose="in one list")
            except forms.ValidationError as error:
                self.add_error("uuids_file" if not data.get("uuids", "").strip() else "uuids", error)
        return data
