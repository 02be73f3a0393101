"""The live status panels (wave and factory), their CSV exports, and the same in the API."""
import csv
import io
import json
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from devices.models import Device
from tests.factory.test_api import ApiClient, assert_error, token_of
from tests.factory.test_views import hx, login
from waves import status
from waves.models import Wave
from waves.services import wave_cancel, wave_rollout
from waves.states import STATES

from .conftest import seed
from .test_status_aggregation import check_in, report


def figures(response):
    """The figure dicts the fragment embeds with json_script, by element id."""
    html = response.content.decode()
    return {m.group(1): json.loads(m.group(2)) for m in re.finditer(r'<script id="([\w-]+)" type="application/json">(.*?)</script>', html, re.S)}


def rows_of(response):
    return list(csv.reader(io.StringIO(response.content.decode())))


@pytest.fixture
def rolled(factory, bob, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    canary = list(Device.objects.filter(group__name="canary").order_by("name"))
    report(canary[0], "install-completed", success=True)
    check_in(canary[0], version=42)
    report(canary[1], "install-completed", success=False, detail="no space left on device")
    return wave


# --- the wave panel -------------------------------------------------------------------------------


def test_wave_panel_shows_states_and_charts_from_the_latest_sample(client, dave, rolled):
    status.wave_status_sample_take(wave=rolled)
    response = login(client, dave).get(reverse("wave-live-status", args=[rolled.name]), **hx("wave-live"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and 'id="wave-live"' in html and "Sampled at" in html
    assert re.search(r'data-state="updated".*?<span class="n">1</span>', html, re.S)
    assert re.search(r'data-state="failed".*?<span class="n">1</span>', html, re.S)
    assert re.search(r'data-state="scheduled".*?<span class="n">3</span>', html, re.S)
    figs = figures(response)
    assert set(figs) == {f"wave-fig-{n}" for n in ("progress", "groups", "versions", "failures", "update_times", "online")}
    # every chart keeps the user's zoom across refreshes and saves as PNG from Plotly's own button
    assert all(f["layout"]["uirevision"] and f["config"]["toImageButtonOptions"]["format"] == "png" for f in figs.values())
    updated = next(t for t in figs["wave-fig-progress"]["data"] if t["name"] == "updated")
    assert updated["y"][-1] == 1
    assert figs["wave-fig-failures"]["data"][0]["y"] == ["no space left on device"]
    # chart elements are kept by htmx across refreshes, so Plotly.react redraws the same plot
    assert html.count('hx-preserve="true"') == 6
    assert re.search(r'hx-trigger="every 15s \[document.visibilityState', html)


def test_wave_panel_before_the_first_sample_computes_the_status_now(client, dave, rolled):
    response = login(client, dave).get(reverse("wave-live-status", args=[rolled.name]), **hx("wave-live"))
    assert response.status_code == 200 and b"Computed at" in response.content
    assert figures(response)["wave-fig-progress"]["data"][0]["y"] == [1]


def test_wave_panel_stops_polling_a_wave_no_longer_sampled(client, dave, bob, rolled):
    wave_cancel(wave=rolled, actor=bob)
    Wave.objects.filter(pk=rolled.pk).update(finished_at=timezone.now() - timedelta(days=3))
    response = login(client, dave).get(reverse("wave-live-status", args=[rolled.name]), **hx("wave-live"))
    assert b"no longer sampled" not in response.content  # not sampled ever: computed now
    assert b"every " not in response.content.split(b'hx-trigger="')[1].split(b'"')[0]


def test_wave_panel_escapes_names_from_users(client, dave, factory, bob, fleet100, wave):
    seed(factory, groups={"<script>alert(1)</script>": 2})
    response = login(client, dave).get(reverse("wave-live-status", args=[wave.name]))
    html = response.content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # inside the figures' JSON: escaped for Plotly (&lt;), then for the <script> element (\u0026)
    assert "\\u0026lt;script\\u0026gt;alert(1)" in html and "\\u003Cscript" not in html


def test_wave_panel_of_another_factory_is_not_found(client, eve, rolled):
    assert login(client, eve).get(reverse("wave-live-status", args=[rolled.name])).status_code == 404


def test_wave_panel_needs_a_signed_in_user(client, rolled):
    response = client.get(reverse("wave-live-status", args=[rolled.name]))
    assert response.status_code == 302 and reverse("login") in response["Location"]


def test_wave_page_includes_the_panel_and_loads_plotly_only_there(client, dave, rolled):
    page = login(client, dave).get(reverse("wave-detail", args=[rolled.name])).content.decode()
    assert 'id="wave-live"' in page and 'hx-trigger="load, every 15s' in page
    assert "vendor/plotly.min.js" in page
    assert "vendor/plotly.min.js" not in client.get(reverse("wave-list")).content.decode()
    # navigating to the page through htmx loads plotly.js once, then app.js draws the charts
    swapped = client.get(reverse("wave-detail", args=[rolled.name]), **hx("main")).content.decode()
    assert "breakwater:plotly-ready" in swapped and '<script src="/static/vendor/plotly.min.js">' not in swapped
    # plotly.js never blocks the page: it is fetched after the load event and the first paint, on
    # a full page too (tests/e2e/test_live_status.py watches the order in Chromium).
    assert '<script src="/static/vendor/plotly.min.js">' not in page and 'addEventListener("load", afterPaint)' in page


# --- CSV exports ------------------------------------------------------------------------------------


def test_wave_status_csv_per_group_with_a_total_row(client, carol, rolled):
    response = login(client, carol).get(reverse("wave-status-csv", args=[rolled.name]))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert f'filename="{rolled.name}-status-' in response["Content-Disposition"]
    rows = rows_of(response)
    header = rows[0]
    assert header[:6] == ["group", "total", "online", "on_wave_version", "newer", "older"]
    by_group = {row[0]: dict(zip(header, row)) for row in rows[1:]}
    assert list(by_group) == ["canary", "beta", "(No Group)", "(Total)"]
    assert by_group["canary"] | {"rollout_time": ""} == {
        "group": "canary", "total": "5", "online": "5", "on_wave_version": "1", "newer": "0", "older": "4",
        "not_scheduled": "0", "scheduled": "3", "downloading": "0", "installing": "0", "updated": "1", "failed": "1", "held": "0",
        "offline": "0", "stuck": "0", "rollout_time": "",
    }
    assert by_group["(Total)"]["total"] == "100" and by_group["(Total)"]["not_scheduled"] == "95"


def test_csv_cells_that_look_like_formulas_are_neutralised(client, dave, factory, bob, fleet100, wave):
    seed(factory, groups={"=HYPERLINK(1)": 1})
    rows = rows_of(login(client, dave).get(reverse("wave-status-csv", args=[wave.name])))
    assert "'=HYPERLINK(1)" in [row[0] for row in rows]


def test_bad_offline_threshold_in_a_csv_export_is_a_clear_400(client, dave, rolled):
    response = login(client, dave).get(reverse("wave-status-csv", args=[rolled.name]), {"offline_threshold": "soon"})
    assert response.status_code == 400 and b"Offline threshold" in response.content


def test_wave_status_history_csv_lists_every_sample(client, dave, rolled):
    bucket = status.status_bucket()
    status.wave_status_sample_take(wave=rolled, bucket=bucket - 1)
    status.wave_status_sample_take(wave=rolled, bucket=bucket)
    rows = rows_of(login(client, dave).get(reverse("wave-status-history-csv", args=[rolled.name])))
    assert rows[0][:4] == ["taken_at", "total", "online", "not_scheduled"] and len(rows) == 3
    assert rows[1][1] == "100"


# --- the factory panel ---------------------------------------------------------------------------


def test_factory_panel_charts_devices_per_tag_and_version(client, dave, rolled):
    status.wave_status_sample_take(wave=rolled)
    response = login(client, dave).get(reverse("factory-live-status"), **hx("factory-live"))
    assert response.status_code == 200
    figs = figures(response)
    versions = figs["factory-fig-versions"]
    assert versions["data"][0]["x"] == ["tag production · production", "tag production · test"]
    assert {t["name"]: t["y"] for t in versions["data"]} == {"v42": [1, 0], "v41": [99, 10]}
    assert versions["layout"]["uirevision"] == "factory-acme-versions"
    html = response.content.decode()
    assert rolled.name in html and "1 of 100 (1.0%)" in html  # the active wave's progress


def test_factory_page_includes_the_panel(client, dave, rolled):
    page = login(client, dave).get(reverse("factory-status")).content.decode()
    assert 'id="factory-live"' in page and "vendor/plotly.min.js" in page


def test_factory_status_csv(client, dave, rolled):
    rows = rows_of(login(client, dave).get(reverse("factory-status-csv")))
    assert rows[0] == ["tag", "kind", "latest_version", "devices", "on_latest", "online", "on_orphan_targets", "version", "devices_on_version"]
    lines = {(r[1], r[7]): r for r in rows[1:]}
    assert lines[("production", "42")][8] == "1" and lines[("production", "41")][8] == "99"
    assert lines[("test", "41")][3] == "10"


# --- API -------------------------------------------------------------------------------------------


@pytest.fixture
def api(client, factory, dave, eve, other_factory):
    return {"dave": ApiClient(client, token_of(dave, factory)), "eve": ApiClient(client, token_of(eve, other_factory))}


def test_api_wave_status_csv_and_history(api, rolled):
    response = api["dave"].get(f"waves/{rolled.name}/status.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert rows_of(response)[-1][:2] == ["(Total)", "100"]
    status.wave_status_sample_take(wave=rolled)
    history = api["dave"].get(f"waves/{rolled.name}/status/history.csv")
    assert history.status_code == 200 and len(rows_of(history)) == 2


def test_api_live_status_json(api, rolled):
    status.wave_status_sample_take(wave=rolled)
    body = api["dave"].get(f"waves/{rolled.name}/status/live").json()
    assert body["sampled"] is True and body["followed"] is True
    assert body["states"] == list(STATES)
    assert body["totals"]["updated"] == 1 and body["totals"]["failed"] == 1
    assert [g["group"] for g in body["groups"]] == ["canary", "beta", "(No Group)"]
    assert body["groups"][0]["failures"]["reason"] == {"no space left on device": 1}
    assert body["update_times"][0]["label"] == "#1 canary whole group" and body["update_times"][0]["count"] == 1
    assert len(body["series"]) == 1


def test_api_factory_status_csv(api, rolled):
    response = api["dave"].get("status.csv", {"offline_threshold": 2})
    assert response.status_code == 200 and rows_of(response)[1][0] == "production"


def test_api_status_exports_are_scoped_and_validated(api, client, rolled):
    assert_error(api["dave"].get("waves/nope/status.csv"), 404, "not_found")
    assert_error(api["dave"].get(f"waves/{rolled.name}/status.csv", {"offline_threshold": 0}), 400, "invalid")
    assert_error(ApiClient(client, api["eve"].token).get(f"waves/{rolled.name}/status/live"), 403, "forbidden")
    assert_error(ApiClient(client).get(f"waves/{rolled.name}/status.csv"), 401, "unauthenticated")
