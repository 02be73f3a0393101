"""Dashboard pages of the factory app: status, audit log, keys, tokens."""
from django.urls import path

from . import views

urlpatterns = [
    path("status/", views.factory_status, name="factory-status"),
    path("audit/", views.audit_log, name="audit-log"),
]
