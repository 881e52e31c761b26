"""Prometheus metrics at /metrics, computed from the database at scrape time.

A hub is several web and worker processes on several machines, so nothing
here lives in process memory: every value is read from the shared database
when Prometheus scrapes, and any web process answers the same. Gauges are
counts of rows; counters and histograms are counts over rows that are never
updated (gate runs, audit events) or over timestamps that never change once
set (an agent's creation and first start), so they only grow, as Prometheus
expects. This module belongs to the wiring layer, which may read every app.
See docs/scaling.md.
"""

import hmac
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, FloatField, Q, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request
from rest_framework.views import APIView

from agents.models import Agent, AgentState
from audit.models import AuditEvent
from gates.models import GateRun

SPAWN_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
KILL_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class FlotillaCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield self._agents()
        yield self._spawn_latency()
        yield self._kill_latency()
        yield self._gate_runs()
        yield self._federation_rejections()
        yield from self._queue_depth()

    def _agents(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily("flotilla_agents", "Agents by state.", labels=["state"])
        counts = dict(Agent.objects.values_list("state").annotate(n=Count("id")).order_by())
        for state in AgentState.values:
            family.add_metric([state], counts.get(state, 0))
        return family

    def _spawn_latency(self) -> HistogramMetricFamily:
        """From the spawn request (row created) to the runtime starting (first ``running``)."""
        latency = ExpressionWrapper(F("started_at") - F("created_at"), output_field=DurationField())
        started = Agent.objects.filter(started_at__isnull=False).annotate(latency=latency)
        buckets = {
            f"le_{index}": Count("id", filter=Q(latency__lte=timedelta(seconds=bound)))
            for index, bound in enumerate(SPAWN_BUCKETS_S)
        }
        row = started.aggregate(total=Count("id"), sum=Sum("latency"), **buckets)
        total_s = row["sum"].total_seconds() if row["sum"] else 0.0
        return _histogram(
            "flotilla_spawn_latency_seconds",
            "Time from a spawn request to the agent's runtime starting.",
            SPAWN_BUCKETS_S,
            row,
            total_s,
        )

    def _kill_latency(self) -> HistogramMetricFamily:
        """Kills done where they were asked, and kills executed on the agent's node."""
        latency_ms = Cast(KT("data__latency_ms"), FloatField())
        local = Q(action="agent.kill", data__killed=True) & (
            Q(data__routed_to="") | ~Q(data__has_key="routed_to")
        )
        kills = AuditEvent.objects.filter(local | Q(action="agent.sandbox_kill")).annotate(
            latency_ms=latency_ms
        )
        buckets = {
            f"le_{index}": Count("id", filter=Q(latency_ms__lte=bound * 1000))
            for index, bound in enumerate(KILL_BUCKETS_S)
        }
        row = kills.aggregate(total=Count("id"), sum=Sum("latency_ms"), **buckets)
        return _histogram(
            "flotilla_kill_latency_seconds",
            "Time from a kill request to the agent's processes being killed.",
            KILL_BUCKETS_S,
            row,
            (row["sum"] or 0.0) / 1000,
        )

    def _gate_runs(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "flotilla_gate_runs", "Gate verdicts by gate and outcome.", labels=["gate", "outcome"]
        )
        rows = GateRun.objects.values_list("gate", "outcome").annotate(n=Count("id")).order_by()
        for gate, outcome, count in rows:
            family.add_metric([gate, outcome], count)
        return family

    def _federation_rejections(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "flotilla_federation_rejections",
            "Federation requests refused, by error code.",
            labels=["reason"],
        )
        rows = (
            AuditEvent.objects.filter(action="federation.rejected")
            .annotate(code=KT("data__code"))
            .values_list("code")
            .annotate(n=Count("id"))
            .order_by()
        )
        for reason, count in rows:
            family.add_metric([reason or "unknown"], count)
        return family

    def _queue_depth(self) -> Iterator[GaugeMetricFamily]:
        from django_q.brokers import get_broker

        family = GaugeMetricFamily("flotilla_queue_depth", "Tasks waiting in the django-q2 broker.")
        try:
            family.add_metric([], get_broker().queue_size() or 0)
        except Exception:
            family = GaugeMetricFamily("flotilla_queue_up", "Whether the broker answered.")
            family.add_metric([], 0)
        yield family


def _histogram(
    name: str, documentation: str, bounds: tuple[float, ...], row: dict[str, Any], total: float
) -> HistogramMetricFamily:
    buckets = [(_bound(bound), row[f"le_{index}"]) for index, bound in enumerate(bounds)]
    buckets.append(("+Inf", row["total"]))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


def _bound(value: float) -> str:
    return str(float(value))


def metrics_render() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlotillaCollector())
    return generate_latest(registry)


# --- the endpoint -------------------------------------------------------------


class MetricsTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <FLOTILLA_METRICS_TOKEN>``: the scraper's credential."""

    def authenticate(self, request: Request) -> tuple["MetricsScraper", str] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        expected = settings.FLOTILLA_METRICS_TOKEN
        if not expected or not hmac.compare_digest(token.strip(), expected):
            raise exceptions.AuthenticationFailed("invalid metrics token")
        return (MetricsScraper(), token)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="metrics"'


class MetricsScraper:
    is_authenticated = True
    is_staff = False
    is_metrics_scraper = True


class CanReadMetrics(permissions.BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and (getattr(user, "is_metrics_scraper", False) or user.is_staff))


class MetricsApi(APIView):
    authentication_classes = [
        MetricsTokenAuthentication,
        authentication.TokenAuthentication,
        authentication.SessionAuthentication,
    ]
    permission_classes = [CanReadMetrics]

    @extend_schema(
        summary="Prometheus metrics",
        responses={(200, "text/plain"): OpenApiResponse(description="Prometheus text format")},
    )
    def get(self, request: Request) -> HttpResponse:
        return HttpResponse(metrics_render(), content_type=CONTENT_TYPE_LATEST)
