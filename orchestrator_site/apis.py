"""Hub-wide endpoints that belong to no single app."""

import os
import time
from datetime import UTC, datetime
from importlib import metadata

from django.conf import settings
from django.db import connection
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.selectors import live_agent_ids
from killswitch.selectors import hub_halt_get


def hub_version() -> str:
    """The installed ``flotilla`` distribution's version (pyproject.toml)."""
    try:
        return metadata.version("flotilla")
    except metadata.PackageNotFoundError:
        return "unknown"


def _process_started() -> float:
    """When this process started, in seconds since the epoch.

    Read from the kernel (``/proc``) where there is one, so the answer does
    not depend on when this module happened to be imported.
    """
    try:
        with open("/proc/self/stat") as stat:
            # Field 22, counted after the parenthesised command name (which may hold spaces).
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


PROCESS_STARTED = _process_started()


class HealthApi(APIView):
    """Liveness and the few facts a dashboard banner needs; open to anyone."""

    permission_classes = [AllowAny]
    authentication_classes: list[type[BaseAuthentication]] = []

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
                    "version": serializers.CharField(),
                    "uptime": serializers.FloatField(help_text="seconds this process has run"),
                    "timestamp": serializers.DateTimeField(help_text="now, ISO 8601 UTC"),
                },
            )
        },
        operation_id="health",
    )
    def get(self, request: Request) -> Response:
        connection.ensure_connection()
        now = datetime.now(UTC)
        return Response(
            {
                "status": "ok",
                "node": settings.FLOTILLA_NODE_NAME,
                "database": connection.vendor,
                "halted": hub_halt_get().halted,
                "yolo_mode": getattr(settings, "YOLO_MODE", False),
                "live_agents": len(live_agent_ids()),
                "version": hub_version(),
                "uptime": round(max(0.0, now.timestamp() - PROCESS_STARTED), 3),
                "timestamp": now.isoformat().replace("+00:00", "Z"),
            }
        )
