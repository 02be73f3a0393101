"""The factory status page: the fleet by tag and version, with what each wave has reached.

It reads waves (which wave each device is in), so it lives with them rather than in the factory
app below."""
from django.conf import settings
from django.core.cache import cache

from factory.auth import factory_view
from factory.replica import replica_reads
from factory.forms import StatusForm
from factory.selectors import status_cache_key
from factory.views import render_page

from . import expiry
from .selectors import factory_status as factory_status_rows


@factory_view("view")
@replica_reads()
def factory_status(request):
    form = StatusForm(request.GET)
    hours = form.cleaned_data["offline_threshold"] if form.is_valid() and form.cleaned_data["offline_threshold"] else None
    # Aggregating a million devices takes the database a few hundred milliseconds: viewers and
    # polls within one status interval share one computation.
    key, interval = status_cache_key("factory-status", request.factory, hours)
    rows = cache.get(key)
    if rows is None:
        rows = factory_status_rows(factory=request.factory, offline_threshold_hours=hours)
        cache.set(key, rows, interval * 2)
    return render_page(
        request,
        "factory/status.html",
        {
            "status": rows,
            "form": form,
            "threshold": hours or settings.BREAKWATER_OFFLINE_THRESHOLD_HOURS,
            "expiry_warnings": expiry.expiring_targets(factory=request.factory),
        },
        title="Factory status",
        section="status",
        fragments=("status-panel",),
    )
