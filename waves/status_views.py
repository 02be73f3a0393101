"""Live status fragments (polled by htmx, redrawn with Plotly.react) and CSV exports, for a wave
and for the factory. The wave panel reads stored samples, so it costs the same at any fleet size."""
from django.conf import settings
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET

from factory import charts as factory_charts
from factory.auth import factory_view
from factory.downloads import csv_attachment
from factory.errors import ApplicationError
from factory.replica import replica_reads

from . import charts, selectors, status
from .models import Wave
from .states import STATE_COLORS, STATE_LABELS, STATES

def _wave_or_404(request, name):
    try:
        return selectors.wave_get(factory=request.factory, name=name)
    except ApplicationError:
        raise Http404(f"No wave named {name} in this factory.") from None


def _threshold(request):
    value = request.GET.get("offline_threshold", "").strip()
    return value or None


def _interval():
    return status.status_interval()


def _duration(seconds):
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min"


def _figure_list(figures, prefix):
    # (element id, json_script id, figure) in the order the panel shows them
    return {name: {"id": f"{prefix}-chart-{name}", "data_id": f"{prefix}-fig-{name}", "figure": figure} for name, figure in figures.items()}


@factory_view("view")
@require_GET
@replica_reads()
def wave_live_status(request, name):
    wave = _wave_or_404(request, name)
    live = status.wave_live_status(wave=wave)
    context = {
        "wave": wave,
        "live": live,
        "charts": _figure_list(charts.wave_figures(live), "wave"),
        "state_rows": [(state, STATE_LABELS[state], live["totals"].get(state, 0), STATE_COLORS[state]) for state in STATES],
        "group_rows": [(g["group"], g["total"], [g["states"].get(state, 0) for state in STATES], g["stuck"]) for g in live["groups"]],
        "stuck_after": _duration(settings.BREAKWATER_STATUS_STUCK_AFTER_MINUTES * 60),
        "interval": _interval(),
    }
    response = render(request, "waves/_live_status.html#wave-live", context)
    patch_vary_headers(response, ("HX-Request",))
    return response


@factory_view("view")
@require_GET
@replica_reads()
def wave_status_csv(request, name):
    wave = _wave_or_404(request, name)
    try:
        taken_at, rows = status.wave_status_csv_rows(wave=wave, offline_threshold_hours=_threshold(request))
    except ApplicationError as error:
        return HttpResponse(error.message, status=400, content_type="text/plain; charset=utf-8")
    return csv_attachment(rows, filename=f"{wave.name}-status-{taken_at:%Y%m%dT%H%M%SZ}.csv")


@factory_view("view")
@require_GET
@replica_reads()
def wave_status_history_csv(request, name):
    wave = _wave_or_404(request, name)
    return csv_attachment(status.wave_status_history_csv_rows(wave=wave), filename=f"{wave.name}-status-history.csv")


def _active_waves(factory):
    """Open waves of the factory with their current totals (`status.wave_current`: the latest
    sample, or computed now before the first one or after a change), as the wave's own live
    status shows them: a wave never reads "0 of 0" while it has devices."""
    out = []
    for wave in Wave.objects.filter(factory=factory, status=Wave.Status.ACTIVE).order_by("tag", "name"):
        sample = status.wave_current(wave=wave, totals_only=True)
        sampled = sample["sampled"]
        totals = sample["totals"]
        total = totals.get("total", 0)
        out.append(
            {
                "wave": wave,
                "taken_at": sample["taken_at"],
                "sampled": sampled,
                "total": total,
                "updated": totals.get("updated", 0),
                "failed": totals.get("failed", 0),
                "stuck": totals.get("stuck", 0),
                "percent": round(100 * totals.get("updated", 0) / total, 1) if total else 0,
            }
        )
    return out


@factory_view("view")
@require_GET
@replica_reads()
def factory_live_status(request):
    try:
        current = status.factory_status_cached(factory=request.factory, offline_threshold_hours=_threshold(request))
    except ApplicationError:
        # A threshold the status form already refused: the panel shows the default one.
        current = status.factory_status_cached(factory=request.factory)
    context = {
        "charts": _figure_list(factory_charts.factory_figures(current["rows"], factory_name=request.factory.name), "factory"),
        "active_waves": _active_waves(request.factory),
        "interval": max(_interval(), 15.0),
        "taken_at": current["taken_at"],
        "threshold": _threshold(request) or settings.BREAKWATER_OFFLINE_THRESHOLD_HOURS,
    }
    response = render(request, "factory/_live_status.html#factory-live", context)
    patch_vary_headers(response, ("HX-Request",))
    return response


@factory_view("view")
@require_GET
@replica_reads()
def factory_status_csv(request):
    try:
        rows = selectors.factory_status(factory=request.factory, offline_threshold_hours=_threshold(request))
    except ApplicationError as error:
        return HttpResponse(error.message, status=400, content_type="text/plain; charset=utf-8")
    return csv_attachment(status.factory_status_csv_rows(rows=rows), filename=f"{request.factory.name}-status-{timezone.now():%Y%m%dT%H%M%SZ}.csv")
