"""Dashboard: a revert from the wave create page and from a completed wave's "Revert this
release", its preview, errors at their fields, roles, and the re-release badge."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from devices.models import Device
from factory.models import AuditEntry, RereleaseVersion
from tests.factory.test_views import hx, login
from waves.models import Wave
from waves.services import wave_complete, wave_revert

from .conftest import TAG, make_wave, seed

pytestmark = pytest.mark.django_db


def archive(data):
    return SimpleUploadedFile("targets.only.key.tgz", data, content_type="application/gzip")


@pytest.fixture
def bad_release(factory, bob, builds, offline_key):
    wave_complete(wave=make_wave(factory, bob, offline_key, "v41", 41), actor=bob)
    return wave_complete(wave=make_wave(factory, bob, offline_key, "v42", 42), actor=bob)


def test_create_page_links_to_the_revert_page_which_lists_production_and_ci_builds(client, bob, bad_release):
    login(client, bob)
    assert reverse("wave-revert").encode() in client.get(reverse("wave-create")).content
    page = client.get(reverse("wave-revert")).content.decode()
    assert "Build 41 (in production)" in page and "Build 42 (in production)" in page and "Build 40 (CI build)" in page
    assert "version 42" in page  # the bad build can be pruned


def test_a_completed_wave_offers_revert_this_release_prefilled_with_the_previous_build(client, bob, dave, bad_release):
    page = login(client, bob).get(reverse("wave-detail", args=["v42"])).content.decode()
    assert "Revert this release" in page
    url = f"{reverse('wave-revert')}?tag={TAG}&amp;to_version=41&amp;prune=42"
    assert url in page
    form = client.get(url.replace("&amp;", "&")).content.decode()
    assert '<option value="41" selected>Build 41 (in production)</option>' in form
    assert '<input type="checkbox" name="prune" value="42" id="id_prune_0" checked>' in form
    assert "Revert this release" not in login(client, dave).get(reverse("wave-detail", args=["v42"])).content.decode()


def test_preview_shows_the_re_release_and_creates_nothing(client, bob, factory, bad_release):
    login(client, bob)
    response = client.post(reverse("wave-revert"), {"name": "back", "tag": TAG, "to_version": 41, "prune": [42], "action": "preview"}, **hx("wave-revert"))
    assert response.status_code == 200 and b"<html" not in response.content
    html = response.content.decode()
    assert "44 (build 41 re-released" in html and "intel-corei7-64-lmp-44" in html and "re-release of build 41" in html
    assert not Wave.objects.filter(name="back").exists() and not RereleaseVersion.objects.exists()


def test_create_with_a_key_archive_activates_the_revert_and_the_pages_show_the_badge(client, bob, factory, bad_release, offline_key):
    login(client, bob)
    response = client.post(
        reverse("wave-revert"), {"name": "back-to-41", "tag": TAG, "to_version": 41, "prune": [42], "action": "create", "key_archive": archive(offline_key)}
    )
    assert response.status_code == 302 and response["Location"] == reverse("wave-detail", args=["back-to-41"])
    wave = Wave.objects.get(name="back-to-41")
    assert (wave.status, wave.version, wave.rerelease_of) == ("active", 44, 41)
    page = client.get(response["Location"]).content.decode()
    assert "re-release of build 41" in page and "build 41 re-released" in page
    assert "re-release of build 41" in client.get(reverse("wave-list")).content.decode()


def test_errors_show_at_their_fields_and_change_nothing(client, bob, factory, bad_release):
    login(client, bob)
    taken = client.post(reverse("wave-revert"), {"name": "v41", "tag": TAG, "to_version": 41, "action": "preview"})
    assert taken.status_code == 400 and b'id="id_name_error"' in taken.content
    unknown = client.post(reverse("wave-revert"), {"name": "b", "tag": TAG, "to_version": 99, "action": "preview"})
    assert unknown.status_code == 400 and b'id="id_to_version_error"' in unknown.content
    bad_key = client.post(reverse("wave-revert"), {"name": "b", "tag": TAG, "to_version": 41, "action": "create", "key_archive": archive(b"nope")})
    assert bad_key.status_code == 400 and b'id="id_key_archive_error"' in bad_key.content
    assert Wave.objects.count() == 2 and not RereleaseVersion.objects.exists()
    assert not AuditEntry.objects.filter(action="wave.revert").exists()


@pytest.mark.parametrize("user", ["carol", "dave"])
def test_roles_that_may_not_release_cannot_revert(client, bad_release, offline_key, request, user):
    login(client, request.getfixturevalue(user))
    assert client.get(reverse("wave-revert")).status_code == 403
    response = client.post(reverse("wave-revert"), {"name": "b", "tag": TAG, "to_version": 41, "action": "create", "key_archive": archive(offline_key)})
    assert response.status_code == 403
    assert Wave.objects.count() == 2 and not RereleaseVersion.objects.exists()


def test_device_pages_say_when_the_device_runs_a_re_release(client, dave, factory, bob, bad_release, offline_key):
    seed(factory, groups={"canary": 2})
    wave_revert(factory=factory, actor=bob, name="back", tag=TAG, to_version=41, key_archive=offline_key)
    device = Device.objects.filter(factory=factory).first()
    Device.objects.filter(pk=device.pk).update(target_version=44, target_name="intel-corei7-64-lmp-44")
    login(client, dave)
    assert "(version 44: build 41 re-released)" in client.get(reverse("device-detail", args=[device.uuid])).content.decode()
    assert "build 41 re-released</span>" in client.get(reverse("device-list")).content.decode()
