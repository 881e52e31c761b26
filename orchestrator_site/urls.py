from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView

from orchestrator_site.apidocs import ApiDocsView
from orchestrator_site.apis import HealthApi
from orchestrator_site.metrics import MetricsApi

api_v1: list[URLPattern | URLResolver] = [
    path("health", HealthApi.as_view(), name="health"),
    path("", include("killswitch.urls")),
    path("", include("agents.urls")),
    path("", include("taskqueue.urls")),
    path("", include("federation.peer_urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", ApiDocsView.as_view(url_name="schema"), name="api-docs"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", RedirectView.as_view(url="/dashboard/", permanent=False)),
    path("dashboard/", include("dashboard.urls")),
    path("api/v1/", include(api_v1)),
    path("federation/v1/", include("federation.urls")),
    path("metrics", MetricsApi.as_view(), name="metrics"),
]

handler400 = "orchestrator_site.errors.bad_request"
handler404 = "orchestrator_site.errors.not_found"
handler500 = "orchestrator_site.errors.server_error"
