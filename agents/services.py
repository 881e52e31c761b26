"""Writes on agents: spawn, terminate, events."""

import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils.module_loading import import_string
from django_q.tasks import async_task

from agents import workspace
from agents.errors import AgentNotFound, ConcurrencyLimitReached
from agents.lifecycle import agent_transition
from agents.models import LIVE_STATES, Agent, AgentEvent, AgentEventKind, AgentState
from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxError

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
    gate_profile: str = "standard"
    network: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    origin: str = "local"


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
        live = Agent.objects.filter(state__in=LIVE_STATES).count()
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
            options=request.options,
            gate_profile=request.gate_profile,
            sandbox_backend=request.sandbox or settings.FLOTILLA_SANDBOX_BACKEND,
            timeout_s=request.timeout_s or settings.FLOTILLA_DEFAULT_TIMEOUT_S,
            network=request.network,
            max_retries=request.max_retries,
            requested_by=requested_by,
            origin=request.origin,
        )
        agent.work_branch = f"flotilla/{agent.id}"
        agent.save(update_fields=["work_branch"])
        agent_event_append(agent_id=agent.id, kind=AgentEventKind.STATE,
                           data={"from": None, "to": AgentState.QUEUED})  # fmt: skip
        transaction.on_commit(lambda: agent_enqueue(agent_id=agent.id))
    return agent


def agent_enqueue(*, agent_id: Any) -> None:
    async_task("agents.tasks.agent_run", str(agent_id), task_name=f"agent-run-{agent_id}",
               group="agents")  # fmt: skip


def agent_event_append(*, agent_id: Any, kind: str, data: dict[str, Any]) -> AgentEvent:
    return AgentEvent.objects.create(agent_id=agent_id, kind=kind, data=data)


@dataclass(frozen=True)
class Termination:
    agent_id: str
    previous_state: str
    terminated: bool
    latency_ms: float
    branch_kept: bool = False
    errors: list[str] = field(default_factory=list)


def agent_terminate(*, agent_id: Any, reason: str, to: AgentState = AgentState.KILLED) -> Termination:
    """Stop an agent now: mark it final, kill its sandbox, remove its worktree.

    Marking comes first, so a run that finishes at the same moment loses its
    own transition and stops; everything after is idempotent.
    """
    started = time.monotonic()
    agent = Agent.objects.filter(id=agent_id).first()
    if agent is None:
        raise AgentNotFound(f"no agent with id {agent_id}")
    previous = agent.state
    if not agent_transition(agent_id=agent.id, to=to, reason=reason, error=reason):
        return Termination(str(agent.id), previous, False, _ms_since(started))
    agent.refresh_from_db()
    errors = agent_sandbox_kill(agent=agent)
    latency = _ms_since(started)
    branch_kept, cleanup_errors = agent_cleanup(agent=agent)
    return Termination(str(agent.id), previous, True, latency, branch_kept, errors + cleanup_errors)


def agent_sandbox_kill(*, agent: Agent) -> list[str]:
    handle = agent.sandbox_handle or {}
    if not handle:
        return []
    try:
        sandbox_backend(handle["backend"]).kill(handle)
    except SandboxError as error:
        return [f"sandbox kill: {error}"]
    return []


def agent_cleanup(*, agent: Agent) -> tuple[bool, list[str]]:
    """Remove the sandbox and the worktree; returns whether the branch was kept."""
    errors: list[str] = []
    handle = agent.sandbox_handle or {}
    if handle:
        try:
            sandbox_backend(handle["backend"]).remove(handle)
        except SandboxError as error:
            errors.append(f"sandbox remove: {error}")
    if not agent.worktree_path:
        return False, errors
    try:
        report = workspace.worktree_remove(
            repository=agent.repository,
            path=workspace.worktree_path(agent_id=str(agent.id), task_id=agent.task_id),
            work_branch=agent.work_branch,
        )
    except workspace.WorkspaceError as error:
        errors.append(f"worktree remove: {error}")
        return False, errors
    if report.branch_kept:
        agent_event_append(agent_id=agent.id, kind=AgentEventKind.LOG, data={
            "message": f"branch {agent.work_branch} kept: "
                       f"{report.unpushed_commits} unpushed commit(s)"})  # fmt: skip
    return report.branch_kept, errors


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
