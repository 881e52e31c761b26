"""Hub side: agents this hub runs on a peer, and how a kill reaches them."""

import uuid
from typing import Any

from django.db import transaction

from agents.models import Agent
from agents.services import REMOTE_SANDBOX, SpawnRequest, agent_register_remote, spawn_guards_check
from audit.services import audit_record
from federation.client import command_send, connect_send, identity_fetch
from federation.documents import identity_validate, peer_url_problem
from federation.errors import (
    FederationError,
    PeerAnswerInvalid,
    PeerStateConflict,
    PeerUrlInvalid,
)
from federation.models import Peer, PeerState, RemoteAgent
from federation.selectors import peer_active_list, peer_get
from federation.services import peer_record_outbound


def spawn_request_from(spawn: dict[str, Any]) -> SpawnRequest:
    context, options = spawn.get("context") or {}, spawn.get("options") or {}
    return SpawnRequest(
        task_id=spawn["task_id"],
        agent_type=spawn.get("agent_type", "worker"),
        runtime=spawn["runtime"],
        script=spawn.get("script", ""),
        repository=context.get("repository", ""),
        base_branch=context.get("branch", "main"),
        work_items=list(context.get("work_items") or []),
        skills=list(context.get("skills") or []),
        instructions=context.get("instructions", ""),
        sandbox=REMOTE_SANDBOX,
        timeout_s=int(options.get("timeout_s") or 0),
        max_retries=int(options.get("max_retries") or 0),
        gate_profile=options.get("gate_profile", "standard"),
        # The mode as the peer will read it (true and false still mean on and off).
        network=options.get("network", "off"),
        allow_hosts=options.get("allow_hosts") or (),
    )


def remote_agent_spawn(*, peer_id: uuid.UUID, spawn: dict[str, Any], requested_by: str) -> Agent:
    """Ask a peer to run an agent and record it here as a remote agent; returns the local row."""
    peer = peer_get(peer_id=peer_id)
    if peer.state != PeerState.ACTIVE:
        raise PeerStateConflict(f"peer {peer.instance_id} is {peer.state}, not ACTIVE")
    request = spawn_request_from(spawn)
    # This hub's own guards (a halt) refuse before the peer runs anything.
    spawn_guards_check(request=request, requested_by=requested_by)
    answer = command_send(peer=peer, command="agent.spawn", payload=spawn)
    try:
        remote_id = uuid.UUID(str(answer.get("agent_id")))
    except ValueError:
        raise PeerAnswerInvalid(
            f"{peer.instance_id} answered agent.spawn without an agent_id"
        ) from None
    handle = {"backend": REMOTE_SANDBOX, "peer_id": str(peer.id), "remote_agent_id": str(remote_id)}
    with transaction.atomic():
        agent = agent_register_remote(
            request=request, requested_by=requested_by, node=peer.instance_id, sandbox_handle=handle
        )
        RemoteAgent.objects.create(agent=agent, peer=peer, remote_agent_id=remote_id)
    audit_record(
        actor=requested_by,
        action="agent.spawn_remote",
        target=f"agent:{agent.id}",
        data={"peer": peer.instance_id, "remote_agent_id": str(remote_id)},
    )
    return agent


def remote_agent_kill(*, handle: dict[str, Any], reason: str) -> dict[str, Any]:
    """Send agent.kill for the remote agent a sandbox handle names."""
    peer_id = handle.get("peer_id")
    peer = Peer.objects.filter(id=peer_id).first() if peer_id is not None else None
    if peer is None:
        raise PeerStateConflict(f"the peer {peer_id} of this agent is gone")
    payload = {"agent_id": handle["remote_agent_id"], "reason": reason}
    return command_send(peer=peer, command="agent.kill", payload=payload)


def remote_agent_status(*, peer: Peer, remote_agent_id: uuid.UUID) -> dict[str, Any]:
    return command_send(
        peer=peer, command="agent.status", payload={"agent_id": str(remote_agent_id)}
    )


def peer_connect(*, url: str, actor: str) -> Peer:
    """Connect to the hub at ``url``: fetch its identity, introduce ourselves, pin its keys.

    The peer answers the signed connect with a message signed by the keys its
    identity document published; only then is it recorded here, ACTIVE (the
    operator asked for it). It records us as PENDING until its admin accepts.
    """
    problem = peer_url_problem(url)
    if problem:
        raise PeerUrlInvalid(f"the peer URL {problem}", fields={"url": [problem]})
    identity = identity_fetch(url=url)
    keys = identity_validate(identity)["keys"]
    connect_send(url=url, keys=keys)
    return peer_record_outbound(identity=identity, actor=actor)


def peers_announce_keys(*, sign_version: int) -> list[tuple[str, str]]:
    """After a key rotation, send our new key list to every ACTIVE peer.

    The connect is signed with the previous key, which the peers have pinned,
    so they can take the new keys without fetching anything.
    """
    outcomes = []
    for peer in peer_active_list():
        try:
            connect_send(url=peer.url, keys=peer.keys, sign_version=sign_version)
            outcomes.append((peer.instance_id, ""))
        except FederationError as error:
            outcomes.append((peer.instance_id, error.message))
    return outcomes
