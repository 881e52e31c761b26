"""REST endpoints for agents: parse, call one service, shape the answer."""

import re

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents import workspace
from agents.models import Agent, AgentType, Runtime
from agents.runtimes import RUNTIMES
from agents.runtimes.claude.accounting import model_price
from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxUnavailable
from agents.selectors import agent_events_after, agent_get, agent_list
from agents.services import SpawnRequest, agent_resume, agent_spawn

GATE_PROFILES = ["strict", "standard", "minimal"]
# Spawn options stored on the agent as they are (SpawnRequest.options).
_OPTIONS_KEPT = ("budget_usd", "memory_mb", "pids", "gates", "model", "max_tokens", "max_turns")
_BRANCH = re.compile(r"^(?!/|.*(?:\.\.|//|@\{|\.lock$|/$))[A-Za-z0-9._/-]+$")


def principal(request: Request) -> str:
    return f"user:{request.user.get_username()}"


class AgentUsageSerializer(serializers.Serializer):
    """What a Claude agent has spent so far, against its budget (null: no limit)."""

    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cache_read_input_tokens = serializers.IntegerField(source="cache_read_tokens")
    cache_creation_input_tokens = serializers.IntegerField(source="cache_write_tokens")
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6)
    budget_usd = serializers.SerializerMethodField()

    def get_budget_usd(self, agent: Agent) -> str | None:
        return (agent.options or {}).get("budget_usd")


class AgentOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    task_id = serializers.CharField()
    state = serializers.CharField()
    progress = serializers.IntegerField()
    agent_type = serializers.CharField()
    runtime = serializers.CharField()
    repository = serializers.CharField()
    branch = serializers.CharField(source="base_branch")
    work_branch = serializers.CharField()
    node = serializers.CharField()
    origin = serializers.CharField()
    requested_by = serializers.CharField()
    sandbox = serializers.CharField(source="sandbox_backend")
    error = serializers.CharField()
    result = serializers.JSONField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    usage = AgentUsageSerializer(source="*")


