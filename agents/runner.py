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
from agents.lifecycle import agent_transition
from agents.models import Agent, AgentEventKind, AgentState
from agents.runtimes import runtime_for
from agents.runtimes.base import RunContext, RunOutcome
from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxError, SandboxSpec
from agents.services import agent_cleanup, agent_event_append

logger = logging.getLogger(__name__)


class RunLost(Exception):
    """Another party (a kill, a reconciler) moved the agent; this run must stop."""


def agent_run(*, agent_id: Any) -> None:
    if not agent_transition(agent_id=agent_id, to=AgentState.SPAWNING,
                            node=settings.FLOTILLA_NODE_NAME):  # fmt: skip
        logger.info("agent %s is not queued any more; nothing to do", agent_id)
        return
    agent = Agent.objects.get(id=agent_id)
    try:
        context = _prepare(agent)
        _advance(agent, AgentState.RUNNING)
        outcome = runtime_for(agent.runtime).run(context)
        if context.is_cancelled():
            raise RunLost()
        if not outcome.succeeded:
            agent_transition(agent_id=agent.id, to=AgentState.FAILED, reason=outcome.error,
                             error=outcome.error, result=outcome.result)  # fmt: skip
            return
        agent_deliver(context=context, outcome=outcome)
    except RunLost:
        logger.info("agent %s was taken over (killed?); the run stops", agent_id)
    except (workspace.WorkspaceError, SandboxError) as error:
        agent_transition(agent_id=agent.id, to=AgentState.FAILED, reason=str(error), error=str(error))
    except Exception as error:
        logger.exception("agent %s crashed", agent_id)
        message = f"internal error: {type(error).__name__}: {error}"
        agent_transition(agent_id=agent.id, to=AgentState.FAILED, reason=message, error=message)
    finally:
        agent.refresh_from_db()
        agent_cleanup(agent=agent)


def _prepare(agent: Agent) -> RunContext:
    path = workspace.worktree_path(agent_id=str(agent.id), task_id=agent.task_id)
    Agent.objects.filter(id=agent.id).update(worktree_path=str(path))
    agent.worktree_path = str(path)
    workspace.worktree_create(repository=agent.repository, base_branch=agent.base_branch,
                              work_branch=agent.work_branch, path=path)  # fmt: skip
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
        agent_event_append(agent_id=agent.id, kind=kind, data=data)

    def is_cancelled() -> bool:
        return Agent.objects.filter(id=agent.id, state__in=_FINAL).exists()

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
    sha = workspace.worktree_commit(path=context.worktree, message=_commit_message(agent, outcome))
    if sha:
        context.emit(AgentEventKind.LOG, {"message": f"committed {sha[:12]}", "commit": sha})
    _advance(agent, AgentState.PUSHING)
    result = {**outcome.result, "summary": outcome.summary}
    if workspace.branch_unpushed_commits(repository=agent.repository,
                                         work_branch=agent.work_branch):  # fmt: skip
        pushed = workspace.branch_push(repository=agent.repository, work_branch=agent.work_branch)
        result["pushed_commit"] = pushed
        context.emit(AgentEventKind.LOG, {"message": f"pushed {agent.work_branch}",
                                          "commit": pushed})  # fmt: skip
    else:
        result["pushed_commit"] = None
        context.emit(AgentEventKind.LOG, {"message": "nothing changed; nothing to push"})
    _advance(agent, AgentState.COMPLETED, result=result)


def _commit_message(agent: Agent, outcome: RunOutcome) -> str:
    title = f"{agent.task_id}: {outcome.summary or 'agent work'}"[:72]
    return f"{title}\n\nAgent: {agent.id}\nRuntime: {agent.runtime}\n"
