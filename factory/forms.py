"""Forms of the factory app's dashboard pages: status threshold, audit log filters, key changes;
and reading an uploaded key archive, which the wave pages share."""
from django import forms

KEY_ARCHIVE_MAX_BYTES = 1024 * 1024


def key_archive_upload_read(upload):
    """The bytes of an uploaded key archive, refused before reading when it is far too large."""
    if upload.size > KEY_ARCHIVE_MAX_BYTES:
        raise forms.ValidationError("A key archive is a few kilobytes; this file is larger than 1 MB.")
    return upload.read()


class DashboardForm(forms.Form):
    """Labels without Django's trailing colon: they sit above their fields."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


class StatusForm(DashboardForm):
    offline_threshold = forms.FloatField(
        required=False,
        min_value=0.1,
        max_value=24 * 365,
        label="Offline after (hours)",
        help_text="Devices not seen for this long count as offline.",
    )


class AuditFilterForm(DashboardForm):
    action = forms.ChoiceField(required=False, label="Action")
    actor = forms.CharField(required=False, max_length=150, label="Who", help_text="Username, exactly.")
    target = forms.CharField(required=False, max_length=255, label="Target", help_text="Wave, group, version…")
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            self.add_error("until", "The end date is before the start date.")
        return data


class KeyChangeSignForm(DashboardForm):
    key_archive = forms.FileField(
        label="Offline key archive (.tgz)", help_text="Used once, in memory, to sign the pending key change; it is never stored."
    )

    def clean_key_archive(self):
        return key_archive_upload_read(self.cleaned_data["key_archive"])


class BadBuildForm(DashboardForm):
    """Why a build is marked bad, or unmarked: required, recorded with the build and in the audit log."""

    reason = forms.CharField(max_length=500, widget=forms.Textarea(attrs={"rows": 2}), label="Reason")
