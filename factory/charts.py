"""Plotly figures of the factory status: pure functions from `waves.selectors.factory_status`
rows to figure dicts (with `uirevision`, so a refresh keeps the user's zoom)."""

VERSION_COLORS = ("#0b5cad", "#1f9d55", "#e0a030", "#6f5bd3", "#d64545", "#3aa6b9", "#8a6d3b", "#b35c9e", "#5b6577", "#9aa5b1")
FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#1b2230"}
# Plotly reads a subset of HTML in every text it draws (trace names, tick labels, hover text,
# annotations, titles): <a href>, <b>, <br>, <span style> and entities. Text that came from a
# device or a user is escaped to entities, which Plotly shows as the characters themselves.
PLOTLY_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def plotly_text(value):
    """Device or user text as Plotly shows it literally, never as markup or a link. Hover
    templates take such text through %{...} from the data, never concatenated into the template."""
    return str(value).translate(PLOTLY_ESCAPES)


def _label(row):
    return f"tag {plotly_text(row['tag'])} · {'production' if row['production'] else 'test'}"


def _config(filename):
    return {
        "displaylogo": False,
        "responsive": True,
        "modeBarButtonsToRemove": ["lasso2d", "select2d"],
        "toImageButtonOptions": {"format": "png", "filename": filename, "scale": 2},
    }


def _layout(uirevision, **extra):
    layout = {
        "uirevision": uirevision,
        "height": 320,
        "margin": {"l": 60, "r": 20, "t": 40, "b": 40},
        "font": FONT,
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        "hovermode": "closest",
        "showlegend": True,  # also with a single version, so the colour is named
        "barmode": "stack",
        "xaxis": {"type": "category", "automargin": True},
        "yaxis": {"title": {"text": "devices"}, "tickformat": ",d", "rangemode": "tozero"},
    }
    layout.update(extra)
    return layout


def _count_axis(largest):
    """Whole numbers of devices only, even when there are just a few."""
    axis = {"title": {"text": "devices"}, "tickformat": ",d", "rangemode": "tozero"}
    if largest <= 8:
        axis["dtick"] = 1
    return axis


def _empty(uirevision, filename):
    layout = _layout(uirevision, height=200, xaxis={"visible": False}, yaxis={"visible": False})
    layout["annotations"] = [{"text": "No devices have registered yet", "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "font": {"size": 14, "color": "#5b6577"}}]
    return {"data": [], "layout": layout, "config": _config(filename)}


def _version_key(version):
    return (version is None, -(version or 0))


def devices_per_tag_version(rows, *, uirevision, filename="factory-versions"):
    """Devices per tag (production and test apart), stacked by the version they run; the
    latest version of each tag is marked in the hover text.

    `rows`: factory_status rows: {"tag", "production", "latest_version", "versions": {version: n}}.
    """
    if not rows:
        return _empty(uirevision, filename)
    labels = [_label(r) for r in rows]
    versions = sorted({v for r in rows for v in r["versions"]}, key=_version_key)
    data = []
    for i, version in enumerate(versions):
        name = "no target" if version is None else f"v{version}"
        data.append(
            {
                "type": "bar",
                "name": name,
                "x": labels,
                "y": [r["versions"].get(version, 0) for r in rows],
                "customdata": ["latest" if r["latest_version"] is not None and r["latest_version"] == version else "" for r in rows],
                "marker": {"color": VERSION_COLORS[i % len(VERSION_COLORS)]},
                "hovertemplate": "%{x}: %{y:,} on %{fullData.name} %{customdata}<extra></extra>",
            }
        )
    return {"data": data, "layout": _layout(uirevision, yaxis=_count_axis(max(r["total"] for r in rows))), "config": _config(filename)}


def online_per_tag(rows, *, uirevision, filename="factory-online"):
    """Online and offline devices per tag (production and test apart)."""
    if not rows:
        return _empty(uirevision, filename)
    labels = [_label(r) for r in rows]
    data = [
        {"type": "bar", "name": "online", "x": labels, "y": [r["online"] for r in rows], "marker": {"color": "#1f9d55"}, "hovertemplate": "%{x}: %{y:,} online<extra></extra>"},
        {
            "type": "bar",
            "name": "offline",
            "x": labels,
            "y": [r["total"] - r["online"] for r in rows],
            "marker": {"color": "#7a8291"},
            "hovertemplate": "%{x}: %{y:,} offline<extra></extra>",
        },
    ]
    return {"data": data, "layout": _layout(uirevision, height=280, yaxis=_count_axis(max(r["total"] for r in rows))), "config": _config(filename)}


def factory_figures(rows, *, factory_name):
    key = f"factory-{factory_name}"
    return {
        "versions": devices_per_tag_version(rows, uirevision=f"{key}-versions", filename=f"{key}-versions"),
        "online": online_per_tag(rows, uirevision=f"{key}-online", filename=f"{key}-online"),
    }
