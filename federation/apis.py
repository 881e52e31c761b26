"""Federation endpoints: the signed inbox (``/federation/v1/``) and the staff peers API."""

import uuid
from typing import Any

from django.http import HttpResponse
from django.template.response import SimpleTemplateResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import BaseAuthentication
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import BaseParser
from rest_framework.permissions import AllowAny, BasePermission, IsAdminUser, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from agents.models import Agent
from federation import signing
from federation.authentication import (
    FederationConnectAuthentication,
    FederationSignatureAuthentication,
    inbound_request,
)
from federation.commands import command_handle, response_envelope
from federation.documents import PublishedKey, peer_url_problem
from federation.errors import FederationError, PeerForbidden
from federation.identity import identity_document, signing_key
from federation.models import Peer, PeerState
from federation.relay import events_receive
from federation.remote import peer_connect, remote_agent_spawn
from federation.selectors import peer_list
from federation.services import (
    PEER_ACTIONS,
    VerifiedRequest,
    federation_rejection_audit,
    peer_register_inbound,
    peer_transition,
)

# --- the signed inbox ----------------------------------------------------------


def response_sign(response: HttpResponse) -> None:
    """Sign a rendered response (RFC 9421, @status content-type content-digest)."""
    key_id, private_key = signing_key()
    headers = signing.response_sign(
        status=response.status_code,
        body=response.content,
        key_id=key_id,
        private_key=private_key,
        headers={"Content-Type": response["Content-Type"]},
    )
    for name in ("Content-Digest", "Signature-Input", "Signature"):
        response[name] = headers[name]


class FederationApi(APIView):
    """Base of every inbox view: signature-authenticated, JSON, signed answers."""

    authentication_classes = [FederationSignatureAuthentication]
    permission_classes: list[type[BasePermission]] = []
    throttle_classes: list[type[BaseThrottle]] = []
    parser_classes: list[type[BaseParser]] = []  # the chokepoint already parsed the verified body
    renderer_classes = [JSONRenderer]

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        if isinstance(response, SimpleTemplateResponse):
            response.add_post_render_callback(response_sign)
        return response


def _verified(request: Request) -> VerifiedRequest:
    """The message the view's authentication admitted (it never lets a view run without one)."""
    verified = request.auth
    if not isinstance(verified, VerifiedRequest):
        raise TypeError("a federation inbox view ran without a verified request")
    return verified


def _sender(verified: VerifiedRequest) -> Peer:
    """The peer that sent an admitted message: only a connect may come from no peer yet."""
    if verified.peer is None:
        raise PeerForbidden("only an ACTIVE peer may send messages")
    return verified.peer


class IdentityApi(FederationApi):
    authentication_classes: list[type[BaseAuthentication]] = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="federation_identity", responses={200: dict})
    def get(self, request: Request) -> Response:
        return Response(identity_document())


class ConnectApi(FederationApi):
    authentication_classes = [FederationConnectAuthentication]

    @extend_schema(operation_id="federation_connect", request=dict, responses={202: dict})
    def post(self, request: Request) -> Response:
        verified = _verified(request)
        try:
            peer = peer_register_inbound(
                document=verified.body,
                key_id=verified.key_id,
                public_key=verified.public_key,
                remote_addr=request.META.get("REMOTE_ADDR", ""),
            )
        except FederationError as error:
            federation_rejection_audit(request=inbound_request(request), error=error)
            raise
        return Response(
            {**identity_document(), "peer_state": peer.state}, status=status.HTTP_202_ACCEPTED
        )


class CommandsApi(FederationApi):
    @extend_schema(operation_id="federation_commands", request=dict, responses={200: dict})
    def post(self, request: Request) -> Response:
        verified = _verified(request)
        try:
            answer_status, body = command_handle(peer=_sender(verified), body=verified.body)
        except FederationError as error:
            federation_rejection_audit(request=inbound_request(request), error=error)
            raise
        return Response(body, status=answer_status)


class EventsApi(FederationApi):
    @extend_schema(operation_id="federation_events", request=dict, responses={200: dict})
    def post(self, request: Request) -> Response:
        verified = _verified(request)
        body = verified.body
        try:
            data = events_receive(peer=_sender(verified), body=body)
        except FederationError as error:
            federation_rejection_audit(request=inbound_request(request), error=error)
            raise
        correlation = str(body.get("message_id", ""))[:200]
        return Response(response_envelope(correlation_id=correlation, success=True, data=data))


# --- the staff peers API ---------------------------------------------------------


class PeerKeyOutputSerializer(serializers.Serializer[PublishedKey]):
    key_id = serializers.CharField(default="")
    alg = serializers.CharField(allow_null=True)
    public_key = serializers.CharField(default="")
    created = serializers.CharField(allow_null=True)
    expires = serializers.CharField(allow_null=True)
    # What an admin compares with the peer's operator before an accept.
    fingerprint = serializers.SerializerMethodField()

    def get_fingerprint(self, key: PublishedKey) -> str:
        return signing.key_fingerprint(str(key.get("public_key", "")))


