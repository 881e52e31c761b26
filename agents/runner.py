"""One agent run, from a claimed row to a pushed branch, in a thread of the node supervisor.

Every step starts with a conditional transition; losing one (the agent was
killed meanwhile) means another party owns the agent now, and the run stops
after cleaning up what it created itself. The supervisor may also ask a run
to stop (its node is stopping and hands the agent back, or its lease was
lost): the run then makes no transition at all and only cleans up.
"""

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import connection

from agents import workspace
from agents.delivery import DeliveryReport, agent_commit, agent_push
from agents.egress.service import egress_close, egress_open, egress_socket_path
from agents.lifecycle import agent_transition
from agents.limits import agent_limits
from agents.models import Agent, AgentEventKind, AgentState, NetworkMode
from agents.output import BoundedOutput
from agents.patches import patch_keep
from agents.reconnect import database_retrying
from agents.runtimes import runtime_for
from agents.runtimes.base import RunContext, RunOutcome
from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxError, SandboxHandle, SandboxSpec
from agents.selectors import agent_output_bytes
from agents.services import (
    agent_cleanup,
    agent_event_append,
    agent_requeue,
    agent_stop,
    agent_unpushed_commits,
    retry_backoff_s,
)
from agents.setup import SetupFailed, repository_setup
from agents.worktreewatch import WorktreeWatch

logger = logging.getLogger(__name__)


class RunLost(Exception):
    """Another party (a kill, a reconciler, the supervisor) moved the agent; this run must stop."""


@dataclass
class AgentRun:
    """One run of a claimed agent, as the node supervisor holds it."""

    agent: Agent
    resuming: bool = False
    # Set by the supervisor: hand the agent back (the node stops) or let go (lease lost).
    stopping: threading.Event = field(default_factory=threading.Event)
    # The run's sandbox and worktree are gone (removed before its final state),
    # or belong to whoever took the agent over: this run must not remove them.
    released: bool = False
    # The claim that started this run (Agent.lease): every write of the run is
    # guarded by it, so a run whose agent another node took over writes nothing.
    lease: int = -1
    # The sandbox this run started, as it started it (never re-read from the row).
    handle: SandboxHandle = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lease < 0:
            self.lease = self.agent.lease

    def holds(self) -> bool:
        """The row still carries this run's claim."""
        return Agent.objects.filter(id=self.agent.id, lease=self.lease).exists()


def agent_run(*, run: AgentRun) -> None:
    """Run an agent this node's supervisor claimed (queued → spawning, or paused → running)."""
    _supervise(run)


def _supervise(run: AgentRun) -> None:
    """Prepare, run the runtime, deliver or pause; whatever happens, clean up after the run."""
    agent = run.agent
    keep_worktree = False
    watch: WorktreeWatch | None = None
    try:
        context = _prepare(run)
        watch = _worktree_watch(context)
        if not run.resuming:
            # The repository's [setup], from the cache or run now (docs/setup.md).
            repository_setup(context=context)
            _advance(run, AgentState.RUNNING)
        # A long run holds no database connection while its sandbox works:
        # a node runs hundreds of agents on a server that allows a hundred.
        connection.close()
        outcome = _runtime_run(context)
        if context.is_cancelled():
            raise RunLost()
        if outcome.paused:
            keep_worktree = _pause(run, context, outcome)
            return
        if not outcome.succeeded:
            # The worktree goes with the run: what the agent did stays downloadable.
            patch_keep(context=context, why=outcome.error)
            _end(
                run,
                AgentState.FAILED,
                reason=outcome.error,
                error=outcome.error,
                result=outcome.result,
            )
            return
        if outcome.delivered:
            # The runtime's own finish pushed through the gates and left the agent in pushing.
            result = {**outcome.result, "summary": outcome.summary}
            _end(run, AgentState.COMPLETED, result=result)
            return
        agent_deliver(context=context, outcome=outcome, run=run)
    except RunLost:
        logger.info("agent %s was taken over (killed?); the run stops", agent.id)
    except SetupFailed as error:
        # The repository's fault, not the hub's: no retry would do better.
        _end(run, AgentState.FAILED, reason=str(error), error=str(error))
    except (workspace.WorkspaceError, SandboxError) as error:
        # The hub's fault, not the agent's: a retry may succeed where this failed.
        _retry_or_fail(run, str(error))
    except Exception as error:
        logger.exception("agent %s crashed", agent.id)
        message = f"internal error: {type(error).__name__}: {error}"
        _end(run, AgentState.FAILED, reason=message, error=message)
    finally:
        if watch is not None:
            watch.stop()
        # The proxy outlives no run: a kill, an end or a pause closes every
        # connection the sandbox still had open.
        egress_close(agent_id=str(agent.id))
        # Nor does a CLI agent's model gateway: its token dies, its streams are cut.
        runtime_for(agent.runtime).sandbox_release(agent)
        if not keep_worktree and not run.released:
            agent.refresh_from_db()
            # Whoever killed the agent cleans up after it (the kill switch, or
            # the kill listener of this node); doing it here too would only
            # compete for the CPU with the kills of a kill-all. The reconciler
            # removes whatever a crashed killer left. An agent another node
            # took over is that node's.
            if agent.state != AgentState.KILLED and agent.lease == run.lease:
                agent_cleanup(agent=agent)


