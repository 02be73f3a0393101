"""URL configuration: dashboard pages per app, the REST API under /api/v1/."""
from django.contrib.auth import views as auth_views
from django.urls import include, path

from devices import registration as device_registration

from . import views
from .auth_views import LoginView

# Says which limit a refused request broke (e.g. an upload over the size limit).
handler400 = "factory.uploads.bad_request"

urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.home, name="home"),
    path("factory/switch/", views.factory_switch, name="factory-switch"),
    path("", include("factory.dashboard_urls")),
    path("devices/register/", device_registration.register, name="device-register"),
    path("devices/", include("devices.urls")),
    path("waves/", include("waves.urls")),
    path("api/v1/", include("factory.api_urls")),
]
