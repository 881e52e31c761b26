"""Inbound commands from an admitted peer: agent.spawn, agent.status, agent.kill, agent.kill_all.

``command_handle`` checks the envelope, the peer's permission for the
command and the ``message_id`` idempotency record, runs the command through
the services of the agents and killswitch apps, and returns the response
envelope it stored (status, body).
"""

import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from rest_framework import serializers

from agents.apis import AgentSpawnApi, spawn_request_from
from agents.errors import AgentError
from agents.models import LIVE_STATES, Agent
from agents.selectors import agent_get, agent_visible_get, agents_visible_to
from agents.services import REMOTE_SANDBOX, agent_spawn
from audit.services import audit_record
from federation.authentication import PeerPrincipal
from federation.errors import (
    FederationError,
    MessageConflict,
    MessageMalformed,
    PeerForbidden,
    PeerQuotaExceeded,
)
from federation.models import InboundMessage, Peer
from killswitch.services import agent_kill

COMMANDS = ("agent.spawn", "agent.status", "agent.kill", "agent.kill_all")


class EnvelopeSerializer(serializers.Serializer[dict[str, Any]]):
    message_id = serializers.CharField(max_length=200)
    instance_id = serializers.CharField(max_length=100)
    command = serializers.CharField(max_length=50)
    payload = serializers.DictField()
    timestamp = serializers.CharField(max_length=64)


def _valid(serializer: serializers.Serializer[Any]) -> dict[str, Any]:
    if not serializer.is_valid():
        raise MessageMalformed("the message is not valid", fields=_fields(serializer.errors))
    data: dict[str, Any] = serializer.validated_data
    return data


def _fields(errors: Any) -> dict[str, list[str]]:
    if isinstance(errors, dict):
        return {
            str(key): [str(value)] if not isinstance(value, list) else [str(v) for v in value]
            for key, value in errors.items()
        }
    return {"non_field_errors": [str(errors)]}


def envelope_check(*, peer: Peer, body: dict[str, Any]) -> dict[str, Any]:
    """The validated envelope; the command must be known and allowed for this peer."""
    envelope = _valid(EnvelopeSerializer(data=body))
    if envelope["command"] not in COMMANDS:
        raise MessageMalformed(f"unknown command {envelope['command'][:50]!r}")
    if envelope["command"] not in (peer.allowed_commands or []):
        raise PeerForbidden(f"{envelope['command']} is not allowed for {peer.instance_id}")
    return envelope


