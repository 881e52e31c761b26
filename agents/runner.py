"""One agent run, from a queued row to a pushed branch, in a worker process.

Every step starts with a conditional transition; losing one (the agent was
killed meanwhile, or this is a second delivery of the same task) means
another party owns the agent now, and the run stops after cleaning up what
it created itself.
"""

import logging
from pathlib import Path
from typing import Any

from django.conf import settings

from agents import workspace
from agents.delivery import DeliveryReport, agent_commit, agent_push
from agents.lifecycle import agent_transition
from agents.models import Agent, AgentEventKind, AgentState
from agents.reconciler import supervisor_identity
from agents.reconnect import database_retrying
from agents.runtimes import runtime_for
from agents.runtimes.base import RunContext, RunOutcome
from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxError, SandboxSpec
from agents.services import agent_cleanup, agent_enqueue_resume, agent_event_append

logger = logging.getLogger(__name__)


class RunLost(Exception):
    """Another party (a kill, a reconciler) moved the agent; this run must stop."""


def agent_run(*, agent_id: Any) -> None:
    if not agent_transition(
        agent_id=agent_id,
        to=AgentState.SPAWNING,
        node=settings.FLOTILLA_NODE_NAME,
        **supervisor_identity(),
    ):
        logger.info("agent %s is not queued any more; nothing to do", agent_id)
        return
    _supervise(Agent.objects.get(id=agent_id), resuming=False)


# How many times a resume task may be handed on to find the node holding the worktree.
_RESUME_HOPS = 50


def agent_resume_run(*, agent_id: Any, hops: int = 0) -> None:
    """Continue a paused agent, on the node that holds its worktree (docs/claude.md)."""
    agent = Agent.objects.filter(id=agent_id, state=AgentState.PAUSED).first()
    if agent is None:
        logger.info("agent %s is not paused any more; nothing to resume", agent_id)
        return
    if agent.node != settings.FLOTILLA_NODE_NAME:
        if hops < _RESUME_HOPS:
            agent_enqueue_resume(agent_id=agent.id, hops=hops + 1)
        else:
            message = f"no worker on node {agent.node} took the resume; resume it again"
            agent_event_append(
                agent_id=agent.id, kind=AgentEventKind.LOG, data={"message": message}
            )
        return
    if not agent_transition(
        agent_id=agent.id,
        to=AgentState.RUNNING,
        error="",
        only_from=frozenset({AgentState.PAUSED}),
        **supervisor_identity(),
    ):
        return
    agent.refresh_from_db()
    _supervise(agent, resuming=True)


def _supervise(agent: Agent, *, resuming: bool) -> None:
    """Prepare, run the runtime, deliver or pause; whatever happens, clean up after the run."""
    keep_worktree = False
    try:
        context = _prepare(agent, resuming=resuming)
        if not resuming:
            _advance(agent, AgentState.RUNNING)
        outcome = runtime_for(agent.runtime).run(context)
        if context.is_cancelled():
            raise RunLost()
        if outcome.paused:
            keep_worktree = _pause(context, outcome)
            return
        if not outcome.succeeded:
            _end(
                agent,
                AgentState.FAILED,
                reason=outcome.error,
                error=outcome.error,
                result=outcome.result,
            )
            return
        if outcome.delivered:
            # The runtime's own finish pushed through the gates and left the agent in pushing.
            result = {**outcome.result, "summary": outcome.summary}
            _end(agent, AgentState.COMPLETED, result=result)
            return
        agent_deliver(context=context, outcome=outcome)
    except RunLost:
        logger.info("agent %s was taken over (killed?); the run stops", agent.id)
    except (workspace.WorkspaceError, SandboxError) as error:
        _end(agent, AgentState.FAILED, reason=str(error), error=str(error))
    except Exception as error:
        logger.exception("agent %s crashed", agent.id)
        message = f"internal error: {type(error).__name__}: {error}"
        _end(agent, AgentState.FAILED, reason=message, error=message)
    finally:
        if not keep_worktree and not getattr(agent, "released", False):
            agent.refresh_from_db()
            # Whoever killed the agent cleans up after it (the kill switch, or
            # the kill listener of this node); doing it here too would only
            # compete for the CPU with the kills of a kill-all. The reconciler
            # removes whatever a crashed killer left.
            if agent.state != AgentState.KILLED:
                agent_cleanup(agent=agent)


