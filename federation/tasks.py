"""django-q2 entry points of federation: ids in, one service call."""

import uuid

from federation import pending, relay, services


def agent_events_push(agent_id: str, attempt: int = 0) -> None:
    relay.relay_push(agent_id=uuid.UUID(agent_id), attempt=attempt)


def nonces_prune() -> int:
    return services.nonces_prune()


def pending_peers_expire() -> int:
    return pending.pending_peers_expire()
