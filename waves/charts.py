"""Plotly figures of a wave's live status: pure functions from status data to figure dicts.

Each figure carries a `uirevision`, so `Plotly.react` with fresh data keeps the user's zoom and
hidden traces, and a `config` naming the PNG that Plotly's camera button saves.
"""
from datetime import timedelta, timezone as dt_timezone

from factory.charts import plotly_text
from factory.plurals import counted

from . import rereleases
from .states import STACK_ORDER, STATE_COLORS, STATE_LABELS

VERSION_COLORS = ("#0b5cad", "#e0a030", "#6f5bd3", "#d64545", "#3aa6b9", "#8a6d3b", "#b35c9e", "#5b6577", "#9aa5b1")
PHASE_COLOR = "#0f2742"
MAX_GROUPS = 40
FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#1b2230"}


def _time(value):
    """Plotly reads naive "YYYY-MM-DD HH:MM:SS" times; the axes say they are UTC."""
    return value.astimezone(dt_timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# A time axis spans at least this long: one sample alone would otherwise get a sub-second axis
# (Plotly pads a single point by a millisecond) and a line chart with nothing drawn on it.
MIN_TIME_WINDOW = timedelta(minutes=30)
PHASE_LABEL_MAX = 24


def _time_axis(times):
    """A date axis over `times` (datetimes), at least MIN_TIME_WINDOW wide, ending at the latest."""
    end, start = max(times), min(times)
    if end - start < MIN_TIME_WINDOW:
        start = end - MIN_TIME_WINDOW
    return {"type": "date", "title": {"text": "time (UTC)"}, "range": [_time(start), _time(end)]}


def _line_mode(series):
    # A line needs two points: with fewer, each sample is drawn as a marker.
    return "lines" if len(series) > 1 else "lines+markers"


def _short(label):
    return label if len(label) <= PHASE_LABEL_MAX else label[: PHASE_LABEL_MAX - 1] + "\u2026"


def _layout(uirevision, *, height=320, **extra):
    layout = {
        "uirevision": uirevision,
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 40, "b": 40},
        "font": FONT,
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        "hovermode": "x unified",
    }
    layout.update(extra)
    return layout


def _config(filename):
    return {
        "displaylogo": False,
        "responsive": True,
        "modeBarButtonsToRemove": ["lasso2d", "select2d"],
        "toImageButtonOptions": {"format": "png", "filename": filename, "scale": 2},
    }


def _count_axis(largest, **extra):
    """An axis of device counts: whole numbers only, even when there are just a few devices."""
    axis = {"tickformat": ",d", "rangemode": "tozero", **extra}
    if largest <= 8:
        axis["dtick"] = 1
    return axis


def _empty(uirevision, filename, message, height=220):
    layout = _layout(uirevision, height=height, hovermode=False)
    layout.update(
        {
            "xaxis": {"visible": False},
            "yaxis": {"visible": False},
            "annotations": [{"text": message, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "font": {"size": 14, "color": "#5b6577"}}],
        }
    )
    return {"data": [], "layout": layout, "config": _config(filename)}


def _shown_groups(groups, max_groups):
    shown = list(groups)[:max_groups]
    hidden = max(0, len(groups) - len(shown))
    return shown, hidden


def _phase_clusters(phases, series):
    """Phases too close to tell apart on the time axis (within 1/60 of it) share one marker."""
    times = [p["at"] for p in phases] + [point["taken_at"] for point in series]
    if not phases:
        return []
    gap = max(max(times) - min(times), MIN_TIME_WINDOW) / 60
    clusters = [[phases[0]]]
    for phase in phases[1:]:
        if phase["at"] - clusters[-1][0]["at"] <= gap:
            clusters[-1].append(phase)
        else:
            clusters.append([phase])
    return clusters