def body_fingerprint(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def response_envelope(
    *, correlation_id: str, success: bool, data: Any = None, error: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "correlation_id": correlation_id,
        "instance_id": settings.FLOTILLA_INSTANCE_ID,
        "success": success,
        "data": data,
        "error": error,
        "timestamp": timezone.now().isoformat(),
    }


def command_handle(*, peer: Peer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    envelope = envelope_check(peer=peer, body=body)
    fingerprint = body_fingerprint(body)
    record = InboundMessage(
        peer=peer,
        message_id=envelope["message_id"],
        command=envelope["command"],
        body_sha256=fingerprint,
    )
    read_only = envelope["command"] in _READ_ONLY
    if not read_only:
        # Claim the message_id before acting, so a concurrent duplicate cannot act too.
        try:
            with transaction.atomic():
                record.save()
        except IntegrityError:
            return _stored_response(peer, envelope["message_id"], fingerprint)
    status, response = _execute(peer, envelope)
    record.response_status, record.response_body = status, response
    if read_only:
        # Nothing to protect from running twice: one write records message and answer.
        try:
            with transaction.atomic():
                record.save()
        except IntegrityError:
            return _stored_response(peer, envelope["message_id"], fingerprint)
    else:
        InboundMessage.objects.filter(id=record.id).update(
            response_status=status, response_body=response
        )
    if not response["success"]:
        audit_record(
            actor=f"peer:{peer.instance_id}",
            action=_FAILURE_ACTIONS.get(status, "federation.command_failed"),
            target=envelope["command"],
            reason=response["error"]["message"],
            data={
                "status": status,
                "code": response["error"]["code"],
                "message_id": envelope["message_id"],
            },
        )
    return status, response


_FAILURE_ACTIONS = {
    400: "federation.rejected",
    403: "federation.rejected",
    429: "federation.rejected",
}


def _execute(peer: Peer, envelope: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    try:
        data = _HANDLERS[envelope["command"]](peer=peer, payload=envelope["payload"])
    except (AgentError, FederationError) as error:
        return error.http_status, response_envelope(
            correlation_id=envelope["message_id"],
            success=False,
            error={"code": error.code, "message": error.message, "fields": error.fields},
        )
    return 200, response_envelope(correlation_id=envelope["message_id"], success=True, data=data)


_READ_ONLY = {"agent.status"}


def _stored_response(peer: Peer, message_id: str, fingerprint: str) -> tuple[int, dict[str, Any]]:
    record = InboundMessage.objects.get(peer=peer, message_id=message_id)
    if record.body_sha256 != fingerprint:
        raise MessageConflict(f"message {message_id} was already sent with another body")
    if record.response_status is None or record.response_body is None:
        raise MessageConflict(f"message {message_id} is still being processed")
    return record.response_status, record.response_body


# --- the commands -------------------------------------------------------------


def _spawn(*, peer: Peer, payload: dict[str, Any]) -> dict[str, Any]:
    data = _valid(AgentSpawnApi.InputSerializer(data=payload))
    options = data.get("options") or {}
    if options.get("sandbox") == REMOTE_SANDBOX:
        raise MessageMalformed("a peer's agent cannot itself run on another peer")
    live = _peer_agents(peer).filter(state__in=LIVE_STATES).count()
    if live >= peer.max_concurrent_agents:
        raise PeerQuotaExceeded(
            f"{peer.instance_id} already has {live} live agents here; "
            f"its quota is {peer.max_concurrent_agents}"
        )
    agent = agent_spawn(
        request=spawn_request_from(data, origin=peer.instance_id),
        requested_by=f"peer:{peer.instance_id}",
    )
    return agent_snapshot(agent)


def agent_snapshot(agent: Agent) -> dict[str, Any]:
    return {
        "agent_id": str(agent.id),
        "state": agent.state,
        "progress": agent.progress,
        "work_branch": agent.work_branch,
        "node": agent.node,
        "error": agent.error,
        "result": agent.result,
        "started_at": agent.started_at.isoformat() if agent.started_at else None,
        "finished_at": agent.finished_at.isoformat() if agent.finished_at else None,
    }


class _AgentPayload(serializers.Serializer[dict[str, Any]]):
    agent_id = serializers.UUIDField()
    reason = serializers.CharField(max_length=2000, required=False, default="killed by peer")


def _peer_agents(peer: Peer) -> QuerySet[Agent]:
    """The agents ``peer`` asked for, found as any principal's are (``agents_visible_to``)."""
    return agents_visible_to(PeerPrincipal(peer=peer, instance_id=peer.instance_id))


def _own_agent(peer: Peer, payload: dict[str, Any]) -> tuple[Agent, str]:
    data = _valid(_AgentPayload(data=payload))
    # Another hub's agents, and ours, are not this peer's business, not even their existence.
    viewer = PeerPrincipal(peer=peer, instance_id=peer.instance_id)
    return agent_visible_get(viewer=viewer, agent_id=data["agent_id"]), data["reason"]


def _status(*, peer: Peer, payload: dict[str, Any]) -> dict[str, Any]:
    agent, _ = _own_agent(peer, payload)
    return agent_snapshot(agent)


def _kill(*, peer: Peer, payload: dict[str, Any]) -> dict[str, Any]:
    agent, reason = _own_agent(peer, payload)
    termination = agent_kill(agent_id=agent.id, reason=reason, actor=f"peer:{peer.instance_id}")
    return {
        "agent_id": str(agent.id),
        "killed": termination.terminated,
        "previous_state": termination.previous_state,
        "state": agent_get(agent_id=agent.id).state,
    }


class _ReasonPayload(serializers.Serializer[dict[str, Any]]):
    reason = serializers.CharField(max_length=2000, required=False, default="killed by peer")


def _kill_all(*, peer: Peer, payload: dict[str, Any]) -> dict[str, Any]:
    """Kill every live agent this peer asked for (never another hub's or local ones)."""
    reason = _valid(_ReasonPayload(data=payload))["reason"]
    ids = list(_peer_agents(peer).filter(state__in=LIVE_STATES).values_list("id", flat=True))
    killed, errors = 0, []
    for agent_id in ids:
        try:
            termination = agent_kill(
                agent_id=agent_id, reason=reason, actor=f"peer:{peer.instance_id}"
            )
            killed += int(termination.terminated)
        except AgentError as error:
            errors.append({"agent_id": str(agent_id), "error": str(error)})
    return {"total": len(ids), "killed": killed, "failed": len(errors), "errors": errors}


_HANDLERS: dict[str, Callable[..., dict[str, Any]]] = {
    "agent.spawn": _spawn,
    "agent.status": _status,
    "agent.kill": _kill,
    "agent.kill_all": _kill_all,
}
