"""Bad builds on the dashboard: the CI builds page marks and unmarks them (release managers and
admins only), and every page a bad build appears on says so, with its reason escaped."""
import re

import pytest
from django.urls import reverse

from factory.builds import build_bad, build_mark_bad
from factory.models import AuditEntry
from tests.factory.test_views import hx, login
from waves.plans.services import plan_set
from waves.models import Wave
from waves.services import wave_complete

from .conftest import make_wave
from .test_plans import canary_beta_fleet

pytestmark = pytest.mark.django_db

HOSTILE = '<script>alert("x")</script> & "quoted"'
ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quoted&quot;"


def test_a_release_manager_marks_and_unmarks_a_build_on_the_builds_page(client, bob, factory, builds):
    login(client, bob)
    page = client.get(reverse("build-list"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Mark build 42 bad" in html and "CI builds" in html

    response = client.post(reverse("build-mark-bad", args=[42]), {"reason": HOSTILE}, **hx())
    assert response.status_code == 200 and response["HX-Redirect"] == reverse("build-list")
    assert build_bad(factory=factory, version=42).reason == HOSTILE
    html = client.get(reverse("build-list")).content.decode()
    assert "<script>alert" not in html and ESCAPED in html
    assert "Unmark build 42" in html and "bad build" in html

    response = client.post(reverse("build-unmark-bad", args=[42]), {"reason": "false alarm"})
    assert response.status_code == 302
    assert build_bad(factory=factory, version=42) is None
    assert list(AuditEntry.objects.filter(action__startswith="build.").values_list("action", flat=True).order_by("id")) == ["build.mark-bad", "build.unmark-bad"]


def test_refusals_show_on_the_builds_page_with_their_status(client, bob, factory, builds):
    login(client, bob)
    empty = client.post(reverse("build-mark-bad", args=[42]), {"reason": "  "})
    assert empty.status_code == 400 and build_bad(factory=factory, version=42) is None
    unknown = client.post(reverse("build-mark-bad", args=[99]), {"reason": "x"})
    assert unknown.status_code == 404
    build_mark_bad(factory=factory, actor=bob, version=42, reason="first")
    twice = client.post(reverse("build-mark-bad", args=[42]), {"reason": "second"})
    assert twice.status_code == 409 and b"already marked bad (first, by bob" in twice.content
    assert build_bad(factory=factory, version=42).reason == "first"


@pytest.mark.parametrize("who", ["carol", "dave"])
def test_other_roles_see_the_badge_but_no_action_and_get_403(client, bob, factory, builds, who, request):
    build_mark_bad(factory=factory, actor=bob, version=41, reason="kernel panic")
    login(client, request.getfixturevalue(who))
    html = client.get(reverse("build-list")).content.decode()
    assert "kernel panic" in html and "Mark build" not in html and "Unmark build" not in html
    assert client.post(reverse("build-mark-bad", args=[42]), {"reason": "x"}).status_code == 403
    assert client.post(reverse("build-unmark-bad", args=[41]), {"reason": "x"}).status_code == 403
    assert build_bad(factory=factory, version=42) is None and build_bad(factory=factory, version=41).reason == "kernel panic"


def test_the_wave_list_detail_plan_and_complete_pages_say_the_build_is_bad(client, bob, dave, factory, fleet100, offline_key):
    wave = make_wave(factory, bob, offline_key, name="v2", version=42)
    plan_set(wave=wave, actor=bob, phases=canary_beta_fleet())
    make_wave(factory, bob, offline_key, name="v3", version=43, tag="other", source_tag="production")
    build_mark_bad(factory=factory, actor=bob, version=42, reason=HOSTILE)
    login(client, dave)

    listing = client.get(reverse("wave-list")).content.decode()
    row = next(r for r in re.findall(r"<tr>.*?</tr>", listing, re.S) if ">v2<" in r)
    other = next(r for r in re.findall(r"<tr>.*?</tr>", listing, re.S) if ">v3<" in r)
    assert "bad build" in row and ESCAPED in row and "bad build" not in other
    for url in (reverse("wave-detail", args=["v2"]), reverse("plan-detail", args=["v2"])):
        html = client.get(url).content.decode()
        assert "Build 42 is marked bad" in html and ESCAPED in html and "<script>alert" not in html, url
        assert "cannot be rolled out further or completed" in html
    assert "Build 42 is marked bad" not in client.get(reverse("wave-detail", args=["v3"])).content.decode()

    login(client, bob)
    page = client.get(reverse("wave-complete", args=["v2"])).content.decode()
    assert "Build 42 is marked bad" in page
    refused = client.post(reverse("wave-complete", args=["v2"]), {"confirm": "v2"})
    assert refused.status_code == 400 and b"Build 42 is marked bad" in refused.content
    assert Wave.objects.get(name="v2").status == Wave.Status.ACTIVE


def test_the_create_form_shows_a_bad_build_disabled_with_its_reason(client, bob, factory, builds):
    build_mark_bad(factory=factory, actor=bob, version=43, reason=HOSTILE)
    login(client, bob)
    html = client.get(reverse("wave-create")).content.decode()
    option = re.search(r'<option value="43"[^>]*>[^<]*</option>', html).group(0)
    assert "disabled" in option and "marked bad" in option and "by bob" in option
    assert "&lt;script&gt;" in option
    assert "disabled" not in re.search(r'<option value="42"[^>]*>', html).group(0)
    # posted anyway: the service refuses, on the build field
    refused = client.post(reverse("wave-create"), {"name": "v43", "version": 43, "tag": "production", "action": "preview"})
    assert refused.status_code == 400 and b"Build 43 is marked bad" in refused.content
    assert not Wave.objects.exists()


def test_the_create_form_offers_only_builds_that_can_go_out_and_says_why_not(client, bob, factory, builds, offline_key):
    wave_complete(wave=make_wave(factory, bob, offline_key, name="v41", version=41), actor=bob)
    login(client, bob)
    html = client.get(reverse("wave-create")).content.decode()

    def option(version):
        return re.search(rf'<option value="{version}"[^>]*>[^<]*</option>', html).group(0)

    assert "disabled" in option(41) and "Version 41 is already in the production targets of tag production" in option(41)
    assert "disabled" in option(40) and "must be higher than tag production&#x27;s current production targets version 41" in option(40)
    assert "disabled" not in option(42) and "disabled" not in option(43)
    # posted anyway: the service refuses in the same words, nothing is created
    refused = client.post(reverse("wave-create"), {"name": "v40", "version": 40, "tag": "production", "action": "preview"})
    assert refused.status_code == 400 and b"must be higher than tag production" in refused.content
    assert not Wave.objects.filter(name="v40").exists()