def progress(series, phases, *, uirevision, filename="wave-progress"):
    """Devices per state over time, stacked (updated at the bottom), each phase marked; devices
    not scheduled start hidden.

    `series`: [{"taken_at": datetime, "totals": {state: count}}], oldest first.
    `phases`: [{"at": datetime, "label": str, "kind": "rollout" | "complete" | "canceled"}].
    """
    if not series:
        return _empty(uirevision, filename, "No status sample yet")
    x = [_time(point["taken_at"]) for point in series]
    data = [
        {
            "type": "scatter",
            "mode": _line_mode(series),
            "stackgroup": "states",
            "name": STATE_LABELS[state],
            "x": x,
            "y": [point["totals"].get(state, 0) for point in series],
            "line": {"width": 0.5, "color": STATE_COLORS[state]},
            "fillcolor": STATE_COLORS[state],
            "hovertemplate": "%{y:,}",
            # Devices outside the wave would flatten its progress; one click on the legend shows them.
            **({"visible": "legendonly"} if state == "not_scheduled" else {}),
        }
        for state in STACK_ORDER
    ]
    shapes, annotations = [], []
    for cluster in _phase_clusters(phases, series):
        at = _time(cluster[0]["at"])
        color = "#b42318" if any(p.get("kind") == "canceled" for p in cluster) else PHASE_COLOR
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": at, "x1": at, "y0": 0, "y1": 1, "line": {"color": color, "width": 1, "dash": "dot"}})
        # Labels are cut to fit beside the marker; the whole text shows on hover.
        annotations.append(
            {
                "x": at, "y": 1, "xref": "x", "yref": "paper", "text": "<br>".join(plotly_text(_short(p["label"])) for p in cluster), "showarrow": False,
                "hovertext": "<br>".join(plotly_text(p["label"]) for p in cluster),
                "xanchor": "left", "yanchor": "top", "font": {"size": 10, "color": color}, "textangle": -90,
            }
        )
    layout = _layout(
        uirevision,
        height=340,
        shapes=shapes,
        annotations=annotations,
        xaxis=_time_axis([point["taken_at"] for point in series] + [p["at"] for p in phases]),
        yaxis=_count_axis(max(point["totals"].get("total", 0) - point["totals"].get("not_scheduled", 0) for point in series), title={"text": "devices"}),
    )
    return {"data": data, "layout": layout, "config": _config(filename)}


def group_progress(groups, *, uirevision, filename="wave-groups", max_groups=MAX_GROUPS):
    """One progress bar per group: the share of its devices in each state.

    `groups`: [{"group": name, "total": n, "states": {state: count}}] in display order.
    """
    shown, hidden = _shown_groups(groups, max_groups)
    if not shown:
        return _empty(uirevision, filename, "No production devices on this tag")
    names = [plotly_text(g["group"]) for g in shown]
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "name": STATE_LABELS[state],
            "y": names,
            "x": [g["states"].get(state, 0) for g in shown],
            "marker": {"color": STATE_COLORS[state]},
            "hovertemplate": "%{y}: %{x:,} " + STATE_LABELS[state] + "<extra></extra>",
        }
        for state in STACK_ORDER
    ]
    title = f"first {counted(len(shown), 'group')}; {hidden:,} more in the CSV export" if hidden else ""
    layout = _layout(
        uirevision,
        height=max(200, 90 + 26 * len(shown)),
        barmode="stack",
        barnorm="percent",
        hovermode="closest",
        margin={"l": 120, "r": 20, "t": 60 if title else 40, "b": 40},
        title={"text": title, "font": {"size": 11}} if title else None,
        xaxis={"title": {"text": "% of the group's devices"}, "range": [0, 100]},
        # a group named "2024" is a name, not a number on a linear axis
        yaxis={"autorange": "reversed", "automargin": True, "type": "category"},
    )
    if not title:
        del layout["title"]
    return {"data": data, "layout": layout, "config": _config(filename)}


def _version_key(version):
    return (version == "none", -int(version) if version != "none" else 0)