def _end(agent: Agent, to: AgentState, **fields: Any) -> bool:
    """Release the sandbox and the worktree, then enter the final state ``to``.

    Cleaning up first means that whoever sees the final state (an API client,
    a dashboard, a project waiting on the agent) finds nothing of the run
    left. A kill that lands in between wins the state and finds nothing to do.
    """

    def end() -> bool:
        agent.refresh_from_db()
        agent_cleanup(agent=agent)
        agent.released = True
        return agent_transition(agent_id=agent.id, to=to, **fields)

    return database_retrying(end)


def _pause(context: RunContext, outcome: RunOutcome) -> bool:
    """Free the sandbox, then pause: no resume can start before it is gone. The worktree stays."""
    context.sandbox.remove(context.handle)
    return agent_transition(
        agent_id=context.agent.id,
        to=AgentState.PAUSED,
        reason=outcome.error,
        error=outcome.error,
        result=outcome.result,
        sandbox_handle={},
    )


def _prepare(agent: Agent, *, resuming: bool = False) -> RunContext:
    path = workspace.worktree_path(agent_id=str(agent.id), task_id=agent.task_id)
    if resuming:
        # A paused agent keeps its worktree (and any commits in it); only the sandbox is new.
        if not path.is_dir():
            raise workspace.WorkspaceError(f"the worktree of the paused agent is gone: {path}")
    else:
        Agent.objects.filter(id=agent.id).update(worktree_path=str(path))
        agent.worktree_path = str(path)
        workspace.worktree_create(
            repository=agent.repository,
            base_branch=agent.base_branch,
            work_branch=agent.work_branch,
            path=path,
        )
    sandbox = sandbox_backend(agent.sandbox_backend)
    spec = SandboxSpec(
        agent_id=str(agent.id),
        workspace=path,
        network=agent.network,
        memory_mb=int(agent.options.get("memory_mb") or settings.FLOTILLA_SANDBOX_MEMORY_MB),
        pids=int(agent.options.get("pids") or settings.FLOTILLA_SANDBOX_PIDS),
        cpus=float(agent.options.get("cpus") or settings.FLOTILLA_SANDBOX_CPUS),
    )
    # The handle is stored before anything runs, so a kill can always find it.
    handle = sandbox.start(spec)
    Agent.objects.filter(id=agent.id).update(sandbox_handle=handle)
    agent.sandbox_handle = handle

    def emit(kind: str, data: dict[str, Any]) -> None:
        database_retrying(lambda: agent_event_append(agent_id=agent.id, kind=kind, data=data))

    def is_cancelled() -> bool:
        # A database restart must not end (or strand) the run: reconnect and ask again.
        return database_retrying(
            lambda: Agent.objects.filter(id=agent.id, state__in=_FINAL).exists()
        )

    return RunContext(
        agent=agent,
        sandbox=sandbox,
        handle=handle,
        worktree=Path(path),
        emit=emit,
        output=lambda lines: emit(AgentEventKind.OUTPUT, {"lines": lines}),
        is_cancelled=is_cancelled,
    )


_FINAL = [AgentState.COMPLETED, AgentState.FAILED, AgentState.KILLED]


def _advance(agent: Agent, to: AgentState, **fields: Any) -> None:
    if not agent_transition(agent_id=agent.id, to=to, **fields):
        raise RunLost()


def agent_deliver(*, context: RunContext, outcome: RunOutcome) -> None:
    """Commit what the agent changed and push its branch: the orchestrator's job alone."""
    agent = context.agent
    _advance(agent, AgentState.GATING)
    result = {**outcome.result, "summary": outcome.summary}
    committed = agent_commit(context=context, message=_commit_message(agent, outcome))
    if not committed.approved:
        _fail_on_gates(agent, committed, result)
        return
    pushed = agent_push(
        context=context,
        summary=outcome.summary,
        on_approved=lambda: _advance(agent, AgentState.PUSHING),
    )
    if not pushed.approved:
        _fail_on_gates(agent, pushed, result)
        return
    result["pushed_commit"] = pushed.sha
    if not _end(agent, AgentState.COMPLETED, result=result):
        raise RunLost()


def _fail_on_gates(agent: Agent, report: DeliveryReport, result: dict[str, Any]) -> None:
    """A gate rejection ends a script agent: it cannot try again, so it fails with the report."""
    result = {**result, "pushed_commit": None, "gates": report.as_dict()}
    if not _end(agent, AgentState.FAILED, reason=report.message, error=report.text, result=result):
        raise RunLost()


def _commit_message(agent: Agent, outcome: RunOutcome) -> str:
    title = f"{agent.task_id}: {outcome.summary or 'agent work'}"[:72]
    return f"{title}\n\nAgent: {agent.id}\nRuntime: {agent.runtime}\n"
