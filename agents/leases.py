"""Writes of the node supervisors: claiming queued agents, renewing and handing back leases.

A node supervisor holds an agent from the claim to its final state (or a
pause). The row says who holds it (``node``, ``supervisor_pid`` and
``supervisor_started``) and since when the holder last proved it was alive
(``heartbeat_at``, always the database's clock). Every write here is a
conditional update, so two nodes claiming at once never both win an agent.
"""

import uuid

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Now

from agents.lifecycle import agent_transition
from agents.models import Agent, AgentState
from agents.reconciler import SUPERVISED_STATES, supervisor_identity
from agents.services import REMOTE_SANDBOX
from agents.wakeup import supervisor_wake


def agents_claim(*, node: str, limit: int, pool: str = "") -> list[Agent]:
    """Take up to ``limit`` queued agents for ``node``: highest priority first, then oldest.

    On PostgreSQL the candidates are locked with ``SKIP LOCKED``, so nodes
    claiming at the same moment take different agents rather than queue on
    each other; on SQLite writers are serialised anyway. Each claim is the
    queued → spawning transition with its event.
    """
    if limit <= 0:
        return []
    claimed: list[uuid.UUID] = []
    holder = {
        "node": node,
        "heartbeat_at": Now(),
        "run_after": None,
        "lease": F("lease") + 1,
        **supervisor_identity(),
    }
    with transaction.atomic():
        candidates = list(
            Agent.objects.select_for_update(skip_locked=True)
            .filter(state=AgentState.QUEUED, pool=pool or settings.FLOTILLA_NODE_POOL)
            .filter(Q(run_after__isnull=True) | Q(run_after__lte=Now()))
            .exclude(sandbox_backend=REMOTE_SANDBOX)
            .order_by("-priority", "created_at")
            .values_list("id", flat=True)[:limit]
        )
        for agent_id in candidates:
            if agent_transition(agent_id=agent_id, to=AgentState.SPAWNING, **holder):
                claimed.append(agent_id)
    return list(Agent.objects.filter(id__in=claimed).order_by("-priority", "created_at"))


def agents_claim_resumes(*, node: str, limit: int) -> list[Agent]:
    """Take up to ``limit`` paused agents of ``node`` whose resume was asked for.

    A paused agent's worktree is on the node that paused it, so only that
    node's supervisor resumes it.
    """
    if limit <= 0:
        return []
    waiting = Agent.objects.filter(
        node=node, state=AgentState.PAUSED, resume_requested=True
    ).values_list("id", flat=True)[:limit]
    claimed = [
        agent_id
        for agent_id in list(waiting)
        if agent_transition(
            agent_id=agent_id,
            to=AgentState.RUNNING,
            only_from=frozenset({AgentState.PAUSED}),
            error="",
            resume_requested=False,
            heartbeat_at=Now(),
            lease=F("lease") + 1,
            **supervisor_identity(),
        )
    ]
    return list(Agent.objects.filter(id__in=claimed))


def agents_heartbeat(*, node: str, agent_ids: list[uuid.UUID]) -> set[str]:
    """Renew the lease of the agents this process runs; the ids it no longer holds.

    An agent is no longer held when it was killed or finished by another
    party, or when another node recovered it after this one's lease lapsed.
    """
    if not agent_ids:
        return set()
    held = Agent.objects.filter(
        id__in=agent_ids, node=node, state__in=SUPERVISED_STATES, **supervisor_identity()
    )
    still = {str(agent_id) for agent_id in held.values_list("id", flat=True)}
    held.update(heartbeat_at=Now())
    return {str(agent_id) for agent_id in agent_ids} - still


def agent_hand_back(*, agent: Agent, node: str) -> bool:
    """Return an agent this node stops running to the queue, without spending a retry.

    The caller has already removed the run's sandbox and worktree; any node
    may claim the agent at once.
    """
    agent.refresh_from_db()
    if agent.state not in SUPERVISED_STATES or agent.node != node:
        return False
    won = agent_transition(
        agent_id=agent.id,
        to=AgentState.QUEUED,
        reason=f"node {node} stopped; handed back to the queue",
        only_from=frozenset({agent.state}),
        progress=0,
        sandbox_handle={},
        worktree_path="",
        node="",
        supervisor_pid=None,
        supervisor_started=None,
        heartbeat_at=None,
        started_at=None,
        lease=F("lease") + 1,
    )
    if won:
        transaction.on_commit(supervisor_wake)
    return won
