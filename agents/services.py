"""Writes on agents: spawn, remote agents, requeue, resume.

Stopping an agent (the kill chokepoint), kill-all and the cleanup after a
kill live in ``agents.termination``, appending an event in
``agents.lifecycle`` and the remote sandbox's name in ``agents.sandboxes``.
Their names are re-exported here, so every caller still reaches the writes
on agents through this module.
"""

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.module_loading import import_string

from agents import workspace
from agents.errors import (
    AgentError,
    AgentNotFound,
    ConcurrencyLimitReached,
    InvalidBudget,
    InvalidTransition,
)
from agents.lifecycle import _PROGRESS, agent_finished_send, agent_transition
from agents.lifecycle import agent_event_append as agent_event_append
from agents.models import (
    LIVE_STATES,
    Agent,
    AgentEventKind,
    AgentState,
    NetworkMode,
)
from agents.sandboxes import REMOTE_SANDBOX as REMOTE_SANDBOX
from agents.termination import Termination as Termination
from agents.termination import agent_cleanup as agent_cleanup
from agents.termination import agent_sandbox_kill as agent_sandbox_kill
from agents.termination import agent_stop as agent_stop
from agents.termination import agent_stop_many as agent_stop_many
from agents.termination import agent_stopped_cleanup as agent_stopped_cleanup
from agents.termination import agent_terminate as agent_terminate
from agents.wakeup import supervisor_wake
from audit.services import audit_record

# Any constant will do: it only has to be the same in every process.
_SPAWN_LOCK_KEY = 0x466C6F74


@dataclass(frozen=True)
class SpawnRequest:
    task_id: str
    agent_type: str
    runtime: str
    repository: str
    base_branch: str
    script: str = ""
    work_items: list[str] = field(default_factory=list)
    skills: list[str] = field(default_factory=list)
    instructions: str = ""
    sandbox: str = ""
    timeout_s: int = 0
    max_retries: int = 0
    # 1 (lowest) to 10: node supervisors claim higher priorities first.
    priority: int = 5
    gate_profile: str = "standard"
    # A NetworkMode; True and False (older callers, older peers) mean "on" and "off".
    network: str | bool = NetworkMode.OFF
    # Narrows the operator's egress allowlist for this agent ("allowlist" mode only).
    allow_hosts: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    origin: str = "local"

    def __post_init__(self) -> None:
        # Every way of spawning builds this request, so the mode is checked here once.
        network = self.network
        if isinstance(network, bool):
            network = NetworkMode.ON if network else NetworkMode.OFF
        if network not in NetworkMode.values:
            message = "network must be off, allowlist or on (true means on, false off)"
            raise AgentError(message, fields={"options.network": [message]})
        hosts = self.allow_hosts
        if not isinstance(hosts, list | tuple) or not all(isinstance(h, str) for h in hosts):
            message = "allow_hosts must be a list of host or host:port strings"
            raise AgentError(message, fields={"options.allow_hosts": [message]})
        if self.allow_hosts and network != NetworkMode.ALLOWLIST:
            message = "allow_hosts applies only with network allowlist"
            raise AgentError(message, fields={"options.allow_hosts": [message]})
        object.__setattr__(self, "network", str(network))
        object.__setattr__(self, "allow_hosts", tuple(self.allow_hosts))

    def stored_options(self) -> dict[str, Any]:
        """The options kept on the agent: the request's own, and its allow_hosts if any."""
        if not self.allow_hosts:
            return self.options
        return {**self.options, "allow_hosts": list(self.allow_hosts)}


def spawn_guards_check(*, request: SpawnRequest, requested_by: str) -> None:
    """Run every configured guard; a guard refuses by raising ``SpawnRefused``."""
    for path in settings.FLOTILLA_SPAWN_GUARDS:
        import_string(path)(request=request, requested_by=requested_by)


