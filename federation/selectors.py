"""Reads of federation."""

import uuid

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from federation.errors import PeerNotFound
from federation.models import Peer, PeerState, RemoteAgent


def peer_get(*, peer_id: uuid.UUID | str) -> Peer:
    """The peer, or ``PeerNotFound``; ``peer_id`` may be text an operator typed."""
    try:
        return Peer.objects.get(id=peer_id)
    except (Peer.DoesNotExist, ValidationError, ValueError, TypeError):
        raise PeerNotFound(f"no peer with id {peer_id}") from None


def peer_list(*, state: str | None = None) -> QuerySet[Peer]:
    peers = Peer.objects.all()
    return peers.filter(state=state) if state else peers


def peer_active_list() -> QuerySet[Peer]:
    return Peer.objects.filter(state=PeerState.ACTIVE)


def remote_agent_get(*, agent_id: uuid.UUID) -> RemoteAgent | None:
    return RemoteAgent.objects.select_related("peer").filter(agent_id=agent_id).first()
