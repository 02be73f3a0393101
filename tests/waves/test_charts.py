"""Chart builders are pure: known status data gives a known Plotly figure."""
import json
import re
from datetime import datetime, timedelta, timezone

from factory import charts as factory_charts
from waves import charts, rereleases
from waves.states import STATE_COLORS, STATES

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
CET = timezone(timedelta(hours=1))


def totals(**counts):
    base = {s: 0 for s in STATES}
    base.update(counts)
    return base


SERIES = [
    {"taken_at": T0, "totals": totals(scheduled=5, not_scheduled=95, total=100, online=90)},
    {"taken_at": T0 + timedelta(seconds=15), "totals": totals(updated=2, downloading=1, scheduled=2, not_scheduled=95, total=100, online=92)},
]


def test_progress_is_a_stacked_area_per_state_with_updated_at_the_bottom():
    fig = charts.progress(SERIES, [], uirevision="wave-7-progress", filename="wave-v2-progress")
    assert [t["name"] for t in fig["data"]] == [
        "updated", "installing", "downloading", "scheduled", "failed", "held after cancel", "offline", "not scheduled",
    ]
    assert fig["data"][0] == {
        "type": "scatter",
        "mode": "lines",
        "stackgroup": "states",
        "name": "updated",
        "x": ["2026-03-01 12:00:00", "2026-03-01 12:00:15"],
        "y": [0, 2],
        "line": {"width": 0.5, "color": "#1f9d55"},
        "fillcolor": "#1f9d55",
        "hovertemplate": "%{y:,}",
    }
    assert fig["data"][3]["y"] == [5, 2] and fig["data"][7]["y"] == [95, 95]
    assert fig["data"][7]["visible"] == "legendonly" and all("visible" not in t for t in fig["data"][:7])
    assert fig["layout"]["uirevision"] == "wave-7-progress"
    assert fig["layout"]["xaxis"]["type"] == "date" and fig["layout"]["shapes"] == []
    assert fig["config"]["toImageButtonOptions"] == {"format": "png", "filename": "wave-v2-progress", "scale": 2}
    json.dumps(fig)  # embeddable as it is


def test_progress_marks_each_phase_on_the_time_axis_in_utc():
    phases = [
        {"at": T0 + timedelta(seconds=5), "label": "#1 canary whole group", "kind": "rollout"},
        {"at": datetime(2026, 3, 1, 13, 10, 10, tzinfo=CET), "label": "canceled", "kind": "canceled"},
    ]
    layout = charts.progress(SERIES, phases, uirevision="u")["layout"]
    assert [(s["x0"], s["x1"], s["yref"], s["line"]["color"]) for s in layout["shapes"]] == [
        ("2026-03-01 12:00:05", "2026-03-01 12:00:05", "paper", "#0f2742"),
        ("2026-03-01 12:10:10", "2026-03-01 12:10:10", "paper", "#b42318"),
    ]
    assert [(a["x"], a["text"]) for a in layout["annotations"]] == [("2026-03-01 12:00:05", "#1 canary whole group"), ("2026-03-01 12:10:10", "canceled")]


def test_one_sample_gets_a_time_window_and_a_visible_point():
    """One sample alone: the axis spans the last 30 minutes (not Plotly's millisecond around the
    point) and each state is drawn as a marker, so the chart never looks broken."""
    one = SERIES[:1]
    for fig in (charts.progress(one, [], uirevision="u"), charts.online_offline(one, uirevision="u")):
        assert fig["layout"]["xaxis"]["range"] == ["2026-03-01 11:30:00", "2026-03-01 12:00:00"]
        assert {t["mode"] for t in fig["data"]} == {"lines+markers"}
    # A longer history keeps its own span, up to a phase marked after the last sample.
    later = {"at": T0 + timedelta(hours=2), "label": "complete", "kind": "complete"}
    long = [{"taken_at": T0 + timedelta(hours=h), "totals": totals(scheduled=1, total=1)} for h in (0, 1)]
    assert charts.progress(long, [later], uirevision="u")["layout"]["xaxis"]["range"] == ["2026-03-01 12:00:00", "2026-03-01 14:00:00"]


def test_a_long_phase_label_is_cut_to_fit_and_whole_on_hover():
    label = "#3 every device of group us-east-production-fleet"
    annotation = charts.progress(SERIES, [{"at": T0, "label": label, "kind": "rollout"}], uirevision="u")["layout"]["annotations"][0]
    assert annotation["text"] == label[:23] + "\u2026" and annotation["hovertext"] == label


