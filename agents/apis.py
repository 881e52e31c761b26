"""REST endpoints for agents: parse, call one service, shape the answer."""

import re
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents import workspace
from agents.egress.policy import Allowlist, entry_format, entry_parse
from agents.errors import AgentNotFound
from agents.idempotency import idempotent
from agents.limits import limit_problem
from agents.models import Agent, AgentState, AgentType, NetworkMode, Runtime
from agents.retries import agent_retry
from agents.runtimes import runtime_for, runtime_unavailable
from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxUnavailable
from agents.selectors import (
    agent_events_page,
    agent_list,
    agent_patch,
    agent_visible_get,
    agents_visible_to,
    viewer_principal,
)
from agents.services import SpawnRequest, agent_resume, agent_spawn

GATE_PROFILES = ["strict", "standard", "minimal"]
# Spawn options stored on the agent as they are (SpawnRequest.options).
_OPTIONS_KEPT = (
    "budget_usd",
    "memory_mb",
    "pids",
    "cpus",
    "gates",
    "model",
    "max_tokens",
    "max_turns",
    "gate_retries",
)
# options.allow_hosts: how many entries, and how long one may be ([IPv6]:port).
_ALLOW_HOSTS_MAX = 50
_ALLOW_HOST_MAX_CHARS = 262
_BRANCH = re.compile(r"^(?!/|.*(?:\.\.|//|@\{|\.lock$|/$))[A-Za-z0-9._/-]+$")


def principal(request: Request) -> str:
    return viewer_principal(request.user)


class AgentUsageSerializer(serializers.Serializer[Agent]):
    """What a Claude agent has spent so far, against its budget (null: no limit)."""

    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cache_read_input_tokens = serializers.IntegerField(source="cache_read_tokens")
    cache_creation_input_tokens = serializers.IntegerField(source="cache_write_tokens")
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6)
    budget_usd = serializers.SerializerMethodField()

    def get_budget_usd(self, agent: Agent) -> str | None:
        return (agent.options or {}).get("budget_usd")


class AgentOutputSerializer(serializers.Serializer[Agent]):
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


class SpawnContextSerializer(serializers.Serializer[dict[str, Any]]):
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
        problem = workspace.repository_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate_branch(self, value: str) -> str:
        if not _BRANCH.match(value):
            raise serializers.ValidationError("not a valid branch name")
        return value


class SpawnGatesSerializer(serializers.Serializer[dict[str, Any]]):
    """Gate commands for this spawn; they override the repository's ``.flotilla.toml``."""

    lint = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    typecheck = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    tests = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    coverage = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    coverage_threshold = serializers.FloatField(min_value=0, max_value=100, required=False)
    build = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    timeout_s = serializers.IntegerField(min_value=1, max_value=86400, required=False)


@extend_schema_field(
    {
        "oneOf": [{"type": "string", "enum": NetworkMode.values}, {"type": "boolean"}],
        "description": "off (the default), allowlist or on; true means on, false off.",
    }
)
class NetworkModeField(serializers.Field[str, object, str, Any]):
    """A network mode; JSON ``true`` and ``false`` are read as ``on`` and ``off``."""

    default_error_messages = {"invalid": "must be off, allowlist or on (or true / false)"}

    def to_internal_value(self, data: object) -> str:
        if isinstance(data, bool):
            return NetworkMode.ON if data else NetworkMode.OFF
        if isinstance(data, str) and data in NetworkMode.values:
            return data
        self.fail("invalid")

    def to_representation(self, value: str) -> str:
        return value


