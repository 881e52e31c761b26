"""Operator kills: one agent or all of them, with who, why, when and how fast."""

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import TypedDict

from django.db import connections

from agents.errors import AgentError
from agents.selectors import agent_get, live_agent_ids
from agents.services import (
    Termination,
    agent_stop_many,
    agent_stopped_cleanup,
    agent_terminate,
)
from audit.services import audit_record
from killswitch.models import HubHalt

# The cleanups wait on the container engine, which removes many containers
# at once, and then on git, which takes one worktree of a repository at a time.
# Each thread holds a database connection, so their number stays bounded.
_CLEANUP_THREADS = 16


class KillError(TypedDict):
    """An agent a kill-all could not stop, and why."""

    agent_id: str
    error: str


class KillAllSummary(TypedDict):
    """What a kill-all did: live agents found, killed, and those it could not stop."""

    total: int
    killed: int
    failed: int
    errors: list[KillError]


def agent_kill(*, agent_id: uuid.UUID | str, reason: str, actor: str) -> Termination:
    """Kill one agent; ``agent_id`` may be the text an operator typed."""
    agent = agent_get(agent_id=agent_id)
    termination = agent_terminate(agent_id=agent.id, reason=f"killed by {actor}: {reason}")
    _audit_kill(termination, reason=reason, actor=actor)
    return termination


def agent_kill_all(*, reason: str, actor: str) -> KillAllSummary:
    """Kill every live agent: first every process everywhere, then the cleanup."""
    ids = live_agent_ids()
    stops = _stop_all(ids, reason, actor)
    stopped = [stop for stop in stops if isinstance(stop, Termination) and stop.terminated]
    # An agent whose kill went to its own node is cleaned up there: only the
    # audit is left to do here, and it needs no thread (nor connection) of its own.
    local = [stop for stop in stopped if not stop.routed_to]
    killed = [stop for stop in stopped if stop.routed_to]
    for termination in killed:
        _audit_kill(termination, reason=reason, actor=actor)
    with ThreadPoolExecutor(max_workers=max(1, min(len(local), _CLEANUP_THREADS))) as pool:
        killed += pool.map(lambda stop: _cleanup_one(stop, reason, actor), local)
    errors = [stop for stop in stops if isinstance(stop, dict)]
    summary = KillAllSummary(total=len(ids), killed=len(killed), failed=len(errors), errors=errors)
    audit_record(
        actor=actor,
        action="agent.kill_all",
        target="hub",
        reason=reason,
        data={**summary, "kills": [asdict(termination) for termination in killed]},
    )
    return summary


def _stop_all(ids: list[uuid.UUID], reason: str, actor: str) -> list[Termination | KillError]:
    try:
        outcome = agent_stop_many(agent_ids=ids, reason=f"killed by {actor}: {reason}")
    except AgentError as error:
        return [KillError(agent_id=str(agent_id), error=str(error)) for agent_id in ids]
    return [
        result if isinstance(result, Termination) else KillError(agent_id=agent_id, error=result)
        for agent_id, result in outcome.items()
    ]


def _cleanup_one(stopped: Termination, reason: str, actor: str) -> Termination:
    try:
        termination = agent_stopped_cleanup(termination=stopped)
        _audit_kill(termination, reason=reason, actor=actor)
        return termination
    finally:
        connections.close_all()


def _audit_kill(termination: Termination, *, reason: str, actor: str) -> None:
    audit_record(
        actor=actor,
        action="agent.kill",
        target=f"agent:{termination.agent_id}",
        reason=reason,
        data={
            "state_at_kill": termination.previous_state,
            "killed": termination.terminated,
            "latency_ms": termination.latency_ms,
            "branch_kept": termination.branch_kept,
            "errors": termination.errors,
            # A kill routed to another node: that node audits "agent.sandbox_kill".
            "routed_to": termination.routed_to,
        },
    )


def hub_halt(*, reason: str, actor: str) -> HubHalt:
    halt, _ = HubHalt.objects.update_or_create(
        id=1, defaults={"halted": True, "reason": reason, "actor": actor}
    )
    audit_record(actor=actor, action="hub.halt", target="hub", reason=reason)
    return halt


def hub_release(*, actor: str, reason: str = "") -> HubHalt:
    halt, _ = HubHalt.objects.update_or_create(
        id=1, defaults={"halted": False, "reason": "", "actor": actor}
    )
    audit_record(actor=actor, action="hub.release", target="hub", reason=reason)
    return halt
