"""The REST API, mounted at /api/v1/ (schema at /api/v1/openapi.json, docs at /api/v1/docs)."""
from django.http import JsonResponse
from django.urls import path, re_path

from .api import api


def api_not_found(request, rest=""):
    # Unknown API paths answer in the API's error shape, not with the dashboard's HTML 404 page.
    return JsonResponse({"detail": f"no API endpoint at {request.path}", "code": "not_found"}, status=404)


urlpatterns = [
    path("", api.urls),
    re_path(r"^(?P<rest>.*)$", api_not_found),
]
