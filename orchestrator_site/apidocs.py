"""``/api/v1/docs/``: Swagger UI from the hub's own static files, under a strict policy.

The page holds the user's session, so it runs no third-party script: Swagger
UI comes from drf-spectacular-sidecar through WhiteNoise (settings:
``SWAGGER_UI_DIST = "SIDECAR"``), and the split view loads its start-up script
from this same URL (``?script=``) instead of inline, so the Content-Security-Policy
below can allow scripts from the hub's own origin only.
"""

from typing import Any

from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework.request import Request
from rest_framework.response import Response

# Swagger UI sets inline style attributes and shows icons as data: URIs; it
# fetches the schema (and, for "Try it out", the API) from the same origin.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


class ApiDocsView(SpectacularSwaggerSplitView):
    @extend_schema(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # drf-spectacular leaves SpectacularSwaggerSplitView.get unannotated.
        response: Response = super().get(request, *args, **kwargs)  # type: ignore[no-untyped-call]
        response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response
