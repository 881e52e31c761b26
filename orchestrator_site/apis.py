"""Hub-wide endpoints that belong to no single app."""

from django.conf import settings
from django.db import connection
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.selectors import live_agent_ids
from killswitch.selectors import hub_halt_get


class HealthApi(APIView):
    """Liveness and the few facts a dashboard banner needs; open to anyone."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(
        responses={
            200: inline_serializer(
                "Health",
                {
                    "status": serializers.CharField(),
                    "node": serializers.CharField(),
                    "database": serializers.CharField(),
                    "halted": serializers.BooleanField(),
                    "yolo_mode": serializers.BooleanField(),
                    "live_agents": serializers.IntegerField(),
                },
            )
        },
        operation_id="health",
    )
    def get(self, request: Request) -> Response:
        connection.ensure_connection()
        return Response(
            {
                "status": "ok",
                "node": settings.FLOTILLA_NODE_NAME,
                "database": connection.vendor,
                "halted": hub_halt_get().halted,
                "yolo_mode": getattr(settings, "YOLO_MODE", False),
                "live_agents": len(live_agent_ids()),
            }
        )
