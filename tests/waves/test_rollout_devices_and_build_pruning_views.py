"""A rollout's exact devices, paged (GET /waves/{wave}/rollouts/{id}/devices and the dashboard's
rollout page), and the builds page's tags-and-prune panel (release managers only; previews
change nothing; production's build is kept and said why)."""
import pytest
from django.urls import reverse

from devices.models import Device, DeviceGroup
from factory.models import AuditEntry, CiTarget
from tests.factory.test_api import as_user, assert_error, tokens  # noqa: F401 (fixtures)
from tests.factory.test_views import hx, login
from waves.services import wave_complete, wave_rollout

from .conftest import HWIDS, make_wave

pytestmark = pytest.mark.django_db


def build_names(factory, version):
    return set(CiTarget.objects.filter(factory=factory, version=version).values_list("name", flat=True))


# --- a rollout's devices ----------------------------------------------------------------------


def test_api_pages_a_rollouts_exact_devices_with_name_and_group(factory, bob, fleet100, wave, as_user):
    result = wave_rollout(wave=wave, actor=bob, group="beta", limit="7")
    full = wave_rollout(wave=wave, actor=bob, group="canary").rollout
    hostile = Device.objects.filter(group__name="canary").order_by("name").first()
    hostile.name = "<b>evil</b>"
    hostile.save(update_fields=["name"])
    dave = as_user("dave")

    path = f"waves/{wave.name}/rollouts/{result.rollout.id}/devices"
    first = dave.get(path, {"per_page": 5}).json()
    assert first["total"] == 7 and first["per_page"] == 5 and first["next"] == 2 and len(first["items"]) == 5
    second = dave.get(path, {"per_page": 5, "page": 2}).json()
    assert second["next"] is None
    listed = first["items"] + second["items"]
    assert {d["uuid"] for d in listed} == {d["uuid"] for d in result.devices}
    assert {d["group"] for d in listed} == {"beta"} and all(d["name"] for d in listed)
    assert dave.get(path).json()["per_page"] == 500  # fioctl's default page size

    canary = dave.get(f"waves/{wave.name}/rollouts/{full.id}/devices").json()
    assert canary["total"] == 5 and {d["group"] for d in canary["items"]} == {"canary"}
    assert "<b>evil</b>" in {d["name"] for d in canary["items"]}

    assert_error(dave.get(f"waves/{wave.name}/rollouts/999999/devices"), 404, "not_found")
    assert_error(dave.get(path, {"per_page": 1001}), 400)
    assert_error(dave.get(f"waves/nope/rollouts/{full.id}/devices"), 404)
    assert_error(as_user("eve", factory="acme").get(path), 403)


def test_wave_page_links_each_rollout_to_its_devices_page(client, dave, bob, fleet100, wave):
    partial = wave_rollout(wave=wave, actor=bob, limit="3")
    full = wave_rollout(wave=wave, actor=bob, group="canary").rollout
    group = DeviceGroup.objects.get(factory=wave.factory, name="canary")
    device = Device.objects.filter(group=group).order_by("name").first()
    device.name = '<script>alert("x")</script>'
    device.save(update_fields=["name"])

    login(client, dave)
    html = client.get(reverse("wave-detail", args=[wave.name])).content.decode()
    assert reverse("rollout-devices-page", args=[wave.name, partial.rollout.id]) in html

    page = client.get(reverse("rollout-devices-page", args=[wave.name, partial.rollout.id])).content.decode()
    for staged in partial.devices:
        assert staged["uuid"] in page
    assert "3 devices" in page

    page = client.get(reverse("rollout-devices-page", args=[wave.name, full.id])).content.decode()
    assert "5 devices" in page and "full-group rollout" in page and "canary" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    fragment = client.get(reverse("rollout-devices-page", args=[wave.name, full.id]), **hx("rollout-devices")).content.decode()
    assert fragment.lstrip().startswith('<section id="rollout-devices"')
    assert client.get(reverse("rollout-devices-page", args=[wave.name, 999999])).status_code == 404


# --- the builds page: tags and pruning ----------------------------------------------------------


def test_a_release_manager_tags_a_build_on_the_builds_page(client, bob, factory, builds):
    login(client, bob)
    html = client.get(reverse("build-list")).content.decode()
    assert "Set tags of build 42" in html and "Preview pruning build 42" in html

    response = client.post(reverse("build-tags", args=[42]), {"tags": "production, qa"}, **hx())
    assert response.status_code == 200 and response["HX-Redirect"] == reverse("build-list")
    assert {t.name: t.tags for t in CiTarget.objects.filter(version=42)} == {f"{h}-lmp-42": ["production", "qa"] for h in HWIDS}

    refused = client.post(reverse("build-tags", args=[42]), {"tags": "<b>bad tag</b>"})
    assert refused.status_code == 400 and "Not a tag" in refused.content.decode() and "<b>bad" not in refused.content.decode()
    assert CiTarget.objects.get(name=f"{HWIDS[0]}-lmp-42").tags == ["production", "qa"]
    assert AuditEntry.objects.filter(action="targets.tag").count() == 1


def test_pruning_on_the_builds_page_previews_then_prunes_and_keeps_production(client, bob, factory, builds, offline_key):
    wave_complete(wave=make_wave(factory, bob, offline_key, name="w41", version=41), actor=bob)
    login(client, bob)

    preview = client.post(reverse("build-prune", args=[42]), **hx())
    html = preview.content.decode()
    assert preview.status_code == 200 and "Pruning would take out" in html and "Prune build 42" in html
    assert build_names(factory, 42) == {f"{h}-lmp-42" for h in HWIDS}  # a preview changes nothing

    done = client.post(reverse("build-prune", args=[42]), {"confirm": "yes"}, **hx())
    assert done.status_code == 200 and done["HX-Redirect"] == reverse("build-list")
    assert build_names(factory, 42) == set()
    assert "Pruned 2 targets of build 42" in client.get(reverse("build-list")).content.decode()

    kept = client.post(reverse("build-prune", args=[41]), **hx()).content.decode()
    assert "Nothing of build 41 can be pruned" in kept and "in the production targets of tag production" in kept
    assert "Prune build 41" not in kept
    client.post(reverse("build-prune", args=[41]), {"confirm": "yes"})
    assert len(build_names(factory, 41)) == 2

    gone = client.post(reverse("build-prune", args=[42]), **hx())
    assert gone.status_code == 404


def test_qa_and_support_see_no_panel_and_cannot_tag_or_prune(client, carol, dave, factory, builds):
    for user in (carol, dave):
        login(client, user)
        assert "Set tags of build 42" not in client.get(reverse("build-list")).content.decode()
        assert client.post(reverse("build-tags", args=[42]), {"tags": "qa"}).status_code == 403
        assert client.post(reverse("build-prune", args=[42]), {"confirm": "yes"}).status_code == 403
    assert len(build_names(factory, 42)) == 2 and CiTarget.objects.get(name=f"{HWIDS[0]}-lmp-42").tags == ["production"]