def agent_spawn(*, request: SpawnRequest, requested_by: str) -> Agent:
    spawn_guards_check(request=request, requested_by=requested_by)
    with transaction.atomic():
        # Two spawns racing for the last slot must not both get it. SQLite's
        # IMMEDIATE transactions already serialise writers; PostgreSQL needs a lock.
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SPAWN_LOCK_KEY])
        # Agents that run on a peer hub take no slot here.
        live = (
            Agent.objects.filter(state__in=LIVE_STATES)
            .exclude(sandbox_backend=REMOTE_SANDBOX)
            .count()
        )
        if live >= settings.MAX_CONCURRENT_AGENTS:
            raise ConcurrencyLimitReached(
                f"{live} agents are already live; the limit is {settings.MAX_CONCURRENT_AGENTS}"
            )
        agent = Agent.objects.create(
            task_id=request.task_id,
            agent_type=request.agent_type,
            runtime=request.runtime,
            script=request.script,
            repository=workspace.repository_normalise(request.repository),
            base_branch=request.base_branch,
            work_branch="",
            work_items=request.work_items,
            skills=request.skills,
            instructions=request.instructions,
            options=request.stored_options(),
            gate_profile=request.gate_profile,
            sandbox_backend=request.sandbox or settings.FLOTILLA_SANDBOX_BACKEND,
            timeout_s=request.timeout_s or settings.FLOTILLA_DEFAULT_TIMEOUT_S,
            network=request.network,
            max_retries=request.max_retries,
            priority=request.priority,
            pool=settings.FLOTILLA_NODE_POOL,
            requested_by=requested_by,
            origin=request.origin,
        )
        agent.work_branch = f"flotilla/{agent.id}"
        agent.save(update_fields=["work_branch"])
        agent_event_append(
            agent_id=agent.id,
            kind=AgentEventKind.STATE,
            data={"from": None, "to": AgentState.QUEUED},
        )
        # The row is the queue: a node supervisor claims it (agents/supervisor.py).
        transaction.on_commit(supervisor_wake)
    return agent


def agent_register_remote(
    *, request: SpawnRequest, requested_by: str, node: str, sandbox_handle: dict[str, Any]
) -> Agent:
    """Record an agent that a peer hub runs for us: a row to watch and kill, never enqueued."""
    spawn_guards_check(request=request, requested_by=requested_by)
    with transaction.atomic():
        agent = Agent.objects.create(
            task_id=request.task_id,
            agent_type=request.agent_type,
            runtime=request.runtime,
            script=request.script,
            repository=request.repository,
            base_branch=request.base_branch,
            work_branch="",
            work_items=request.work_items,
            skills=request.skills,
            instructions=request.instructions,
            options=request.stored_options(),
            gate_profile=request.gate_profile,
            sandbox_backend=REMOTE_SANDBOX,
            sandbox_handle=sandbox_handle,
            node=node,
            timeout_s=request.timeout_s or settings.FLOTILLA_DEFAULT_TIMEOUT_S,
            network=request.network,
            max_retries=request.max_retries,
            requested_by=requested_by,
            origin=request.origin,
        )
        agent_event_append(
            agent_id=agent.id,
            kind=AgentEventKind.STATE,
            data={"from": None, "to": AgentState.QUEUED},
        )
    return agent


def agent_mirror_state(
    *, agent_id: uuid.UUID, state: str, data: dict[str, Any] | None = None, **fields: Any
) -> bool:
    """Copy a state that the hub running a remote agent reported, with its event.

    ``fields`` may set progress, result, error, work_branch. A final state is
    never left, and a state the row already has adds no event; True if the
    row changed.
    """
    now = timezone.now()
    changes: dict[str, Any] = {"state": state, **fields}
    changes.setdefault("progress", _PROGRESS.get(state, 0))
    if state not in LIVE_STATES:
        changes.setdefault("finished_at", now)
    with transaction.atomic():
        current = (
            Agent.objects.filter(id=agent_id, state__in=LIVE_STATES)
            .values_list("state", "started_at")
            .first()
        )
        if current is None or current[0] == state:
            return False
        if state != AgentState.QUEUED and current[1] is None:
            changes.setdefault("started_at", now)
        if not Agent.objects.filter(id=agent_id, state=current[0]).update(**changes):
            return False
        event = {"from": current[0], "to": state, **(data or {})}
        agent_event_append(agent_id=agent_id, kind=AgentEventKind.STATE, data=event)
        if state not in LIVE_STATES:
            agent_finished_send(agent_id=agent_id, state=state)
    return True


