"""Dashboard pages for waves: list, create and sign, detail with status, complete and cancel.
Each page as a plain request, as an htmx request (its fragment only) and for a wrong role."""
import re
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from factory.models import AuditEntry
from tests.factory.test_views import hx, login
from waves.models import Wave
from waves.services import wave_complete, wave_rollout

from .conftest import make_wave


def archive(data, name="targets.only.key.tgz"):
    return SimpleUploadedFile(name, data, content_type="application/gzip")


# --- list ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_wave_list_open_first_and_filtered(client, dave, factory, bob, builds, offline_key):
    old = make_wave(factory, bob, offline_key, name="v1.0", version=41)
    wave_complete(wave=old, actor=bob)
    make_wave(factory, bob, offline_key, name="v2.0", version=42)
    page = login(client, dave).get(reverse("wave-list"))
    assert page.status_code == 200
    html = page.content.decode()
    assert html.index(">v2.0<") < html.index(">v1.0<")
    assert "Create wave" not in html  # support cannot create waves

    fragment = client.get(reverse("wave-list"), {"status": "complete"}, **hx("wave-results"))
    assert fragment.status_code == 200 and b"<html" not in fragment.content
    assert b">v1.0<" in fragment.content and b">v2.0<" not in fragment.content


@pytest.mark.django_db
def test_wave_list_shows_create_button_to_release_managers_only(client, bob, carol, factory):
    assert b"Create wave" in login(client, bob).get(reverse("wave-list")).content
    assert b"Create wave" not in login(client, carol).get(reverse("wave-list")).content


@pytest.mark.django_db
def test_wave_list_hides_other_factories(client, eve, wave):
    page = login(client, eve).get(reverse("wave-list"), **hx("main"))
    assert page.status_code == 200 and b"v2.0-update" not in page.content
    assert login(client, eve).get(reverse("wave-detail", args=[wave.name])).status_code == 404


# --- create and sign -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_page_previews_targets_without_creating(client, bob, factory, builds, offline_key):
    login(client, bob)
    page = client.get(reverse("wave-create"))
    assert page.status_code == 200 and b"Build 43" in page.content
    preview = client.post(
        reverse("wave-create"), {"name": "v2", "version": 42, "tag": "production", "action": "preview"}, **hx("wave-create")
    )
    assert preview.status_code == 200
    assert b"<html" not in preview.content
    assert b"intel-corei7-64-lmp-42" in preview.content and b"raspberrypi4-64-lmp-42" in preview.content
    assert not Wave.objects.filter(factory=factory).exists()


@pytest.mark.django_db
def test_create_with_key_archive_signs_and_activates(client, bob, factory, builds, offline_key):
    login(client, bob)
    response = client.post(
        reverse("wave-create"),
        {"name": "v2.0-update", "version": 42, "tag": "production", "expires_days": 90, "action": "create", "key_archive": archive(offline_key)},
    )
    assert response.status_code == 302 and response["Location"] == reverse("wave-detail", args=["v2.0-update"])
    wave = Wave.objects.get(factory=factory, name="v2.0-update")
    assert wave.status == "active"
    assert timedelta(days=89) < wave.expires_at - timezone.now() <= timedelta(days=90)
    page = client.get(response["Location"])
    assert b"is signed and active" in page.content


@pytest.mark.django_db
def test_create_over_htmx_redirects_the_client(client, bob, factory, builds, offline_key):
    login(client, bob)
    response = client.post(
        reverse("wave-create"),
        {"name": "v2", "version": 42, "tag": "production", "action": "create", "key_archive": archive(offline_key)},
        **hx("wave-create"),
    )
    assert response.status_code == 200 and response["HX-Redirect"] == reverse("wave-detail", args=["v2"])


@pytest.mark.django_db
def test_create_with_a_bad_key_archive_creates_nothing(client, bob, factory, builds, offline_key):
    login(client, bob)
    response = client.post(
        reverse("wave-create"),
        {"name": "v2", "version": 42, "tag": "production", "action": "create", "key_archive": archive(b"not a tarball")},
        **hx("wave-create"),
    )
    assert response.status_code == 400
    assert b'id="id_key_archive_error"' in response.content
    assert not Wave.objects.filter(factory=factory).exists()
    assert not AuditEntry.objects.filter(factory=factory, action="wave.init").exists()


