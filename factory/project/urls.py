"""URL configuration: the dashboard pages of every app, device registration, and the REST API
under /api/v1/ (schema at /api/v1/openapi.json, docs at /api/v1/docs)."""
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from devices import registration as device_registration
from factory import build_views
from factory import views as factory_views
from factory.auth_views import LoginView
from factory.tuf import views as tuf_views
from waves import ci_target_views, device_pages, fleet_pages, status_views

from .api import api, api_not_found

# Says which limit a refused request broke (e.g. an upload over the size limit).
handler400 = "factory.uploads.bad_request"

dashboard = [
    path("status/", fleet_pages.factory_status, name="factory-status"),
    path("status/live/", status_views.factory_live_status, name="factory-live-status"),
    path("status.csv", status_views.factory_status_csv, name="factory-status-csv"),
    path("builds/", build_views.build_list, name="build-list"),
    path("builds/<int:version>/mark-bad/", build_views.build_bad_set, {"action": "mark"}, name="build-mark-bad"),
    path("builds/<int:version>/unmark-bad/", build_views.build_bad_set, {"action": "unmark"}, name="build-unmark-bad"),
    path("builds/<int:version>/tags/", ci_target_views.build_tags_set, name="build-tags"),
    path("builds/<int:version>/prune/", ci_target_views.build_prune, name="build-prune"),
    path("audit/", factory_views.audit_log, name="audit-log"),
    path("keys/", tuf_views.keys_page, name="keys"),
    path("keys/change/sign/", tuf_views.key_change_sign, name="key-change-sign"),
    path("keys/change/abandon/", tuf_views.key_change_abandon, name="key-change-abandon"),
    path("keys/root/renew/", tuf_views.root_renew, name="root-renew"),
    path("keys/roots/<str:channel>/<int:version>.root.json", tuf_views.root_download, name="root-download"),
    path("keys/online/<str:role>/rotate/", tuf_views.key_rotate_online, name="key-rotate-online"),
    path("keys/<str:keyid>/retire/", tuf_views.key_retire, name="key-retire"),
]

rest_api = [
    path("", api.urls),
    # [\s\S], not `.`: a path parameter holding a newline matches no route (their `.+` stops at
    # it) and would otherwise fall through to the dashboard's HTML 404 page.
    re_path(r"^(?P<rest>[\s\S]*)$", api_not_found),
]

urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", factory_views.home, name="home"),
    path("factory/switch/", factory_views.factory_switch, name="factory-switch"),
    path("", include(dashboard)),
    path("devices/register/", device_registration.register, name="device-register"),
    # lmp-device-register's DEVICE_API (FoundriesFactory's path, trailing slash included).
    path("ota/devices/", device_registration.lmp_register, name="device-register-lmp"),
    path("devices/", device_pages.device_list, name="device-list"),
    path("devices/<uuid:uuid>/", device_pages.device_detail, name="device-detail"),
    path("devices/", include("devices.urls")),
    path("waves/", include("waves.urls")),
    path("api/v1/", include(rest_api)),
]
