"""Forms of the device and group pages: list filters, group create/rename/delete, bulk assign."""
import uuid

from django import forms

from factory.errors import ApplicationError
from factory.forms import DashboardForm

from .uuids import MAX_UUIDS, parse_uuid_list

UUID_FILE_MAX_BYTES = 1024 * 1024

ANY = ""
NO_GROUP = "none"


class DeviceFilterForm(DashboardForm):
    q = forms.CharField(
        required=False,
        max_length=128,
        label="Search",
        help_text="A device UUID, or the start of a device name.",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "UUID or name", "autocomplete": "off"}),
    )
    group = forms.ChoiceField(required=False, label="Group")
    tag = forms.ChoiceField(required=False, label="Tag")
    kind = forms.ChoiceField(
        required=False, label="Kind", choices=[(ANY, "Production and test"), ("production", "Production"), ("test", "Test")]
    )
    online = forms.ChoiceField(required=False, label="Seen", choices=[(ANY, "Online or not"), ("online", "Online"), ("offline", "Offline")])
    version = forms.IntegerField(required=False, min_value=0, label="Target version", widget=forms.NumberInput(attrs={"placeholder": "any"}))
    wave = forms.ChoiceField(
        required=False,
        label="Active wave",
        choices=[(ANY, "In a wave or not"), ("yes", "Staged in an active wave"), ("no", "Not staged in an active wave")],
    )

    def __init__(self, *args, groups=(), tags=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["group"].choices = [(ANY, "Any group"), (NO_GROUP, "(No group)")] + [(str(g.id), g.name) for g in groups]
        self.fields["tag"].choices = [(ANY, "Any tag")] + [(t, t) for t in tags]

    def clean_q(self):
        return self.cleaned_data["q"].strip()

    def search_uuid(self):
        """The search text as a UUID, or None when it is a name."""
        try:
            return uuid.UUID(self.cleaned_data.get("q", ""))
        except ValueError:
            return None


class GroupCreateForm(DashboardForm):
    name = forms.CharField(max_length=64, label="Name", help_text="Letters, digits, - and _; no spaces.")
    description = forms.CharField(max_length=255, required=False, label="Description")


class DeviceTagForm(DashboardForm):
    tag = forms.CharField(max_length=64, label="Move to tag")


class GroupRenameForm(DashboardForm):
    name = forms.CharField(max_length=64, label="New name")


class GroupDeleteForm(DashboardForm):
    confirm = forms.CharField(max_length=64, label="Type the group's name to confirm")

    def __init__(self, *args, group, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group

    def clean_confirm(self):
        if self.cleaned_data["confirm"].strip() != self.group.name:
            raise forms.ValidationError(f"Type {self.group.name} exactly to delete this group.")
        return self.cleaned_data["confirm"]


class UuidListField(forms.CharField):
    """A UUID list pasted as text: any of , ; | and whitespace separate the UUIDs."""

    widget = forms.Textarea(attrs={"rows": 5, "spellcheck": "false", "autocomplete": "off", "class": "mono"})


def read_uuid_file(upload):
    """The text of an uploaded UUID list, or a ValidationError the field can show."""
    if upload is None:
        return ""
    if upload.size > UUID_FILE_MAX_BYTES:
        raise forms.ValidationError(f"The file is larger than 1 MB; a UUID list of {MAX_UUIDS:,} devices is about {MAX_UUIDS * 37 // 1000} kB.")
    try:
        return upload.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise forms.ValidationError("The file is not UTF-8 text.") from None


def parse_uuids(text, *, max_items=MAX_UUIDS, purpose="at once"):
    """Parse with the one shared parser; its message names the bad tokens."""
    try:
        return parse_uuid_list(text, max_items=max_items)
    except ApplicationError as error:
        if error.code == "uuids_too_many":
            raise forms.ValidationError(f"{error.message.split(';')[0]}; at most {max_items:,} may be given {purpose}.") from None
        raise forms.ValidationError(error.message) from None


class GroupAssignForm(DashboardForm):
    group = forms.ChoiceField(label="Move to group")
    uuids = UuidListField(required=False, label="Device UUIDs", help_text="Paste UUIDs separated by commas, semicolons, | or new lines.")
    uuids_file = forms.FileField(required=False, label="…or upload a file of UUIDs")

    def __init__(self, *args, groups=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.groups = {str(g.id): g for g in groups}
        self.fields["group"].choices = [(str(g.id), g.name) for g in groups] + [(NO_GROUP, "(No group: take them out)")]

    def clean_uuids_file(self):
        return read_uuid_file(self.cleaned_data.get("uuids_file"))

    def clean(self):
        data = super().clean()
        text = "\n".join(t for t in (data.get("uuids", ""), data.get("uuids_file", "")) if t)
        if "uuids" in data and "uuids_file" in data:
            if not text.strip():
                self.add_error("uuids", "Paste at least one device UUID or upload a file.")
            else:
                try:
                    data["uuid_list"] = parse_uuids(text, purpose="to one group move")
                except forms.ValidationError as error:
                    self.add_error("uuids_file" if not data.get("uuids") else "uuids", error)
        data["group_obj"] = self.groups.get(data.get("group"))
        return data
