"""Reads of federation."""

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from federation.errors import PeerNotFound
from federation.models import Peer, PeerState, RemoteAgent


def peer_get(*, peer_id: Any) -> Peer:
    try:
        return Peer.objects.get(id=peer_id)
    except (Peer.DoesNotExist, ValidationError, ValueError, TypeError):
        raise PeerNotFound(f"no peer with id {peer_id}") from None


def peer_list(*, state: str | None = None) -> QuerySet[Peer]:
    peers = Peer.objects.all()
    return peers.filter(state=state) if state else peers


def peer_active_list() -> QuerySet[Peer]:
    return Peer.objects.filter(state=PeerState.ACTIVE)


def remote_agent_get(*, agent_id: Any) -> RemoteAgent | None:
    return RemoteAgent.objects.select_related("peer").filter(agent_id=agent_id).first()