@pytest.mark.django_db
def test_create_errors_show_at_their_fields(client, bob, factory, builds, offline_key):
    login(client, bob)
    make_wave(factory, bob, offline_key, name="taken", version=42)
    bad_name = client.post(reverse("wave-create"), {"name": "has space", "version": 43, "tag": "production", "action": "preview"})
    assert bad_name.status_code == 400 and b'id="id_name_error"' in bad_name.content
    taken = client.post(reverse("wave-create"), {"name": "taken", "version": 43, "tag": "production", "action": "preview"})
    assert taken.status_code == 400 and b'id="id_name_error"' in taken.content
    open_wave = client.post(reverse("wave-create"), {"name": "other", "version": 43, "tag": "production", "action": "preview"})
    assert open_wave.status_code == 400 and b"still active on tag production" in open_wave.content
    assert b'id="id_tag_error"' in open_wave.content
    unknown_build = client.post(reverse("wave-create"), {"name": "x", "version": 99, "tag": "production", "action": "preview"})
    assert unknown_build.status_code == 400 and b'id="id_version_error"' in unknown_build.content
    too_long = client.post(reverse("wave-create"), {"name": "x", "version": 43, "tag": "production", "expires_days": 99999, "action": "preview"})
    assert too_long.status_code == 400 and b'id="id_expires_days_error"' in too_long.content


@pytest.mark.django_db
def test_create_without_archive_waits_for_signatures_then_signs(client, bob, factory, builds, offline_key):
    login(client, bob)
    response = client.post(reverse("wave-create"), {"name": "v2", "version": 42, "tag": "production", "action": "create"})
    assert response.status_code == 302
    wave = Wave.objects.get(factory=factory, name="v2")
    assert wave.status == "unsigned"
    page = client.get(reverse("wave-detail", args=["v2"]))
    assert b"Awaiting offline signatures" in page.content
    assert b"breakwater waves sign v2 -k" in page.content
    assert b'id="rollout-panel"' not in page.content

    wrong = client.post(reverse("wave-sign", args=["v2"]), {"key_archive": archive(b"junk")}, **hx("main"))
    assert wrong.status_code == 400 and b'id="id_key_archive_error"' in wrong.content
    signed = client.post(reverse("wave-sign", args=["v2"]), {"key_archive": archive(offline_key)})
    assert signed.status_code == 302
    wave.refresh_from_db()
    assert wave.status == "active"


@pytest.mark.django_db
@pytest.mark.parametrize("user", ["carol", "dave"])
def test_create_and_sign_are_refused_for_qa_and_support(client, request, user, factory, builds, offline_key, bob):
    login(client, request.getfixturevalue(user))
    assert client.get(reverse("wave-create")).status_code == 403
    forged = client.post(reverse("wave-create"), {"name": "v2", "version": 42, "tag": "production", "action": "create", "key_archive": archive(offline_key)})
    assert forged.status_code == 403
    assert not Wave.objects.filter(factory=factory).exists()
    from waves.services import wave_init

    wave = wave_init(factory=factory, actor=bob, name="u", version=42, tag="production")
    assert client.post(reverse("wave-sign", args=["u"]), {"key_archive": archive(offline_key)}).status_code == 403
    wave.refresh_from_db()
    assert wave.status == "unsigned"


# --- detail --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_detail_shows_summary_targets_signatures_status_and_history(client, bob, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    page = login(client, bob).get(reverse("wave-detail", args=[wave.name]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "intel-corei7-64-lmp-42" in html  # targets
    assert "offline key of bob" in html  # signatures
    assert "Status by group" in html and ">canary</a>" in html and "(No Group)" in html
    assert html.index(">canary</a>") < html.index(">beta</a>") < html.index("(No Group)")
    assert "full group" in html and "Download UUIDs" in html
    assert "Complete wave" in html and "Cancel wave" in html and 'id="rollout-panel"' in html