class SpawnContextSerializer(serializers.Serializer):
    repository = serializers.CharField(max_length=1000)
    branch = serializers.CharField(max_length=250, default="main")
    work_items = serializers.ListField(
        child=serializers.CharField(max_length=2000), default=list, max_length=100
    )
    skills = serializers.ListField(
        child=serializers.CharField(max_length=200), default=list, max_length=50
    )
    instructions = serializers.CharField(max_length=100_000, default="", allow_blank=True)

    def validate_repository(self, value: str) -> str:
        scheme = workspace.repository_scheme(value)
        if scheme not in settings.FLOTILLA_REPOSITORY_SCHEMES:
            raise serializers.ValidationError(f"repositories over {scheme} are not allowed")
        problem = workspace.repository_check_local(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate_branch(self, value: str) -> str:
        if not _BRANCH.match(value):
            raise serializers.ValidationError("not a valid branch name")
        return value


class SpawnGatesSerializer(serializers.Serializer):
    """Gate commands for this spawn; they override the repository's ``.flotilla.toml``."""

    lint = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    typecheck = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    tests = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    coverage = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    coverage_threshold = serializers.FloatField(min_value=0, max_value=100, required=False)
    build = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    timeout_s = serializers.IntegerField(min_value=1, max_value=86400, required=False)


class SpawnOptionsSerializer(serializers.Serializer):
    sandbox = serializers.ChoiceField(
        choices=list(settings.FLOTILLA_SANDBOX_BACKENDS), required=False
    )
    timeout_s = serializers.IntegerField(
        min_value=1, required=False, max_value=settings.FLOTILLA_AGENT_MAX_RUNTIME_S
    )
    max_retries = serializers.IntegerField(min_value=0, max_value=10, default=0)
    gate_profile = serializers.ChoiceField(choices=GATE_PROFILES, default="standard")
    network = serializers.BooleanField(default=False)
    budget_usd = serializers.DecimalField(
        max_digits=10, decimal_places=2, min_value=0, required=False
    )
    memory_mb = serializers.IntegerField(min_value=16, max_value=65536, required=False)
    pids = serializers.IntegerField(min_value=8, max_value=65536, required=False)
    gates = SpawnGatesSerializer(required=False)
    # The claude runtime's model and limits; the hub's settings when absent.
    model = serializers.CharField(max_length=100, required=False)
    max_tokens = serializers.IntegerField(min_value=256, max_value=128_000, required=False)
    max_turns = serializers.IntegerField(min_value=1, max_value=10_000, required=False)

    def validate_model(self, value: str) -> str:
        if model_price(value) is None:
            raise serializers.ValidationError(
                f"no price is configured for {value} (FLOTILLA_CLAUDE_PRICES), so its "
                "budget could not be kept"
            )
        return value

    def validate_sandbox(self, value: str) -> str:
        try:
            sandbox_backend(value)
        except SandboxUnavailable as error:
            raise serializers.ValidationError(str(error)) from None
        return value


def spawn_request_from(data: dict, *, origin: str = "local") -> SpawnRequest:
    """The service's request for a validated spawn body (the REST API's or a peer's)."""
    context, options = data["context"], data.get("options") or {}
    extra = {
        key: str(value) if key == "budget_usd" else value
        for key, value in options.items()
        if key in _OPTIONS_KEPT
    }
    return SpawnRequest(
        task_id=data["task_id"],
        agent_type=data["agent_type"],
        runtime=data["runtime"],
        script=data.get("script", ""),
        repository=context["repository"],
        base_branch=context["branch"],
        work_items=context["work_items"],
        skills=context["skills"],
        instructions=context["instructions"],
        sandbox=options.get("sandbox", ""),
        timeout_s=options.get("timeout_s", 0),
        max_retries=options.get("max_retries", 0),
        gate_profile=options.get("gate_profile", "standard"),
        network=options.get("network", False),
        options=extra,
        origin=origin,
    )


class AgentSpawnApi(APIView):
    class InputSerializer(serializers.Serializer):
        task_id = serializers.RegexField(
            r"^[A-Za-z0-9._-]{1,100}$",
            max_length=100,
            error_messages={"invalid": "use letters, digits, . _ -"},
        )
        agent_type = serializers.ChoiceField(choices=AgentType.choices, default=AgentType.WORKER)
        runtime = serializers.ChoiceField(choices=Runtime.choices)
        script = serializers.CharField(max_length=100_000, required=False, allow_blank=True)
        context = SpawnContextSerializer()
        options = SpawnOptionsSerializer(required=False)

        def validate_runtime(self, value: str) -> str:
            if value not in RUNTIMES:
                raise serializers.ValidationError(f"runtime {value} is not available on this hub")
            return value

        def validate(self, data: dict) -> dict:
            if data["runtime"] == Runtime.SCRIPT and not data.get("script", "").strip():
                raise serializers.ValidationError({"script": ["a script agent needs a script"]})
            return data

    class OutputSerializer(serializers.Serializer):
        agent_id = serializers.UUIDField(source="id")
        state = serializers.CharField()
        status = serializers.CharField(source="state")

    @extend_schema(
        request=InputSerializer, responses={202: OutputSerializer}, operation_id="agents_spawn"
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        agent = agent_spawn(
            request=spawn_request_from(data),
            requested_by=principal(request),
        )
        return Response(self.OutputSerializer(agent).data, status=status.HTTP_202_ACCEPTED)


class AgentListApi(APIView):
    class Pagination(LimitOffsetPagination):
        default_limit = 100
        max_limit = 1000

    class FilterSerializer(serializers.Serializer):
        state = serializers.CharField(required=False)
        task_id = serializers.CharField(required=False)

    @extend_schema(
        parameters=[FilterSerializer],
        responses={200: AgentOutputSerializer(many=True)},
        operation_id="agents_list",
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        paginator = self.Pagination()
        page = paginator.paginate_queryset(agent_list(**filters.validated_data), request, view=self)
        return paginator.get_paginated_response(AgentOutputSerializer(page, many=True).data)


class AgentCollectionApi(AgentListApi, AgentSpawnApi):
    """``/agents``: two operations on one path, GET lists and POST spawns."""


class AgentDetailApi(APIView):
    @extend_schema(responses={200: AgentOutputSerializer}, operation_id="agents_retrieve")
    def get(self, request: Request, agent_id: str) -> Response:
        return Response(AgentOutputSerializer(agent_get(agent_id=agent_id)).data)


class AgentEventsApi(APIView):
    class FilterSerializer(serializers.Serializer):
        after = serializers.IntegerField(min_value=0, default=0)
        limit = serializers.IntegerField(min_value=1, max_value=1000, default=500)

    class EventSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        kind = serializers.CharField()
        data = serializers.JSONField()
        created_at = serializers.DateTimeField()

    @extend_schema(
        parameters=[OpenApiParameter("after", int), OpenApiParameter("limit", int)],
        responses={
            200: inline_serializer(
                "AgentEvents",
                {"events": EventSerializer(many=True), "last_id": serializers.IntegerField()},
            )
        },
        operation_id="agents_events",
    )
    def get(self, request: Request, agent_id: str) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        agent = agent_get(agent_id=agent_id)
        events = list(agent_events_after(agent_id=agent.id, **filters.validated_data))
        last_id = events[-1].id if events else filters.validated_data["after"]
        return Response(
            {"events": self.EventSerializer(events, many=True).data, "last_id": last_id}
        )


class AgentResumeApi(APIView):
    """Raise a paused agent's budget and let it continue where it stopped."""

    class InputSerializer(serializers.Serializer):
        budget_usd = serializers.DecimalField(max_digits=10, decimal_places=2, min_value=0)
        reason = serializers.CharField(max_length=1000, required=False, allow_blank=True)

    class OutputSerializer(serializers.Serializer):
        agent_id = serializers.UUIDField(source="id")
        state = serializers.CharField()
        budget_usd = serializers.CharField(source="options.budget_usd")
        cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6)

    @extend_schema(
        request=InputSerializer, responses={202: OutputSerializer}, operation_id="agents_resume"
    )
    def post(self, request: Request, agent_id: str) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agent = agent_resume(
            agent_id=agent_get(agent_id=agent_id).id,
            budget_usd=serializer.validated_data["budget_usd"],
            actor=principal(request),
            reason=serializer.validated_data.get("reason", ""),
        )
        return Response(self.OutputSerializer(agent).data, status=status.HTTP_202_ACCEPTED)