def test_phases_too_close_to_tell_apart_share_one_marker():
    series = [{"taken_at": T0 + timedelta(minutes=m), "totals": totals(scheduled=1)} for m in (0, 60)]
    phases = [
        {"at": T0, "label": "#1 canary whole group", "kind": "rollout"},
        {"at": T0 + timedelta(seconds=30), "label": "#2 beta whole group", "kind": "rollout"},
        {"at": T0 + timedelta(minutes=30), "label": "#3 us-east --limit 50", "kind": "rollout"},
    ]
    layout = charts.progress(series, phases, uirevision="u")["layout"]
    assert [s["x0"] for s in layout["shapes"]] == ["2026-03-01 12:00:00", "2026-03-01 12:30:00"]
    assert [a["text"] for a in layout["annotations"]] == ["#1 canary whole group<br>#2 beta whole group", "#3 us-east --limit 50"]


def test_charts_without_data_say_so():
    fig = charts.progress([], [], uirevision="u")
    assert fig["data"] == [] and fig["layout"]["annotations"][0]["text"] == "No status sample yet"
    assert charts.group_progress([], uirevision="u")["layout"]["annotations"][0]["text"] == "No production devices on this tag"
    assert charts.failures({"reason": {}, "hardware_id": {}, "version": {}}, uirevision="u")["layout"]["annotations"][0]["text"] == "No failures reported"
    assert charts.time_to_update([{"label": "#1", "count": 0, "p50": None, "p95": None}], uirevision="u")["data"] == []
    assert factory_charts.devices_per_tag_version([], uirevision="u")["data"] == []


GROUPS = [
    {"group": "canary", "total": 5, "states": {"updated": 4, "failed": 1}, "versions": {"42": 4, "41": 1}},
    {"group": "beta", "total": 20, "states": {"scheduled": 20}, "versions": {"41": 18, "none": 2}},
    {"group": "(No Group)", "total": 3, "states": {"not_scheduled": 3}, "versions": {"43": 1, "41": 2}},
]


def test_group_progress_bars_are_shares_of_each_group_in_display_order():
    fig = charts.group_progress(GROUPS, uirevision="g")
    updated = fig["data"][0]
    assert updated["name"] == "updated" and updated["orientation"] == "h"
    assert updated["y"] == ["canary", "beta", "(No Group)"] and updated["x"] == [4, 0, 0]
    assert next(t for t in fig["data"] if t["name"] == "scheduled")["x"] == [0, 20, 0]
    layout = fig["layout"]
    assert layout["barmode"] == "stack" and layout["barnorm"] == "percent"
    assert layout["yaxis"]["autorange"] == "reversed" and "title" not in layout


def test_group_progress_shows_the_first_groups_of_a_large_fleet_and_says_so():
    many = [{"group": f"g{i:03d}", "total": 1, "states": {"scheduled": 1}, "versions": {"41": 1}} for i in range(100)]
    fig = charts.group_progress(many, uirevision="g", max_groups=40)
    assert len(fig["data"][0]["y"]) == 40 and fig["data"][0]["y"][-1] == "g039"
    assert fig["layout"]["title"]["text"] == "first 40 groups; 60 more in the CSV export"
    assert charts.version_distribution(many, uirevision="v", max_groups=40)["layout"]["title"]["text"].startswith("first 40 groups")


def test_version_distribution_stacks_versions_newest_first_and_names_the_wave():
    fig = charts.version_distribution(GROUPS, uirevision="v", wave_version=42)
    assert [(t["name"], t["y"]) for t in fig["data"]] == [
        ("v43", [0, 0, 1]),
        ("v42 (wave)", [4, 0, 0]),
        ("v41", [1, 18, 2]),
        ("no target", [0, 2, 0]),
    ]
    assert fig["data"][0]["x"] == ["canary", "beta", "(No Group)"] and fig["layout"]["barmode"] == "stack"
    assert fig["data"][1]["marker"]["color"] == STATE_COLORS["updated"]  # the wave's version stands out
    assert len({t["marker"]["color"] for t in fig["data"]}) == 4
    assert "dtick" not in fig["layout"]["yaxis"]  # 20 devices: Plotly picks the steps


def test_a_few_devices_are_counted_in_whole_steps():
    fig = charts.version_distribution(GROUPS[:1], uirevision="v")
    assert fig["layout"]["yaxis"]["dtick"] == 1 and fig["layout"]["yaxis"]["tickformat"] == ",d"
    # the progress chart's axis counts the wave's devices, those not scheduled start hidden
    assert charts.progress(SERIES[:1], [], uirevision="u")["layout"]["yaxis"]["dtick"] == 1
    many = [{"taken_at": T0, "totals": totals(scheduled=50, not_scheduled=50, total=100)}]
    assert "dtick" not in charts.progress(many, [], uirevision="u")["layout"]["yaxis"]