@pytest.mark.django_db
def test_detail_status_fragment_for_polling(client, dave, fleet100, wave, bob):
    wave_rollout(wave=wave, actor=bob, limit="7")
    response = login(client, dave).get(reverse("wave-detail", args=[wave.name]), **hx("wave-status"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and 'id="wave-status"' in html
    assert "Rollout history" not in html
    assert '<span class="n">7</span><span class="l">scheduled</span>' in html


@pytest.mark.django_db
def test_detail_for_support_and_qa_has_no_change_buttons(client, dave, carol, fleet100, wave):
    html = login(client, dave).get(reverse("wave-detail", args=[wave.name])).content.decode()
    assert "Complete wave" not in html and "Cancel wave" not in html and 'id="rollout-panel"' not in html
    assert "Status by group" in html
    html = login(client, carol).get(reverse("wave-detail", args=[wave.name])).content.decode()
    assert "Complete wave" not in html and "Cancel wave" not in html
    assert 'id="rollout-panel"' in html  # QA previews rollouts


@pytest.mark.django_db
def test_detail_warns_before_the_targets_expire(client, bob, factory, builds, offline_key, fleet100):
    wave = make_wave(factory, bob, offline_key, expires_days=10)
    html = login(client, bob).get(reverse("wave-detail", args=[wave.name])).content.decode()
    # The warning of waves.expiry, which `breakwater waves status` prints too.
    assert f"The targets of wave {wave.name} (tag {wave.tag}, version {wave.version}) expire in " in html
    assert "cannot be re-signed online" in html


@pytest.mark.django_db
def test_rollout_history_download_is_the_exact_device_list(client, dave, bob, fleet100, wave):
    result = wave_rollout(wave=wave, actor=bob, limit="4")
    response = login(client, dave).get(reverse("rollout-devices", args=[wave.name, result.rollout.id]))
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment")
    assert set(response.content.decode().split()) == {d["uuid"] for d in result.devices}


# --- complete and cancel -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_complete_needs_the_typed_wave_name(client, bob, fleet100, wave):
    login(client, bob)
    page = client.get(reverse("wave-complete", args=[wave.name]), **hx("main"))
    assert page.status_code == 200 and b"<html" not in page.content and b"every</strong> production device" in page.content
    wrong = client.post(reverse("wave-complete", args=[wave.name]), {"confirm": "v2.0"}, **hx("main"))
    assert wrong.status_code == 400 and b'id="id_confirm_error"' in wrong.content
    wave.refresh_from_db()
    assert wave.status == "active"
    done = client.post(reverse("wave-complete", args=[wave.name]), {"confirm": wave.name})
    assert done.status_code == 302
    wave.refresh_from_db()
    assert wave.status == "complete"
    again = client.post(reverse("wave-cancel", args=[wave.name]), {"confirm": wave.name})
    assert again.status_code == 400 and b"cannot be canceled" in again.content


@pytest.mark.django_db
def test_cancel_over_htmx(client, bob, fleet100, wave):
    response = login(client, bob).post(reverse("wave-cancel", args=[wave.name]), {"confirm": wave.name}, **hx("main"))
    assert response.status_code == 200 and response["HX-Redirect"] == reverse("wave-detail", args=[wave.name])
    wave.refresh_from_db()
    assert wave.status == "canceled"
    page = client.get(reverse("wave-detail", args=[wave.name]))
    assert b"canceled: no further device" in page.content and b"Held" in page.content


@pytest.mark.django_db
@pytest.mark.parametrize("user", ["carol", "dave"])
def test_complete_and_cancel_are_refused_for_qa_and_support(client, request, user, fleet100, wave):
    login(client, request.getfixturevalue(user))
    for name in ("wave-complete", "wave-cancel"):
        assert client.get(reverse(name, args=[wave.name])).status_code == 403
        assert client.post(reverse(name, args=[wave.name]), {"confirm": wave.name}).status_code == 403
        assert client.post(reverse(name, args=[wave.name]), {"confirm": wave.name}, **hx("main")).status_code == 403
    wave.refresh_from_db()
    assert wave.status == "active"


@pytest.mark.django_db
def test_status_offline_threshold_is_per_request(client, dave, fleet100, wave):
    from devices.models import Device

    stale = Device.objects.filter(is_production=True).order_by("name")[:10]
    Device.objects.filter(pk__in=[d.pk for d in stale]).update(last_seen=timezone.now() - timedelta(hours=10))
    login(client, dave)
    default = client.get(reverse("wave-detail", args=[wave.name]), **hx("wave-status")).content.decode()
    wide = client.get(reverse("wave-detail", args=[wave.name]), {"offline_threshold": 24}, **hx("wave-status")).content.decode()
    online = re.compile(r'<span class="n">(\d+)</span><span class="l">online</span>')
    assert int(online.search(default).group(1)) == 90
    assert int(online.search(wide).group(1)) == 100
    assert "offline_threshold=24" in wide  # the poll keeps the threshold
    bad = client.get(reverse("wave-detail", args=[wave.name]), {"offline_threshold": "-1"})
    assert bad.status_code == 200 and b'id="id_offline_threshold_error"' in bad.content
