"""The REST API, mounted at /api/v1/ (schema at /api/v1/openapi.json, docs at /api/v1/docs)."""
from django.http import JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from .api import api


@csrf_exempt  # else a POST, PATCH or DELETE to an unknown path gets the CSRF failure's HTML 403
def api_not_found(request, rest=""):
    # Unknown API paths answer in the API's error shape, not with the dashboard's HTML 404 page.
    return JsonResponse({"detail": f"no API endpoint at {request.path}", "code": "not_found"}, status=404)


urlpatterns = [
    path("", api.urls),
    # [\s\S], not `.`: a path parameter holding a newline matches no route (their `.+` stops at
    # it) and would otherwise fall through to the dashboard's HTML 404 page.
    re_path(r"^(?P<rest>[\s\S]*)$", api_not_found),
]
