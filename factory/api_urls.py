"""The REST API, mounted at /api/v1/."""
from django.urls import path

urlpatterns: list = []
