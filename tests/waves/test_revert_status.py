"""Status of a revert: devices on the re-release shown apart from those still on the bad build, on
every door (selector, API, CSV, dashboard); the counts are the same as for any wave."""
import csv
import io

import pytest
from django.urls import reverse

from devices.models import Device
from tests.factory.test_api import as_user, tokens  # noqa: F401  (fixtures)
from tests.factory.test_views import login
from waves.status_table import wave_status
from waves.services import wave_complete, wave_revert, wave_rollout, wave_sign

from .conftest import TAG, make_wave, seed


def by_group(status):
    return {row["group"]: row for row in status["groups"]}


@pytest.fixture
def revert(factory, bob, builds, offline_key):
    """Devices went 41 -> 42 (bad); the revert re-releases 41 as 44 and canary took it."""
    seed(factory, groups={"canary": 5, "beta": 5}, ungrouped=2)
    wave_complete(wave=make_wave(factory, bob, offline_key, "v42", 42), actor=bob)
    production = Device.objects.filter(factory=factory, is_production=True)
    production.update(target_version=42)
    Device.objects.filter(pk__in=list(production.filter(group__name="beta").values_list("pk", flat=True)[:1])).update(target_version=41)
    wave = wave_sign(wave=wave_revert(factory=factory, actor=bob, name="back-to-41", tag=TAG, to_version=41, prune=[42]), actor=bob, key_archive=offline_key)
    wave_rollout(wave=wave, actor=bob, group="canary")
    Device.objects.filter(pk__in=list(production.filter(group__name="canary").values_list("pk", flat=True)[:3])).update(target_version=44)
    return wave


def test_status_counts_as_for_any_wave_and_shows_the_bad_build_apart(revert):
    status = wave_status(wave=revert)
    rows = by_group(status)
    assert revert.version == 44
    assert (rows["canary"]["on_wave"], rows["canary"]["older"], rows["canary"]["on_bad_build"], rows["canary"]["scheduled"]) == (3, 2, 2, 2)
    assert (rows["beta"]["older"], rows["beta"]["on_bad_build"]) == (5, 4)  # one beta device is on 41 itself
    assert status["totals"]["on_bad_build"] == 2 + 4 + 2 and status["totals"]["older"] == 2 + 5 + 2
    assert status["version_labels"] == {"44": "44 (build 41 re-released)", "42": "42 (bad build)", "41": "41 (same content)"}
    chips = {c["label"]: c["count"] for c in rows["canary"]["version_chips"]}
    assert chips == {"44 (build 41 re-released)": 3, "42 (bad build)": 2}


def test_a_wave_that_is_not_a_re_release_labels_plain_versions(factory, bob, builds, offline_key):
    seed(factory, groups={"canary": 2})
    wave = make_wave(factory, bob, offline_key, "v42", 42)
    status = wave_status(wave=wave)
    assert status["version_labels"] == {"41": "41", "42": "42"} and status["totals"]["on_bad_build"] == 0


def test_api_status_says_what_is_re_released_and_counts_the_bad_build(as_user, revert):
    body = as_user("dave").get("waves/back-to-41/status").json()
    assert (body["version"], body["rerelease_of"], body["build_version"]) == (44, 41, 41)
    assert body["version_labels"]["44"] == "44 (build 41 re-released)" and body["version_labels"]["42"] == "42 (bad build)"
    groups = {g["group"]: g for g in body["groups"]}
    assert groups["canary"]["on_bad_build"] == 2 and body["totals"]["on_bad_build"] == 8
    assert "version_chips" not in groups["canary"]


def test_csv_has_an_on_bad_build_column_for_a_revert(client, carol, revert):
    response = login(client, carol).get(reverse("wave-status-csv", args=[revert.name]))
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    header = rows[0]
    assert header[-1] == "on_bad_build"
    by_group = {row[0]: dict(zip(header, row)) for row in rows[1:]}
    assert (by_group["canary"]["on_wave_version"], by_group["canary"]["older"], by_group["canary"]["on_bad_build"]) == ("3", "2", "2")
    assert by_group["(Total)"]["on_bad_build"] == "8"


def test_wave_page_labels_the_re_release_and_the_bad_build(client, dave, revert):
    page = login(client, dave).get(reverse("wave-detail", args=[revert.name])).content.decode()
    assert "re-release of build 41" in page
    assert "On 44 (build 41 re-released)" in page and "On the bad build" in page
    assert "v42 (bad build): 2" in page and "v44 (build 41 re-released): 3" in page
