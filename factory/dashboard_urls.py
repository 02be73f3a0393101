"""Dashboard pages of the factory app: status, audit log, keys, tokens."""
from django.urls import path

from waves import status_views

from . import views

urlpatterns = [
    path("status/", views.factory_status, name="factory-status"),
    path("status/live/", status_views.factory_live_status, name="factory-live-status"),
    path("status.csv", status_views.factory_status_csv, name="factory-status-csv"),
    path("audit/", views.audit_log, name="audit-log"),
]