def _end(run: AgentRun, to: AgentState, *, delivered: bool = False, **fields: Any) -> bool:
    """Release the sandbox and the worktree, then enter the final state ``to``.

    Cleaning up first means that whoever sees the final state (an API client,
    a dashboard, a project waiting on the agent) finds nothing of the run
    left. A kill that lands in between wins the state and finds nothing to do.
    A run whose agent another node took over touches nothing. ``delivered``:
    the branch is pushed, so the run completes even while its node stops.
    """
    if run.stopping.is_set() and not delivered:
        return False  # the supervisor hands the agent back: no final state
    agent = run.agent

    def end() -> bool:
        agent.refresh_from_db()
        if agent.lease != run.lease:
            run.released = True
            return False
        agent_cleanup(agent=agent)
        run.released = True
        return agent_transition(agent_id=agent.id, to=to, lease_held=run.lease, **_storable(fields))

    return database_retrying(end)


def _retry_or_fail(run: AgentRun, reason: str) -> None:
    """A failure of the hub's (the sandbox could not start, the mirror could not be read).

    The agent runs again after a backoff while it has retries left; every
    retry is a state event with the reason. Then it fails with the reason.
    """
    if run.stopping.is_set():
        return
    agent = run.agent
    agent.refresh_from_db()
    # A new attempt needs a fresh branch of the same name: committed work that
    # never reached the remote is kept on its branch rather than retried over.
    if agent.attempt >= agent.max_retries or agent.is_final or agent_unpushed_commits(agent=agent):
        _end(run, AgentState.FAILED, reason=reason, error=reason)
        return
    attempt = agent.attempt + 1
    delay_s = retry_backoff_s(attempt=attempt)
    why = f"{reason}; retry {attempt} of {agent.max_retries} in {delay_s:g} s"

    def requeue() -> bool:
        return agent_requeue(
            agent=agent,
            reason=_storable(why),
            attempt=attempt,
            delay_s=delay_s,
            lease_held=run.lease,
        )

    database_retrying(requeue)
    run.released = True


def _pause(run: AgentRun, context: RunContext, outcome: RunOutcome) -> bool:
    """Free the sandbox, then pause: no resume can start before it is gone. The worktree stays."""
    if run.stopping.is_set():
        raise RunLost()
    context.sandbox.remove(context.handle)
    return agent_transition(
        agent_id=context.agent.id,
        to=AgentState.PAUSED,
        lease_held=run.lease,
        reason=_storable(outcome.error),
        error=_storable(outcome.error),
        result=_storable(outcome.result),
        sandbox_handle={},
    )


def _connection_release() -> None:
    """Close this thread's connection between writes of a working sandbox.

    Output arrives on each sandbox's own reader thread, and a node runs more
    sandboxes than a PostgreSQL server allows connections: a connection held
    between batches would be one per working agent.
    """
    if not connection.in_atomic_block:
        connection.close()


def _held_update(run: AgentRun, **fields: Any) -> bool:
    """Write ``fields`` on the row while the run still holds a live agent; False if not."""
    held = Agent.objects.filter(id=run.agent.id, lease=run.lease, state__in=_SUPERVISED)
    return held.update(**fields) == 1


def _runtime_run(context: RunContext) -> RunOutcome:
    """Run the agent's runtime; however it ends, store the output kept past the bound."""
    try:
        return runtime_for(context.agent.runtime).run(context)
    finally:
        if isinstance(context.output, BoundedOutput):
            context.output.finish()