def version_distribution(groups, *, uirevision, filename="wave-versions", wave_version=None, labels=None, max_groups=MAX_GROUPS):
    """Devices per running version, per group, stacked (newest version first).

    `groups`: [{"group": name, "versions": {"42": n, "none": n}}]; `labels`: {"45": "45 (build 41
    re-released)"} for a re-release (waves.rereleases.version_labels).
    """
    shown, hidden = _shown_groups(groups, max_groups)
    if not shown:
        return _empty(uirevision, filename, "No production devices on this tag")
    names = [plotly_text(g["group"]) for g in shown]
    versions = sorted({v for g in shown for v in g["versions"]}, key=_version_key)
    data = []
    others = iter(VERSION_COLORS * (1 + len(versions) // len(VERSION_COLORS)))
    for version in versions:
        label = "no target" if version == "none" else f"v{plotly_text((labels or {}).get(version, version))}"
        color = next(others)
        if wave_version is not None and version == str(wave_version):
            # the wave's version in the "updated" colour of the other charts
            label, color = label + " (wave)", STATE_COLORS["updated"]
        data.append(
            {
                "type": "bar",
                "name": label,
                "x": names,
                "y": [g["versions"].get(version, 0) for g in shown],
                "marker": {"color": color},
                "hovertemplate": "%{x}: %{y:,} on %{fullData.name}<extra></extra>",
            }
        )
    layout = _layout(
        uirevision,
        barmode="stack",
        hovermode="closest",
        xaxis={"type": "category", "automargin": True},
        yaxis=_count_axis(max(sum(g["versions"].values()) for g in shown), title={"text": "devices"}),
    )
    if hidden:
        layout["title"] = {"text": f"first {counted(len(shown), 'group')}; {hidden:,} more in the CSV export", "font": {"size": 11}}
    return {"data": data, "layout": layout, "config": _config(filename)}


FAILURE_PANELS = (("reason", "by reason"), ("hardware_id", "by hardware ID"), ("version", "by starting version"))


def failures(breakdown, *, uirevision, filename="wave-failures"):
    """Failed devices by reason, by hardware ID and by the version they were on: three panels.

    `breakdown`: {"reason": {text: n}, "hardware_id": {hwid: n}, "version": {"41": n}}.
    """
    if not any(breakdown.get(kind) for kind, _ in FAILURE_PANELS):
        return _empty(uirevision, filename, "No failures reported", height=160)
    domains = ((0.72, 1.0), (0.38, 0.64), (0.0, 0.28))
    data, annotations, layout_axes = [], [], {}
    for i, ((kind, title), domain) in enumerate(zip(FAILURE_PANELS, domains), start=1):
        counts = breakdown.get(kind) or {}
        if kind == "version":
            items = sorted(counts.items(), key=lambda kv: _version_key(kv[0]))
            labels = ["no target" if k == "none" else f"v{plotly_text(k)}" for k, _ in items]
        else:
            items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            labels = [plotly_text(k) for k, _ in items]
        suffix = "" if i == 1 else str(i)
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": title,
                "y": labels,
                "x": [n for _, n in items],
                "xaxis": f"x{suffix}",
                "yaxis": f"y{suffix}",
                "marker": {"color": "#d64545"},
                "showlegend": False,
                "hovertemplate": "%{y}: %{x:,} failed<extra></extra>",
            }
        )
        layout_axes[f"xaxis{suffix}"] = _count_axis(max(counts.values(), default=0), anchor=f"y{suffix}", domain=[0, 1])
        layout_axes[f"yaxis{suffix}"] = {"anchor": f"x{suffix}", "domain": list(domain), "autorange": "reversed", "automargin": True, "type": "category"}
        annotations.append(
            {"text": f"<b>{title}</b>", "showarrow": False, "xref": "paper", "yref": "paper", "x": 0, "y": domain[1], "xanchor": "left", "yanchor": "bottom", "font": {"size": 11}}
        )
    layout = _layout(uirevision, height=420, hovermode="closest", annotations=annotations, margin={"l": 160, "r": 20, "t": 24, "b": 30}, **layout_axes)
    return {"data": data, "layout": layout, "config": _config(filename)}


