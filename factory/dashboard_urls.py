"""Dashboard pages of the factory app: status, audit log, keys, tokens."""
from django.urls import path

from waves import status_views

from . import views

urlpatterns = [
    path("status/", views.factory_status, name="factory-status"),
    path("status/live/", status_views.factory_live_status, name="factory-live-status"),
    path("status.csv", status_views.factory_status_csv, name="factory-status-csv"),
    path("audit/", views.audit_log, name="audit-log"),
    path("keys/", views.keys_page, name="keys"),
    path("keys/change/sign/", views.key_change_sign, name="key-change-sign"),
    path("keys/change/abandon/", views.key_change_abandon, name="key-change-abandon"),
    path("keys/root/renew/", views.root_renew, name="root-renew"),
    path("keys/<str:keyid>/retire/", views.key_retire, name="key-retire"),
]
