"""The agent state machine.

Each transition is a single conditional UPDATE guarded by the states it may
come from, so when a kill races a completion exactly one of them changes the
row and the other sees a count of zero. The winner appends the event in the
same transaction.
"""

import uuid
from typing import Any

from django.db import models, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from agents.models import LIVE_STATES, Agent, AgentEvent, AgentEventKind, AgentState
from agents.signals import agent_finished

ALLOWED_PREDECESSORS: dict[str, frozenset[str]] = {
    # Only the reconciler moves an agent back to the queue: its supervisor
    # died mid-run and it has retries left.
    AgentState.QUEUED: frozenset(
        {AgentState.SPAWNING, AgentState.RUNNING, AgentState.GATING, AgentState.PUSHING}
    ),
    AgentState.SPAWNING: frozenset({AgentState.QUEUED}),
    # A Claude agent goes back to work after its commit or finish was gated
    # (a rejection is a tool result it must act on) and after a resume.
    AgentState.RUNNING: frozenset({AgentState.SPAWNING, AgentState.PAUSED, AgentState.GATING}),
    AgentState.PAUSED: frozenset({AgentState.RUNNING}),
    AgentState.GATING: frozenset({AgentState.RUNNING}),
    AgentState.PUSHING: frozenset({AgentState.GATING}),
    AgentState.COMPLETED: frozenset({AgentState.PUSHING}),
    AgentState.FAILED: LIVE_STATES,
    AgentState.KILLED: LIVE_STATES,
}

_PROGRESS: dict[str, int] = {
    AgentState.SPAWNING: 5,
    AgentState.RUNNING: 10,
    AgentState.GATING: 80,
    AgentState.PUSHING: 90,
    AgentState.COMPLETED: 100,
}


def agent_transition(
    *,
    agent_id: uuid.UUID,
    to: AgentState,
    reason: str = "",
    only_from: frozenset[str] | None = None,
    lease_held: int | None = None,
    **fields: Any,
) -> bool:
    """Move an agent to ``to`` if its current state allows it; True if this call won.

    With ``lease_held``, only while the row still carries that claim
    (agents/leases.py): a run's own writes pass the lease of its claim.
    """
    allowed = ALLOWED_PREDECESSORS[to]
    if only_from is not None:
        allowed = allowed & only_from
    now = timezone.now()
    changes: dict[str, Any] = {"state": to, **fields}
    if to in _PROGRESS:
        changes["progress"] = _PROGRESS[to]
    if to == AgentState.RUNNING:
        # Coming back to running (after a pause or a gate) keeps the first start.
        first_start = Value(now, output_field=models.DateTimeField())
        changes.setdefault("started_at", Coalesce(F("started_at"), first_start))
    if to not in LIVE_STATES:
        changes["finished_at"] = now
    held = {} if lease_held is None else {"lease": lease_held}
    with transaction.atomic():
        previous = (
            Agent.objects.filter(id=agent_id, state__in=allowed, **held)
            .values_list("state", flat=True)
            .first()
        )
        if previous is None:
            return False
        won = Agent.objects.filter(id=agent_id, state=previous, **held).update(**changes) == 1
        if won:
            data = {"from": previous, "to": str(to)}
            if reason:
                data["reason"] = reason
            AgentEvent.objects.create(agent_id=agent_id, kind=AgentEventKind.STATE, data=data)
            if to not in LIVE_STATES:
                agent_finished_send(agent_id=agent_id, state=str(to))
    return won


def agents_finish(
    *, agent_ids: list[uuid.UUID], to: AgentState, reason: str, **fields: Any
) -> dict[str, str]:
    """Move every live agent of ``agent_ids`` to the final state ``to`` at once.

    The many-agent form of ``agent_transition`` for a kill-all: the live rows
    are locked and read, updated in one statement, and their events written
    in one insert, in the caller's transaction. Returns the id of every agent
    this call moved → the state it had.
    """
    assert to not in LIVE_STATES
    now = timezone.now()
    with transaction.atomic():
        previous = dict(
            Agent.objects.select_for_update()
            .filter(id__in=agent_ids, state__in=LIVE_STATES)
            .values_list("id", "state")
        )
        if not previous:
            return {}
        Agent.objects.filter(id__in=list(previous)).update(state=to, finished_at=now, **fields)
        AgentEvent.objects.bulk_create(
            AgentEvent(
                agent_id=agent_id,
                kind=AgentEventKind.STATE,
                data={"from": state, "to": str(to), **({"reason": reason} if reason else {})},
            )
            for agent_id, state in previous.items()
        )
        for agent_id in previous:
            agent_finished_send(agent_id=agent_id, state=str(to))
    return {str(agent_id): state for agent_id, state in previous.items()}


def agent_finished_send(*, agent_id: uuid.UUID, state: str) -> None:
    """Tell subscribers (projects, federation) once the final state is committed."""
    transaction.on_commit(
        lambda: agent_finished.send(sender=Agent, agent_id=str(agent_id), state=state)
    )


def agent_event_append(*, agent_id: uuid.UUID, kind: str, data: dict[str, Any]) -> AgentEvent:
    return AgentEvent.objects.create(agent_id=agent_id, kind=kind, data=data)