def agent_requeue(
    *,
    agent: Agent,
    reason: str,
    attempt: int,
    delay_s: float = 0,
    lease_held: int | None = None,
) -> bool:
    """Put an agent whose run ended for a reason not its own back in the queue.

    The run's sandbox and worktree (named by ``agent``, read before this call)
    are removed after the row stops naming them; any node may claim the agent
    again once ``delay_s`` has passed (by the database's clock). The lease
    moves on, so the run that held the agent can write nothing more. False
    when another party moved it first.
    """
    run_after = ExpressionWrapper(Now() + timedelta(seconds=delay_s), output_field=DateTimeField())
    won = agent_transition(
        agent_id=agent.id,
        to=AgentState.QUEUED,
        reason=reason,
        only_from=frozenset({agent.state}),
        lease_held=lease_held,
        lease=F("lease") + 1,
        attempt=attempt,
        progress=0,
        sandbox_handle={},
        worktree_path="",
        node="",
        supervisor_pid=None,
        supervisor_started=None,
        heartbeat_at=None,
        started_at=None,
        run_after=run_after if delay_s else None,
    )
    if not won:
        return False
    agent_sandbox_kill(agent=agent)
    agent_cleanup(agent=agent)
    transaction.on_commit(supervisor_wake)
    return True


def agent_unpushed_commits(*, agent: Agent) -> int:
    """Commits on the agent's branch that no remote branch holds (0 when there is no branch)."""
    try:
        return workspace.branch_unpushed_commits(
            repository=agent.repository, work_branch=agent.work_branch
        )
    except workspace.WorkspaceError:
        return 0


def retry_backoff_s(*, attempt: int) -> float:
    """How long retry number ``attempt`` (from 1) waits: doubling, up to the maximum."""
    delay = settings.FLOTILLA_RETRY_BACKOFF_S * 2 ** max(0, attempt - 1)
    return float(min(delay, settings.FLOTILLA_RETRY_BACKOFF_MAX_S))


def agent_resume(
    *, agent_id: uuid.UUID, budget_usd: Decimal, actor: str, reason: str = ""
) -> Agent:
    """Raise a paused agent's budget and hand it back to a worker, which continues its conversation.

    The agent stays ``paused`` until a worker takes it (``paused → running``),
    so a resume that two workers receive runs once, and no worker is held
    while it waits. Resuming again is harmless, and re-sends a lost task.
    """
    agent = Agent.objects.filter(id=agent_id).first()
    if agent is None:
        raise AgentNotFound(f"no agent with id {agent_id}")
    if agent.sandbox_backend == REMOTE_SANDBOX:
        raise InvalidTransition(f"agent {agent.id} runs on {agent.node}; resume it on that hub")
    if agent.state != AgentState.PAUSED:
        raise InvalidTransition(f"agent {agent.id} is {agent.state}; only a paused agent resumes")
    if budget_usd <= agent.cost_usd:
        raise InvalidBudget(
            f"the budget must be above the ${agent.cost_usd} already spent",
            fields={"budget_usd": [f"must be more than {agent.cost_usd}"]},
        )
    previous = (agent.options or {}).get("budget_usd")
    with transaction.atomic():
        options = {**(agent.options or {}), "budget_usd": str(budget_usd)}
        if not Agent.objects.filter(id=agent.id, state=AgentState.PAUSED).update(options=options):
            raise InvalidTransition(f"agent {agent.id} is not paused any more")
        message = f"budget raised from ${previous} to ${budget_usd} by {actor}; resuming"
        agent_event_append(agent_id=agent.id, kind=AgentEventKind.LOG, data={"message": message})
        audit_record(
            actor=actor,
            action="agent.resume",
            target=f"agent:{agent.id}",
            reason=reason or "budget raised",
            data={
                "budget_usd": str(budget_usd),
                "previous_budget_usd": previous,
                "spent_usd": str(agent.cost_usd),
            },
        )
        # The supervisor of the node holding the worktree takes it (agents/supervisor.py).
        Agent.objects.filter(id=agent.id).update(resume_requested=True)
        transaction.on_commit(supervisor_wake)
    agent.refresh_from_db()
    return agent