class PeerOutputSerializer(serializers.Serializer[Peer]):
    id = serializers.UUIDField()
    instance_id = serializers.CharField()
    name = serializers.CharField()
    url = serializers.CharField()
    state = serializers.CharField()
    last_seen = serializers.DateTimeField(allow_null=True)
    initiated_here = serializers.BooleanField()
    keys = PeerKeyOutputSerializer(many=True)
    allowed_commands = serializers.ListField(child=serializers.CharField())
    max_concurrent_agents = serializers.IntegerField()
    requests_per_minute = serializers.IntegerField()


def _actor(request: Request) -> str:
    return f"user:{request.user.get_username()}"


class PeerListApi(APIView):
    permission_classes = [IsAdminUser]

    class Pagination(LimitOffsetPagination):
        default_limit = 100
        max_limit = 1000

    class FilterSerializer(serializers.Serializer[dict[str, Any]]):
        state = serializers.ChoiceField(choices=PeerState.choices, required=False)

    @extend_schema(
        operation_id="peers_list",
        parameters=[FilterSerializer],
        responses={200: PeerOutputSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        paginator = self.Pagination()
        page = paginator.paginate_queryset(
            peer_list(state=filters.validated_data.get("state")), request, view=self
        )
        # The stubs type a serializer's instance as one object, even with many=True.
        peers = PeerOutputSerializer(page, many=True)  # type: ignore[arg-type]
        return paginator.get_paginated_response(peers.data)


class PeerConnectApi(APIView):
    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer[dict[str, Any]]):
        url = serializers.RegexField(r"^https?://[^\s/]+(/\S*)?$", max_length=500)

        def validate_url(self, value: str) -> str:
            # The shape of a base URL, then the outbound guard (netguard) on its host.
            problem = peer_url_problem(value)
            if problem:
                raise serializers.ValidationError(problem)
            return value

    @extend_schema(
        operation_id="peers_connect", request=InputSerializer, responses={201: PeerOutputSerializer}
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        peer = peer_connect(url=serializer.validated_data["url"], actor=_actor(request))
        return Response(PeerOutputSerializer(peer).data, status=status.HTTP_201_CREATED)


class PeerActionApi(APIView):
    """POST /peers/{id}/accept|reject|suspend|disconnect."""

    permission_classes = [IsAdminUser]
    action_name = ""

    class InputSerializer(serializers.Serializer[dict[str, Any]]):
        reason = serializers.CharField(max_length=2000, required=False, default="")

    @extend_schema(request=InputSerializer, responses={200: PeerOutputSerializer})
    def post(self, request: Request, peer_id: uuid.UUID) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        peer = peer_transition(
            peer_id=peer_id,
            action=self.action_name,
            actor=_actor(request),
            reason=serializer.validated_data["reason"],
        )
        return Response(PeerOutputSerializer(peer).data)


def peer_action_views() -> dict[str, type[PeerActionApi]]:
    return {
        action: type(f"Peer{action.title()}Api", (PeerActionApi,), {"action_name": action})
        for action in PEER_ACTIONS
    }


class PeerAgentSpawnApi(APIView):
    """POST /peers/{id}/agents: the same body as POST /agents, run on the peer."""

    permission_classes = [IsAuthenticated]

    class ContextSerializer(serializers.Serializer[dict[str, Any]]):
        repository = serializers.CharField(max_length=1000)
        branch = serializers.CharField(max_length=250, default="main")
        work_items = serializers.ListField(
            child=serializers.CharField(max_length=2000), default=list, max_length=100
        )
        skills = serializers.ListField(
            child=serializers.CharField(max_length=200), default=list, max_length=50
        )
        instructions = serializers.CharField(max_length=100_000, default="", allow_blank=True)

    class InputSerializer(serializers.Serializer[dict[str, Any]]):
        task_id = serializers.RegexField(r"^[A-Za-z0-9._-]{1,100}$", max_length=100)
        agent_type = serializers.ChoiceField(
            choices=["worker", "reviewer", "tester"], default="worker"
        )
        runtime = serializers.ChoiceField(choices=["claude", "script"])
        script = serializers.CharField(max_length=100_000, required=False, allow_blank=True)
        options = serializers.DictField(required=False, default=dict)

    class OutputSerializer(serializers.Serializer[Agent]):
        agent_id = serializers.UUIDField(source="id")
        state = serializers.CharField()
        status = serializers.CharField(source="state")
        node = serializers.CharField()

    @extend_schema(
        operation_id="peers_agents_spawn",
        request=InputSerializer,
        responses={202: OutputSerializer},
    )
    def post(self, request: Request, peer_id: uuid.UUID) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        context = self.ContextSerializer(data=request.data.get("context"))
        context.is_valid(raise_exception=True)
        spawn = {**serializer.validated_data, "context": context.validated_data}
        agent = remote_agent_spawn(peer_id=peer_id, spawn=spawn, requested_by=_actor(request))
        data = self.OutputSerializer(agent).data
        data["remote_agent_id"] = agent.sandbox_handle["remote_agent_id"]
        return Response(data, status=status.HTTP_202_ACCEPTED)
