"""Stopping agents: the one kill chokepoint, kill-all, and the cleanup after a kill.

``agent_stop`` marks an agent final (the conditional update is where a kill
and a completion race) and kills its sandbox, here or, through
``agents.noderouting``, on the node that runs it; ``agent_stop_many`` does the
same for many agents in one transaction. ``agent_stopped_cleanup`` and
``agent_cleanup`` then remove the sandbox and the worktree, keeping a branch
that holds unpushed commits. ``agents.services`` re-exports the public names,
and callers in other apps reach them there.
"""

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from agents import workspace
from agents.errors import AgentNotFound
from agents.lifecycle import agent_event_append, agent_transition, agents_finish
from agents.models import Agent, AgentEventKind, AgentState
from agents.noderouting import node_is_local, node_kill_request
from agents.runtimes.cli.home import cli_home_remove
from agents.sandboxes import REMOTE_SANDBOX, sandbox_backend
from agents.sandboxes.base import SandboxError


@dataclass(frozen=True)
class Termination:
    agent_id: str
    previous_state: str
    terminated: bool
    latency_ms: float
    branch_kept: bool = False
    errors: list[str] = field(default_factory=list)
    # The node the kill was routed to, when the agent runs on another node.
    routed_to: str = ""


def agent_terminate(
    *, agent_id: uuid.UUID, reason: str, to: AgentState = AgentState.KILLED
) -> Termination:
    """Stop an agent now (see ``agent_stop``), then remove its sandbox and worktree."""
    stopped = agent_stop(agent_id=agent_id, reason=reason, to=to)
    if not stopped.terminated:
        return stopped
    return agent_stopped_cleanup(termination=stopped)


def agent_stop(
    *, agent_id: uuid.UUID, reason: str, to: AgentState = AgentState.KILLED
) -> Termination:
    """Mark the agent final and kill every process of its sandbox; no cleanup yet.

    Marking comes first, so a run that finishes at the same moment loses its
    own transition and stops; everything after is idempotent. Kill-all stops
    every agent before cleaning any up, so processes die as early as possible.
    """
    started = time.monotonic()
    agent, previous, won = _stop_mark(agent_id=agent_id, reason=reason, to=to)
    if not won:
        return Termination(str(agent.id), previous, False, _ms_since(started))
    return _stop_kill(agent, previous, started)


def agent_stop_many(
    *, agent_ids: list[uuid.UUID], reason: str, to: AgentState = AgentState.KILLED
) -> dict[str, Termination | str]:
    """``agent_stop`` for many agents: all marked in one transaction, then all killed at once.

    One transaction takes the database's write lock once, and the marks are
    one UPDATE. Each sandbox backend then kills all of its agents together:
    the local backends signal every sandbox first and only then wait for
    them to empty, so no kill waits behind another. Returns agent id → its
    ``Termination``, or the message of the error that kept it from stopping.
    """
    started = time.monotonic()
    outcome: dict[str, Termination | str] = {}
    local: list[Agent] = []
    with transaction.atomic():
        previous = agents_finish(agent_ids=agent_ids, to=to, reason=reason, error=reason)
        agents = {str(agent.id): agent for agent in Agent.objects.filter(id__in=list(previous))}
        lost = Agent.objects.filter(id__in=agent_ids).exclude(id__in=list(previous))
        for lost_id, state in lost.values_list("id", "state"):
            outcome[str(lost_id)] = Termination(str(lost_id), state, False, 0.0)
        for key, agent in agents.items():
            if _kill_routed(agent):
                # Sent within this transaction, every node's request is
                # delivered the moment it commits, with no thread or
                # connection per agent here.
                outcome[key] = Termination(
                    key, previous[key], True, _ms_since(started), routed_to=agent.node
                )
            else:
                local.append(agent)
    for agent_id in agent_ids:
        outcome.setdefault(str(agent_id), f"no agent with id {agent_id}")
    by_backend: dict[str, list[Agent]] = {}
    for agent in local:
        by_backend.setdefault((agent.sandbox_handle or {}).get("backend", ""), []).append(agent)
    for backend, group in by_backend.items():
        errors = _sandboxes_kill(backend, [agent.sandbox_handle for agent in group])
        for agent in group:
            outcome[str(agent.id)] = Termination(
                str(agent.id), previous[str(agent.id)], True, _ms_since(started), errors=errors
            )
    return outcome


def _sandboxes_kill(backend: str, handles: list[dict[str, Any]]) -> list[str]:
    if not backend:
        return []  # queued agents: nothing runs yet
    try:
        sandbox_backend(backend).kill_many(handles)
    except (SandboxError, OSError) as error:
        return [f"sandbox kill: {error}"]
    return []


def _stop_mark(*, agent_id: uuid.UUID, reason: str, to: AgentState) -> tuple[Agent, str, bool]:
    """Move the agent to its final state; (agent, state it had, whether this call won)."""
    agent = Agent.objects.filter(id=agent_id).first()
    if agent is None:
        raise AgentNotFound(f"no agent with id {agent_id}")
    previous = agent.state
    if not agent_transition(agent_id=agent.id, to=to, reason=reason, error=reason):
        return agent, previous, False
    if not agent.node:
        agent.refresh_from_db()  # a worker may have taken it since it was read
    return agent, previous, True


def _kill_routed(agent: Agent) -> bool:
    """Ask the agent's node to kill it, when that is another node; True if it was asked.

    The node was fixed when a worker took the agent; the node re-reads the row
    itself, and kills and cleans up there.
    """
    return (
        agent.sandbox_backend != REMOTE_SANDBOX
        and not node_is_local(agent.node)
        and node_kill_request(agent=agent)
    )


def _stop_kill(agent: Agent, previous: str, started: float) -> Termination:
    """Kill the sandbox of an agent already marked final, here or on its node."""
    if _kill_routed(agent):
        return Termination(str(agent.id), previous, True, _ms_since(started), routed_to=agent.node)
    agent.refresh_from_db()
    errors = agent_sandbox_kill(agent=agent)
    return Termination(str(agent.id), previous, True, _ms_since(started), errors=errors)


def agent_stopped_cleanup(*, termination: Termination) -> Termination:
    if termination.routed_to:
        return termination  # the agent's node cleans up after its kill
    agent = Agent.objects.get(id=termination.agent_id)
    branch_kept, errors = agent_cleanup(agent=agent)
    return dataclasses.replace(
        termination, branch_kept=branch_kept, errors=termination.errors + errors
    )


def agent_sandbox_kill(*, agent: Agent) -> list[str]:
    handle = agent.sandbox_handle or {}
    # No backend: no sandbox was started (a paused agent, one still spawning);
    # the handle may hold only the routing mark (agents.noderouting).
    if not handle.get("backend"):
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
    if handle.get("backend"):
        try:
            sandbox_backend(handle["backend"]).remove(handle)
        except SandboxError as error:
            errors.append(f"sandbox remove: {error}")
    # A CLI agent's home (its sessions) lives exactly as long as its worktree.
    cli_home_remove(agent_id=str(agent.id))
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
        agent_event_append(
            agent_id=agent.id,
            kind=AgentEventKind.LOG,
            data={
                "message": f"branch {agent.work_branch} kept: "
                f"{report.unpushed_commits} unpushed commit(s)"
            },
        )
    return report.branch_kept, errors


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