class WithinMaximum:
    """A spawn may lower a limit, never raise it past the operator's maximum.

    The maximum is read when the request arrives, not when this module is
    imported, so it is the one the hub runs with now.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, value: float) -> None:
        problem = limit_problem(self.name, value)
        if problem:
            raise serializers.ValidationError(problem)


class SpawnOptionsSerializer(serializers.Serializer[dict[str, Any]]):
    sandbox = serializers.ChoiceField(
        choices=list(settings.FLOTILLA_SANDBOX_BACKENDS), required=False
    )
    timeout_s = serializers.IntegerField(
        min_value=1, required=False, validators=[WithinMaximum("timeout_s")]
    )
    max_retries = serializers.IntegerField(min_value=0, max_value=10, default=0)
    # Node supervisors claim higher priorities first (10 before 1), then older agents.
    priority = serializers.IntegerField(min_value=1, max_value=10, default=5)
    gate_profile = serializers.ChoiceField(choices=GATE_PROFILES, default="standard")
    network = NetworkModeField(default=NetworkMode.OFF)
    allow_hosts = serializers.ListField(
        child=serializers.CharField(max_length=_ALLOW_HOST_MAX_CHARS),
        max_length=_ALLOW_HOSTS_MAX,
        required=False,
    )
    budget_usd = serializers.DecimalField(
        max_digits=10, decimal_places=2, min_value=0, required=False
    )
    memory_mb = serializers.IntegerField(
        min_value=16, required=False, validators=[WithinMaximum("memory_mb")]
    )
    pids = serializers.IntegerField(min_value=8, required=False, validators=[WithinMaximum("pids")])
    cpus = serializers.FloatField(
        min_value=0.01, required=False, validators=[WithinMaximum("cpus")]
    )
    gates = SpawnGatesSerializer(required=False)
    # The claude runtime's model and limits; the hub's settings when absent.
    model = serializers.CharField(max_length=100, required=False)
    max_tokens = serializers.IntegerField(min_value=256, max_value=128_000, required=False)
    max_turns = serializers.IntegerField(min_value=1, max_value=10_000, required=False)
    # CLI agents: how many times a gate rejection goes back to the CLI's session (default 2).
    gate_retries = serializers.IntegerField(min_value=0, max_value=10, required=False)

    def validate_allow_hosts(self, value: list[str]) -> list[str]:
        """Canonical entries, each within the operator's egress allowlist."""
        operator = Allowlist.parse(settings.FLOTILLA_EGRESS_ALLOWLIST)
        entries = []
        for entry in value:
            try:
                entries.append(entry_format(*entry_parse(entry)))
            except ValueError as error:
                raise serializers.ValidationError(str(error)) from None
            if not operator.covers(entry):
                raise serializers.ValidationError(
                    f"{entry} is not permitted by the hub's egress allowlist "
                    "(FLOTILLA_EGRESS_ALLOWLIST)"
                )
        return list(dict.fromkeys(entries))

    def validate_sandbox(self, value: str) -> str:
        try:
            sandbox_backend(value)
        except SandboxUnavailable as error:
            raise serializers.ValidationError(str(error)) from None
        return value


def spawn_request_from(data: dict[str, Any], *, origin: str = "local") -> SpawnRequest:
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
        priority=options.get("priority", 5),
        gate_profile=options.get("gate_profile", "standard"),
        network=options.get("network", NetworkMode.OFF),
        allow_hosts=tuple(options.get("allow_hosts") or ()),
        options=extra,
        origin=origin,
    )


