"""REST endpoints of the kill switch."""

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.apis import principal
from agents.selectors import agent_get, agent_visible_get
from killswitch.errors import AgentAlreadyFinal
from killswitch.models import HubHalt
from killswitch.services import (
    KillAllSummary,
    agent_kill,
    agent_kill_all,
    hub_halt,
    hub_release,
)


class ReasonSerializer(serializers.Serializer[dict[str, Any]]):
    reason = serializers.CharField(max_length=2000)


class AgentKillApi(APIView):
    class OutputSerializer(serializers.Serializer[dict[str, Any]]):
        agent_id = serializers.CharField()
        killed = serializers.BooleanField(source="terminated")
        previous_state = serializers.CharField()
        state = serializers.CharField()
        latency_ms = serializers.FloatField()
        branch_kept = serializers.BooleanField()

    @extend_schema(
        request=ReasonSerializer,
        # A 409 (already final: nothing killed) is the error body, as every error.
        responses={200: OutputSerializer},
        operation_id="agents_kill",
    )
    def post(self, request: Request, agent_id: str) -> Response:
        serializer = ReasonSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agent = agent_visible_get(viewer=request.user, agent_id=agent_id)
        termination = agent_kill(
            agent_id=agent.id, reason=serializer.validated_data["reason"], actor=principal(request)
        )
        state = agent_get(agent_id=agent.id).state
        if not termination.terminated:
            raise AgentAlreadyFinal(f"agent {agent.id} is already {state}: nothing was killed")
        data = self.OutputSerializer({**termination.__dict__, "state": state}).data
        return Response(data)


class AgentKillAllApi(APIView):
    permission_classes = [IsAdminUser]

    class OutputSerializer(serializers.Serializer[KillAllSummary]):
        total = serializers.IntegerField()
        killed = serializers.IntegerField()
        failed = serializers.IntegerField()
        # The stubs see the ``errors`` property; DRF's metaclass takes a declared field out.
        errors = serializers.ListField(child=serializers.DictField())  # type: ignore[assignment]

    @extend_schema(
        request=ReasonSerializer, responses={200: OutputSerializer}, operation_id="agents_kill_all"
    )
    def post(self, request: Request) -> Response:
        serializer = ReasonSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        summary = agent_kill_all(
            reason=serializer.validated_data["reason"], actor=principal(request)
        )
        return Response(self.OutputSerializer(summary).data)


class HaltOutputSerializer(serializers.Serializer[HubHalt]):
    halted = serializers.BooleanField()
    reason = serializers.CharField()
    actor = serializers.CharField()
    changed_at = serializers.DateTimeField()


class HubHaltApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        request=ReasonSerializer,
        responses={200: HaltOutputSerializer},
        operation_id="killswitch_halt",
    )
    def post(self, request: Request) -> Response:
        serializer = ReasonSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        halt = hub_halt(reason=serializer.validated_data["reason"], actor=principal(request))
        return Response(HaltOutputSerializer(halt).data)


class HubReleaseApi(APIView):
    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer[dict[str, Any]]):
        reason = serializers.CharField(max_length=2000, required=False, default="")

    @extend_schema(
        request=InputSerializer,
        responses={200: HaltOutputSerializer},
        operation_id="killswitch_release",
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        halt = hub_release(actor=principal(request), reason=serializer.validated_data["reason"])
        return Response(HaltOutputSerializer(halt).data)