def test_failures_in_three_panels_by_reason_hardware_id_and_starting_version():
    fig = charts.failures(
        {"reason": {"checksum mismatch": 2, "no space left on device": 5}, "hardware_id": {"rpi4": 4, "intel": 3}, "version": {"40": 1, "41": 6}},
        uirevision="f",
    )
    reason, hwid, version = fig["data"]
    assert (reason["y"], reason["x"], reason["xaxis"], reason["yaxis"]) == (["no space left on device", "checksum mismatch"], [5, 2], "x", "y")
    assert (hwid["y"], hwid["x"], hwid["xaxis"], hwid["yaxis"]) == (["rpi4", "intel"], [4, 3], "x2", "y2")
    assert (version["y"], version["x"], version["yaxis"]) == (["v41", "v40"], [6, 1], "y3")
    layout = fig["layout"]
    assert layout["yaxis2"]["anchor"] == "x2" and layout["xaxis3"]["anchor"] == "y3"
    assert layout["xaxis"]["dtick"] == 1 and layout["xaxis3"]["dtick"] == 1
    domains = [layout[k]["domain"] for k in ("yaxis", "yaxis2", "yaxis3")]
    assert all(a[0] > b[1] for a, b in zip(domains, domains[1:]))  # panels stacked, not overlapping
    assert [a["text"] for a in layout["annotations"]] == ["<b>by reason</b>", "<b>by hardware ID</b>", "<b>by starting version</b>"]


def test_time_to_update_per_phase_in_a_readable_unit():
    phases = [
        {"label": "#1 canary whole group", "count": 5, "p50": 300.0, "p95": 1800.0},
        {"label": "#2 fleet --limit 10", "count": 0, "p50": None, "p95": None},
        {"label": "#3 beta", "count": 20, "p50": 600.0, "p95": 5400.0},
    ]
    fig = charts.time_to_update(phases, uirevision="t")
    p50, p95 = fig["data"]
    assert p50["x"] == ["#1 canary whole group", "#3 beta"] and p50["y"] == [5.0, 10.0] and p95["y"] == [30.0, 90.0]
    assert p50["customdata"] == [5, 20] and fig["layout"]["yaxis"]["title"]["text"] == "minutes"
    assert fig["layout"]["barmode"] == "group"
    quick = charts.time_to_update([{"label": "#1", "count": 2, "p50": 12.0, "p95": 40.0}], uirevision="t")
    assert quick["data"][0]["y"] == [12.0] and quick["layout"]["yaxis"]["title"]["text"] == "seconds"
    slow = charts.time_to_update([{"label": "#1", "count": 2, "p50": 7200.0, "p95": 36000.0}], uirevision="t")
    assert slow["data"][1]["y"] == [10.0] and slow["layout"]["yaxis"]["title"]["text"] == "hours"


def test_online_and_offline_over_time():
    fig = charts.online_offline(SERIES, uirevision="o")
    assert [(t["name"], t["y"]) for t in fig["data"]] == [("online", [90, 92]), ("offline", [10, 8])]
    assert fig["data"][0]["stackgroup"] == "seen"


class FakeWave:
    pk, name, version, rerelease_of = 7, "v2.0", 42, None


def test_a_revert_labels_its_version_and_the_bad_build_in_the_version_chart():
    revert = FakeWave()
    revert.version, revert.rerelease_of = 45, 41
    groups = [{"group": "canary", "versions": {"45": 2, "42": 3, "41": 1, "none": 1}}]
    labels = rereleases.version_labels(groups[0]["versions"], revert)
    figure = charts.version_distribution(groups, uirevision="r", wave_version=45, labels=labels)
    names = [trace["name"] for trace in figure["data"]]
    assert names == ["v45 (build 41 re-released) (wave)", "v42 (bad build)", "v41 (same content)", "no target"]


def test_wave_figures_have_one_uirevision_per_chart_and_wave():
    live = {"wave": FakeWave(), "series": SERIES, "phases": [], "groups": GROUPS, "failures": {"reason": {}, "hardware_id": {}, "version": {}}, "update_times": []}
    figs = charts.wave_figures(live)
    assert list(figs) == ["progress", "groups", "versions", "failures", "update_times", "online"]
    revisions = [f["layout"]["uirevision"] for f in figs.values()]
    assert len(set(revisions)) == 6 and all(r.startswith("wave-7-") for r in revisions)
    assert figs["progress"]["config"]["toImageButtonOptions"]["filename"] == "wave-v2.0-progress"
    assert figs == charts.wave_figures(live)  # the same data always draws the same figures