class AgentSpawnApi(APIView):
    class InputSerializer(serializers.Serializer[dict[str, Any]]):
        task_id = serializers.RegexField(
            r"^[A-Za-z0-9._-]{1,100}$",
            max_length=100,
            error_messages={"invalid": "use letters, digits, . _ -"},
        )
        agent_type = serializers.ChoiceField(choices=AgentType.choices, default=AgentType.WORKER)
        runtime = serializers.ChoiceField(choices=Runtime.choices)
        script = serializers.CharField(max_length=100_000, required=False, allow_blank=True)
        context = SpawnContextSerializer()  # type: ignore[assignment]  # a field, not the stubs' serializer context
        options = SpawnOptionsSerializer(required=False)

        def validate_runtime(self, value: str) -> str:
            # A CLI runtime whose CLI is not installed here is named with what is missing.
            problem = runtime_unavailable(value)
            if problem:
                raise serializers.ValidationError(problem)
            return value

        def validate(self, data: dict[str, Any]) -> dict[str, Any]:
            if data["runtime"] == Runtime.SCRIPT and not data.get("script", "").strip():
                raise serializers.ValidationError({"script": ["a script agent needs a script"]})
            # A model needs a price in its runtime's table (Anthropic's or OpenAI's).
            model = (data.get("options") or {}).get("model")
            problem = model and runtime_for(data["runtime"]).model_problem(model)
            if problem:
                raise serializers.ValidationError({"options": {"model": [problem]}})
            return data

    class OutputSerializer(serializers.Serializer[Agent]):
        agent_id = serializers.UUIDField(source="id")
        state = serializers.CharField()
        status = serializers.CharField(source="state")

    @extend_schema(
        request=InputSerializer, responses={202: OutputSerializer}, operation_id="agents_spawn"
    )
    @idempotent
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

    class FilterSerializer(serializers.Serializer[dict[str, Any]]):
        state = serializers.ChoiceField(choices=AgentState.choices, required=False)
        task_id = serializers.CharField(max_length=100, required=False)

    @extend_schema(
        parameters=[FilterSerializer],
        responses={200: AgentOutputSerializer(many=True)},
        operation_id="agents_list",
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        paginator = self.Pagination()
        agents = agent_list(agents=agents_visible_to(request.user), **filters.validated_data)
        page = paginator.paginate_queryset(agents, request, view=self)
        # The stubs type a serializer's instance as one object, even with many=True.
        rows = AgentOutputSerializer(page, many=True).data  # type: ignore[arg-type]
        return paginator.get_paginated_response(rows)


class AgentCollectionApi(AgentListApi, AgentSpawnApi):
    """``/agents``: two operations on one path, GET lists and POST spawns."""


class AgentDetailApi(APIView):
    @extend_schema(responses={200: AgentOutputSerializer}, operation_id="agents_retrieve")
    def get(self, request: Request, agent_id: str) -> Response:
        agent = agent_visible_get(viewer=request.user, agent_id=agent_id)
        return Response(AgentOutputSerializer(agent).data)


class AgentEventsApi(APIView):
    """Events in order after ``after``, a page of at most FLOTILLA_EVENTS_PAGE_BYTES of data.

    A page holds at least one event. A client asks again with
    ``after=next_after`` while ``has_more``, and so gets every event once.
    """

    class FilterSerializer(serializers.Serializer[dict[str, Any]]):
        after = serializers.IntegerField(min_value=0, max_value=2**63 - 1, default=0)
        limit = serializers.IntegerField(min_value=1, max_value=1000, default=500)

    class EventSerializer(serializers.Serializer[Any]):
        id = serializers.IntegerField()
        kind = serializers.CharField()
        data = serializers.JSONField()  # type: ignore[assignment]  # a field named data, not Serializer.data
        created_at = serializers.DateTimeField()

    @extend_schema(
        parameters=[OpenApiParameter("after", int), OpenApiParameter("limit", int)],
        responses={
            200: inline_serializer(
                "AgentEvents",
                {
                    "events": EventSerializer(many=True),
                    "next_after": serializers.IntegerField(),
                    "has_more": serializers.BooleanField(),
                    "last_id": serializers.IntegerField(help_text="the same as next_after"),
                },
            )
        },
        operation_id="agents_events",
    )
    def get(self, request: Request, agent_id: str) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        agent = agent_visible_get(viewer=request.user, agent_id=agent_id)
        page = agent_events_page(
            agent_id=agent.id,
            max_bytes=settings.FLOTILLA_EVENTS_PAGE_BYTES,
            **filters.validated_data,
        )
        return Response(
            {
                "events": self.EventSerializer(page.events, many=True).data,
                "next_after": page.next_after,
                "has_more": page.has_more,
                "last_id": page.next_after,
            }
        )


class AgentResumeApi(APIView):
    """Raise a paused agent's budget and let it continue where it stopped."""

    class InputSerializer(serializers.Serializer[dict[str, Any]]):
        budget_usd = serializers.DecimalField(max_digits=10, decimal_places=2, min_value=0)
        reason = serializers.CharField(max_length=1000, required=False, allow_blank=True)

    class OutputSerializer(serializers.Serializer[Any]):
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
        agent = agent_visible_get(viewer=request.user, agent_id=agent_id)
        agent = agent_resume(
            agent_id=agent.id,
            budget_usd=serializer.validated_data["budget_usd"],
            actor=principal(request),
            reason=serializer.validated_data.get("reason", ""),
        )
        return Response(self.OutputSerializer(agent).data, status=status.HTTP_202_ACCEPTED)


class AgentRetryApi(APIView):
    """Start a new agent with the spec of a failed or killed one (docs/api.md, "Retrying an agent").

    The new agent is the caller's; it records ``options.retry_of``. Any other
    state, and an agent a peer hub asked for or runs, is refused with 409
    ``not_retryable``.
    """

    class InputSerializer(serializers.Serializer[dict[str, Any]]):
        reason = serializers.CharField(max_length=1000, required=False, allow_blank=True)

    class OutputSerializer(serializers.Serializer[Any]):
        agent_id = serializers.UUIDField(source="id")
        state = serializers.CharField()
        status = serializers.CharField(source="state")
        retry_of = serializers.CharField(source="options.retry_of")

    @extend_schema(
        request=InputSerializer, responses={202: OutputSerializer}, operation_id="agents_retry"
    )
    @idempotent
    def post(self, request: Request, agent_id: str) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agent = agent_visible_get(viewer=request.user, agent_id=agent_id)
        retry = agent_retry(
            agent_id=agent.id,
            requested_by=principal(request),
            reason=serializer.validated_data.get("reason", ""),
        )
        return Response(self.OutputSerializer(retry).data, status=status.HTTP_202_ACCEPTED)


class AgentPatchApi(APIView):
    """The agent's work as a patch against its base, with why its run ended (docs/api.md).

    A rejected change is served as the hub kept it when the run ended, with
    every line that holds a secret the scan found replaced.
    """

    class FilterSerializer(serializers.Serializer[dict[str, Any]]):
        attempt = serializers.IntegerField(min_value=0, max_value=32767, required=False)

    @extend_schema(
        parameters=[FilterSerializer],
        responses={(200, "text/x-diff"): str},
        operation_id="agents_patch",
    )
    def get(self, request: Request, agent_id: str) -> HttpResponse:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        agent = agent_visible_get(viewer=request.user, agent_id=agent_id)
        attempt = filters.validated_data.get("attempt")
        patch = agent_patch(agent=agent, attempt=attempt)
        if patch is None:
            raise AgentNotFound(f"agent {agent.id} has no patch of attempt {attempt}")
        response = HttpResponse(patch.text, content_type="text/x-diff; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{patch.filename}"'
        return response