def _worktree_watch(context: RunContext) -> WorktreeWatch:
    """Watch the worktree's size while the agent runs; past the maximum, stop the agent."""
    agent = context.agent
    maximum_mb = agent_limits(agent).worktree_mb

    def stop(size: int) -> None:
        message = f"the worktree takes {size >> 20} MB, past the maximum of {maximum_mb} MB"
        context.emit(AgentEventKind.LOG, {"message": message, "worktree_bytes": size})
        reason = f"the worktree grew past {maximum_mb} MB (FLOTILLA_MAX_WORKTREE_MB)"
        # The kill path of an operator's kill: marked final first, then every process killed.
        database_retrying(
            lambda: agent_stop(agent_id=agent.id, reason=reason, to=AgentState.FAILED)
        )

    return WorktreeWatch(
        path=context.worktree, max_bytes=maximum_mb << 20, on_exceeded=stop
    ).start()


def _egress_open(agent: Agent) -> str:
    """Open the agent's egress proxy unless its network is off; the socket path, or ''.

    Every connection the sandbox makes through it, allowed or refused, becomes
    a ``network`` event of the agent.
    """
    if agent.network == NetworkMode.OFF:
        return ""
    socket_path = egress_socket_path(agent_id=str(agent.id))

    def record(event: dict[str, Any]) -> None:
        database_retrying(
            lambda: agent_event_append(
                agent_id=agent.id, kind=AgentEventKind.NETWORK, data=_storable(event)
            )
        )

    egress_open(
        agent_id=str(agent.id),
        mode=agent.network,
        allow_hosts=tuple(agent.options.get("allow_hosts") or ()),
        socket_path=socket_path,
        on_connection=record,
    )
    return str(socket_path)


def _worktree_ready(run: AgentRun) -> Path:
    agent = run.agent
    path = workspace.worktree_path(agent_id=str(agent.id), task_id=agent.task_id)
    if run.resuming:
        # A paused agent keeps its worktree (and any commits in it); only the sandbox is new.
        if not path.is_dir():
            raise workspace.WorkspaceError(f"the worktree of the paused agent is gone: {path}")
        return path
    # Named on the row before it exists, so a kill from now on removes it too.
    if not _held_update(run, worktree_path=str(path)):
        raise RunLost()
    agent.worktree_path = str(path)
    workspace.worktree_create(
        repository=agent.repository,
        base_branch=agent.base_branch,
        work_branch=agent.work_branch,
        path=path,
    )
    return path


def _prepare(run: AgentRun) -> RunContext:
    agent, resuming = run.agent, run.resuming
    path = _worktree_ready(run)
    sandbox = sandbox_backend(agent.sandbox_backend)
    limits = agent_limits(agent)
    # The runtimes read the agent's timeout: the one held to the maximum.
    agent.timeout_s = limits.timeout_s
    spec = SandboxSpec(
        agent_id=str(agent.id),
        workspace=path,
        network=agent.network,
        egress_socket=_egress_open(agent),
        allow_hosts=tuple(agent.options.get("allow_hosts") or ()),
        memory_mb=limits.memory_mb,
        pids=limits.pids,
        cpus=limits.cpus,
        max_file_bytes=limits.worktree_mb << 20,
        # A CLI agent's model gateway and home (agents/runtimes/cli); nothing for the others.
        **runtime_for(agent.runtime).sandbox_extras(agent, resuming=resuming),
    )
    # The handle is stored before anything runs, so a kill can always find it.
    handle = sandbox.start(spec)
    run.handle = handle
    agent.sandbox_handle = handle
    if not _held_update(run, sandbox_handle=handle):
        # Killed (or taken over) while the sandbox started: the killer read a
        # row without this handle, so this run removes what it made itself.
        sandbox.remove(handle)
        if not resuming and run.holds():
            agent_cleanup(agent=agent)
        run.released = True
        raise RunLost()

    def emit(kind: str, data: dict[str, Any]) -> None:
        stored = _storable(data)
        database_retrying(lambda: agent_event_append(agent_id=agent.id, kind=kind, data=stored))
        _connection_release()

    def is_cancelled() -> bool:
        if run.stopping.is_set():
            return True
        # A database restart must not end (or strand) the run: reconnect and ask again.
        held = database_retrying(
            lambda: (
                Agent.objects.filter(id=agent.id, lease=run.lease)
                .exclude(state__in=_FINAL)
                .exists()
            )
        )
        _connection_release()
        return not held

    if limits.held:
        emit(AgentEventKind.LOG, {"message": limits.held_message(), "limits_held": limits.held})
    # Every line any command of the run prints goes through this one bounded sink.
    output = BoundedOutput(
        emit=emit, max_bytes=limits.output_bytes, stored=agent_output_bytes(agent_id=agent.id)
    )
    return RunContext(
        agent=agent,
        sandbox=sandbox,
        handle=handle,
        worktree=Path(path),
        emit=emit,
        output=output,
        is_cancelled=is_cancelled,
        lease=run.lease,
    )


