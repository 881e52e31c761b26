"""Retrying an agent whose run ended without success: a new agent with the same spec.

The failed agent is never revived (its events, patches and gate report stay
as they were); a retry is a new agent, spawned through ``agent_spawn`` like
every other, so the kill switch's guard and the concurrency limit apply, and
the operator's limits hold it when it runs (``agents.limits.agent_limits``).
The new agent records where it came from in ``options.retry_of``.
"""

import uuid
from typing import Any

from django.db import transaction

from agents.errors import AgentError
from agents.models import Agent, AgentEventKind, AgentState
from agents.selectors import agent_get
from agents.services import REMOTE_SANDBOX, SpawnRequest, agent_event_append, agent_spawn
from audit.services import audit_record

# Final and unsuccessful: a failure (a crash, a timeout, a gate rejection, a
# budget that ran out of retries all end ``failed``) or an operator's kill.
RETRYABLE_STATES = frozenset({AgentState.FAILED, AgentState.KILLED})
RETRY_OF = "retry_of"


class AgentNotRetryable(AgentError):
    code = "not_retryable"
    http_status = 409


def agent_retry_problem(agent: Agent) -> str | None:
    """Why ``agent`` may not be retried here, or None when it may."""
    if agent.state == AgentState.PAUSED:
        return f"agent {agent.id} is paused; resume it with a higher budget instead"
    if agent.state not in RETRYABLE_STATES:
        return f"agent {agent.id} is {agent.state}; only a failed or killed agent can be retried"
    if agent.sandbox_backend == REMOTE_SANDBOX:
        # Spawning there again is the federation's work, which this app cannot do.
        return f"agent {agent.id} ran on the peer hub {agent.node}; spawn it on that hub again"
    if agent.origin != "local":
        return f"agent {agent.id} was asked for by the peer hub {agent.origin}; only it may retry"
    return None


def agent_retry_request(agent: Agent) -> SpawnRequest:
    """The spawn request that asks for ``agent`` again, marked as its retry."""
    options: dict[str, Any] = dict(agent.options or {})
    allow_hosts = options.pop("allow_hosts", None) or ()
    options[RETRY_OF] = str(agent.id)
    return SpawnRequest(
        task_id=agent.task_id,
        agent_type=agent.agent_type,
        runtime=agent.runtime,
        repository=agent.repository,
        base_branch=agent.base_branch,
        script=agent.script,
        work_items=list(agent.work_items or []),
        skills=list(agent.skills or []),
        instructions=agent.instructions,
        sandbox=agent.sandbox_backend,
        timeout_s=agent.timeout_s,
        max_retries=agent.max_retries,
        priority=agent.priority,
        gate_profile=agent.gate_profile,
        network=agent.network,
        allow_hosts=tuple(allow_hosts),
        options=options,
    )


def agent_retry(*, agent_id: uuid.UUID | str, requested_by: str, reason: str = "") -> Agent:
    """Start a new agent with the spec of ``agent_id``, which ended failed or killed.

    The new agent belongs to ``requested_by``. The old one gets a log event
    naming its retry, and the retry is audited, in the spawn's transaction.
    Raises ``AgentNotFound``, ``AgentNotRetryable`` and whatever the spawn
    raises (``SpawnRefused`` while halted, ``ConcurrencyLimitReached``).
    """
    agent = agent_get(agent_id=agent_id)
    problem = agent_retry_problem(agent)
    if problem:
        raise AgentNotRetryable(problem)
    with transaction.atomic():
        retry = agent_spawn(request=agent_retry_request(agent), requested_by=requested_by)
        agent_event_append(
            agent_id=agent.id,
            kind=AgentEventKind.LOG,
            data={
                "message": f"retried as agent {retry.id} by {requested_by}",
                "retry": str(retry.id),
            },
        )
        audit_record(
            actor=requested_by,
            action="agent.retry",
            target=f"agent:{agent.id}",
            reason=reason or f"retry of a {agent.state} agent",
            data={"retry_id": str(retry.id), "state": agent.state, "error": agent.error[:500]},
        )
    return retry