def _duration_unit(seconds):
    if seconds < 120:
        return "seconds", 1
    if seconds < 3 * 3600:
        return "minutes", 60
    return "hours", 3600


def time_to_update(update_times, *, uirevision, filename="wave-time-to-update"):
    """p50 and p95 time from rollout to installed, per phase.

    `update_times`: [{"label", "count", "p50", "p95"}] in phase order (seconds).
    """
    phases = [p for p in update_times if p.get("count")]
    if not phases:
        return _empty(uirevision, filename, "No device has finished updating yet")
    unit, divisor = _duration_unit(max(p["p95"] for p in phases))
    labels = [plotly_text(p["label"]) for p in phases]
    counts = [p["count"] for p in phases]
    data = [
        {
            "type": "bar",
            "name": name,
            "x": labels,
            "y": [round(p[key] / divisor, 2) for p in phases],
            "customdata": counts,
            "marker": {"color": color},
            "hovertemplate": "%{x}: " + name + " %{y} " + unit + " (%{customdata:,} updated)<extra></extra>",
        }
        for key, name, color in (("p50", "p50", "#3d7fd1"), ("p95", "p95", "#0f2742"))
    ]
    layout = _layout(uirevision, barmode="group", hovermode="closest", xaxis={"type": "category", "automargin": True}, yaxis={"title": {"text": unit}, "rangemode": "tozero"})
    return {"data": data, "layout": layout, "config": _config(filename)}


def online_offline(series, *, uirevision, filename="wave-online"):
    """Online and offline devices on the wave's tag over time."""
    if not series:
        return _empty(uirevision, filename, "No status sample yet")
    x = [_time(point["taken_at"]) for point in series]
    online = [point["totals"].get("online", 0) for point in series]
    offline = [point["totals"].get("total", 0) - n for point, n in zip(series, online)]
    data = [
        {"type": "scatter", "mode": _line_mode(series), "stackgroup": "seen", "name": name, "x": x, "y": values, "line": {"width": 0.5, "color": color}, "fillcolor": color, "hovertemplate": "%{y:,}"}
        for name, values, color in (("online", online, "#1f9d55"), ("offline", offline, "#7a8291"))
    ]
    largest = max(point["totals"].get("total", 0) for point in series)
    layout = _layout(uirevision, height=260, xaxis=_time_axis([point["taken_at"] for point in series]), yaxis=_count_axis(largest, title={"text": "devices"}))
    return {"data": data, "layout": layout, "config": _config(filename)}


def wave_figures(live):
    """Every figure of the wave's live status panel, keyed by the element that shows it."""
    wave = live["wave"]
    key = f"wave-{wave.pk}"
    slug = f"wave-{wave.name}"
    return {
        "progress": progress(live["series"], live["phases"], uirevision=f"{key}-progress", filename=f"{slug}-progress"),
        "groups": group_progress(live["groups"], uirevision=f"{key}-groups", filename=f"{slug}-groups"),
        "versions": version_distribution(
            live["groups"], uirevision=f"{key}-versions", filename=f"{slug}-versions", wave_version=wave.version,
            labels=rereleases.version_labels({v for g in live["groups"] for v in g["versions"]}, wave),
        ),  # fmt: skip
        "failures": failures(live["failures"], uirevision=f"{key}-failures", filename=f"{slug}-failures"),
        "update_times": time_to_update(live["update_times"], uirevision=f"{key}-update-times", filename=f"{slug}-time-to-update"),
        "online": online_offline(live["series"], uirevision=f"{key}-online", filename=f"{slug}-online"),
    }