_FINAL = [AgentState.COMPLETED, AgentState.FAILED, AgentState.KILLED]
_SUPERVISED = [AgentState.SPAWNING, AgentState.RUNNING, AgentState.GATING, AgentState.PUSHING]


def _storable(value: Any) -> Any:
    """``value`` with every NUL character and lone surrogate replaced, at any depth.

    Whatever an agent's run stores (its output, a model's text, its error)
    passes here: PostgreSQL's jsonb and text hold neither U+0000 nor half a
    surrogate pair (a model's JSON may carry one), and one such character in
    a line would fail the write and lose the rest of the run.
    """
    if isinstance(value, str):
        text = value.replace("\x00", "\ufffd")
        return text.encode("utf-8", "replace").decode("utf-8") if not text.isascii() else text
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(item) for item in value]
    return value


def _advance(run: AgentRun, to: AgentState, **fields: Any) -> None:
    if run.stopping.is_set() or not agent_transition(
        agent_id=run.agent.id, to=to, lease_held=run.lease, **fields
    ):
        raise RunLost()


def agent_deliver(*, context: RunContext, outcome: RunOutcome, run: AgentRun | None = None) -> None:
    """Commit what the agent changed and push its branch: the orchestrator's job alone."""
    agent = context.agent
    run = run or AgentRun(agent=agent)
    _advance(run, AgentState.GATING)
    result = {**outcome.result, "summary": outcome.summary}
    committed = agent_commit(context=context, message=_commit_message(agent, outcome))
    if not committed.approved:
        patch_keep(context=context, why=committed.text)
        _fail_on_gates(run, committed, result)
        return
    pushed = agent_push(
        context=context,
        summary=outcome.summary,
        on_approved=lambda: _advance(run, AgentState.PUSHING),
    )
    if not pushed.approved:
        patch_keep(context=context, why=pushed.text)
        if pushed.conflicts and _retry_on_new_base(run, pushed):
            return
        _fail_on_gates(run, pushed, result)
        return
    result["pushed_commit"] = pushed.sha
    if not _end(run, AgentState.COMPLETED, delivered=True, result=result):
        raise RunLost()


def _retry_on_new_base(run: AgentRun, report: DeliveryReport) -> bool:
    """A script cannot resolve a conflict with its base: while it has retries, it runs again.

    The retry starts from the base as it is now, on a fresh branch of the
    same name, so this attempt's branch is deleted; its work stays as the
    attempt's patch (kept just before). False when no retry is left.
    """
    agent = run.agent
    agent.refresh_from_db()
    if run.stopping.is_set() or agent.is_final or agent.attempt >= agent.max_retries:
        return False
    workspace.branch_discard(
        repository=agent.repository,
        work_branch=agent.work_branch,
        head=workspace.branch_head(repository=agent.repository, work_branch=agent.work_branch),
    )
    why = f"{report.message}; this attempt's work is kept as its patch"
    _retry_or_fail(run, why)
    return True


def _fail_on_gates(run: AgentRun, report: DeliveryReport, result: dict[str, Any]) -> None:
    """A gate rejection ends a script agent: it cannot try again, so it fails with the report."""
    result = {**result, "pushed_commit": None, "gates": report.as_dict()}
    if not _end(run, AgentState.FAILED, reason=report.message, error=report.text, result=result):
        raise RunLost()


def _commit_message(agent: Agent, outcome: RunOutcome) -> str:
    title = f"{agent.task_id}: {outcome.summary or 'agent work'}"[:72]
    return f"{title}\n\nAgent: {agent.id}\nRuntime: {agent.runtime}\n"