FACTORY_ROWS = [
    {"tag": "production", "production": True, "latest_version": 42, "total": 100, "online": 90, "on_latest": 60, "orphan": 0, "versions": {42: 60, 41: 40}},
    {"tag": "production", "production": False, "latest_version": 43, "total": 12, "online": 12, "on_latest": 10, "orphan": 0, "versions": {43: 10, None: 2}},
]


def test_factory_devices_per_tag_and_version():
    fig = factory_charts.devices_per_tag_version(FACTORY_ROWS, uirevision="factory-acme-versions")
    assert [(t["name"], t["x"], t["y"], t["customdata"]) for t in fig["data"]] == [
        ("v43", ["tag production · production", "tag production · test"], [0, 10], ["", "latest"]),
        ("v42", ["tag production · production", "tag production · test"], [60, 0], ["latest", ""]),
        ("v41", ["tag production · production", "tag production · test"], [40, 0], ["", ""]),
        ("no target", ["tag production · production", "tag production · test"], [0, 2], ["", ""]),
    ]
    assert fig["layout"]["barmode"] == "stack" and fig["layout"]["uirevision"] == "factory-acme-versions"


def test_factory_online_and_offline_per_tag():
    fig = factory_charts.online_per_tag(FACTORY_ROWS, uirevision="o")
    assert [(t["name"], t["y"]) for t in fig["data"]] == [("online", [90, 12]), ("offline", [10, 0])]
    figs = factory_charts.factory_figures(FACTORY_ROWS, factory_name="acme")
    assert figs["versions"]["config"]["toImageButtonOptions"]["filename"] == "factory-acme-versions"
    json.dumps(figs)


# --- device and user text is shown literally ----------------------------------------------------

HOSTILE = '<a href="https://evil.example/">x</a><b>bold</b>&lt;i&gt;'
ESCAPED = '&lt;a href="https://evil.example/"&gt;x&lt;/a&gt;&lt;b&gt;bold&lt;/b&gt;&amp;lt;i&amp;gt;'
# The markup the builders themselves write; Plotly would read any other tag (its split is <[^<>]*>).
OWN_TAGS = {"<br>", "<b>", "</b>", "<extra>", "</extra>"}


def _texts(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "config":
                yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, str):
        yield value


def _live_tags(figure):
    return {tag for text in _texts(figure) for tag in re.findall(r"<[^<>]*>", text)} - OWN_TAGS


def test_plotly_text_escapes_markup_and_entities_and_keeps_plain_text():
    assert factory_charts.plotly_text(HOSTILE) == ESCAPED
    assert factory_charts.plotly_text("no space left on device (50%)") == "no space left on device (50%)"


def test_figures_hold_no_live_markup_from_device_or_user_text():
    hostile_groups = [
        {"group": HOSTILE, "total": 2, "states": {"failed": 2}, "versions": {"41": 2}},
        {"group": "<b>beta</b>", "total": 1, "states": {"scheduled": 1}, "versions": {"42": 1}},
    ]
    phases = [{"at": T0, "label": f"#1 {HOSTILE} whole group", "kind": "rollout"}]
    live = {
        "wave": FakeWave(),
        "series": SERIES,
        "phases": phases,
        "groups": hostile_groups,
        "failures": {"reason": {HOSTILE: 2}, "hardware_id": {"<span style='font-size:90px'>rpi</span>": 2}, "version": {"41": 2}},
        "update_times": [{"label": f"#1 {HOSTILE} whole group", "count": 1, "p50": 10.0, "p95": 20.0}],
    }
    figures = charts.wave_figures(live)
    rows = [{**FACTORY_ROWS[0], "tag": HOSTILE}]
    figures.update({f"factory-{k}": v for k, v in factory_charts.factory_figures(rows, factory_name="acme").items()})
    for name, figure in figures.items():
        assert _live_tags(figure) == set(), name
    failures = figures["failures"]
    assert failures["data"][0]["y"] == [ESCAPED] and failures["data"][1]["y"] == ["&lt;span style='font-size:90px'&gt;rpi&lt;/span&gt;"]
    assert figures["groups"]["data"][0]["y"] == [ESCAPED, "&lt;b&gt;beta&lt;/b&gt;"]
    annotation = figures["progress"]["layout"]["annotations"][0]
    assert annotation["hovertext"] == f"#1 {ESCAPED} whole group"
    # Cut before escaping, so the cut never splits an entity.
    assert annotation["text"] == factory_charts.plotly_text(f"#1 {HOSTILE}"[:23] + "\u2026")
    assert figures["factory-versions"]["data"][0]["x"] == [f"tag {ESCAPED} · production"]

