"""Commit and push through the quality gates: the only way an agent's work leaves its worktree.

The script runtime reaches these through the runner once its command is
done; the Claude runtime's ``commit`` and ``finish`` tools call them directly
and hand the report back to the model. A rejection changes nothing in git:
the commit or the push simply does not happen.
"""

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenacity
from django.conf import settings

from agents import workspace
from agents.basemerge import (
    base_merge,
    conflict_hand_over_message,
    conflict_markers,
    conflict_refused_message,
)
from agents.models import Agent, AgentEventKind
from agents.runtimes.base import RunContext
from agents.sandboxes.base import SandboxHandle
from gates.base import ChangedFile, CommandOutcome, GateContext, GateReport, gate_failed
from gates.config import CONFIG_FILE
from gates.models import GateStage
from gates.services import gates_run

# Gate commands must leave nothing behind for the next ``git add --all``:
# no bytecode, no pytest or ruff cache, no coverage data file in the worktree.
_GATE_ENV = (
    "export PYTHONDONTWRITEBYTECODE=1 RUFF_NO_CACHE=true COVERAGE_FILE=/tmp/.coverage "
    'PYTEST_ADDOPTS="-p no:cacheprovider $PYTEST_ADDOPTS"; '
)
# Every line a gate command prints is kept (not only the tail) for a baseline
# comparison, up to this many bytes; past it the comparison fails closed.
_GATE_OUTPUT_MAX_BYTES = 16 << 20


@dataclass(frozen=True)
class DeliveryReport:
    action: str  # "commit" or "push"
    approved: bool
    sha: str | None
    message: str
    gates: GateReport | None = None
    # The files that conflict with the base branch, when that is why the push was refused.
    conflicts: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        lines = [self.message]
        if self.gates is not None:
            lines.append(self.gates.text)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "approved": self.approved,
            "sha": self.sha,
            "message": self.message,
            "gates": self.gates.as_dict() if self.gates else None,
            "conflicts": list(self.conflicts),
        }


def agent_commit(*, context: RunContext, message: str) -> DeliveryReport:
    """Run the pre-commit gates on everything the agent changed; commit only if they pass."""
    agent = context.agent
    try:
        diff = workspace.worktree_stage(path=context.worktree)
    except workspace.NestedRepositoryRefused as refusal:
        return _nested_repository_refused(context, refusal)
    if not diff:
        return DeliveryReport("commit", True, None, "nothing changed; nothing to commit")
    markers = conflict_markers(agent, diff)
    if markers:
        return _conflict_markers_refused(context, markers)
    # The staged change is measured against the commit it sits on.
    head = functools.partial(
        workspace.branch_head, repository=agent.repository, work_branch=agent.work_branch
    )
    with _base_checkout(context, commit=head) as base:
        report = gates_run(
            stage=GateStage.PRE_COMMIT,
            profile=agent.gate_profile,
            context=_gate_context(
                context,
                diff,
                changes=functools.partial(workspace.worktree_staged_changes, path=context.worktree),
                tree=functools.partial(workspace.worktree_staged_tree, path=context.worktree),
                base=base,
            ),
        )
    _gate_events(context, report)
    if not report.passed:
        return DeliveryReport(
            "commit", False, None, "not committed: the pre-commit gates rejected the change", report
        )
    sha = workspace.worktree_commit_staged(path=context.worktree, message=message)
    if sha:
        context.emit(AgentEventKind.LOG, {"message": f"committed {sha[:12]}", "commit": sha})
    return DeliveryReport(
        "commit",
        True,
        sha,
        f"committed {sha[:12]}" if sha else "nothing changed; nothing to commit",
        report,
    )


def _nested_repository_refused(
    context: RunContext, refusal: workspace.NestedRepositoryRefused
) -> DeliveryReport:
    """A repository the agent nested in its worktree is refused as a gate would refuse it."""
    result = gate_failed("nested_repositories", str(refusal), details={"paths": refusal.paths})
    report = GateReport(GateStage.PRE_COMMIT, context.agent.gate_profile, [result])
    _gate_events(context, report)
    message = "not committed: the worktree holds a nested repository"
    return DeliveryReport("commit", False, None, message, report)


def _conflict_markers_refused(context: RunContext, markers: list[str]) -> DeliveryReport:
    """A change that still holds the markers of the hub's merge is an unresolved conflict."""
    shown = ", ".join(markers[:20]) + (" and more" if len(markers) > 20 else "")
    result = gate_failed(
        "merge_conflicts",
        f"conflict markers of the merge with {context.agent.base_branch} are still in: {shown}",
        details={"markers": markers[:200]},
    )
    report = GateReport(GateStage.PRE_COMMIT, context.agent.gate_profile, [result])
    _gate_events(context, report)
    message = "not committed: resolve the conflicts first (remove every conflict marker)"
    return DeliveryReport("commit", False, None, message, report)


def agent_push(
    *,
    context: RunContext,
    summary: str,
    on_approved: Callable[[], None] | None = None,
    resolves_conflicts: bool = False,
) -> DeliveryReport:
    """Bring the base into the branch, run the pre-push gates on the result; push if they pass.

    ``on_approved`` runs once the push may go ahead, just before it does (also
    when there is nothing to push); the runner uses it to enter ``pushing``.
    ``resolves_conflicts``: the agent can resolve a conflict with the base, so
    the hub leaves it in the worktree (``agents.basemerge``) and says so.
    """
    agent = context.agent
    if not workspace.branch_unpushed_commits(
        repository=agent.repository, work_branch=agent.work_branch
    ):
        if on_approved:
            on_approved()
        context.emit(AgentEventKind.LOG, {"message": "nothing changed; nothing to push"})
        return DeliveryReport("push", True, None, "nothing changed; nothing to push")
    # The gates judge, and the push carries, the branch as it would land on its base.
    merge = base_merge(context, hand_over=resolves_conflicts)
    diff = workspace.branch_diff(
        repository=agent.repository, work_branch=agent.work_branch, base_branch=agent.base_branch
    )

    def conflicts() -> list[str]:
        return list(merge.conflicts)

    branch = {"repository": agent.repository, "work_branch": agent.work_branch}
    # The branch is measured against the commit it left its base at, as its diff is.
    fork_point = functools.partial(
        workspace.branch_fork_point, **branch, base_branch=agent.base_branch
    )
    with _base_checkout(context, commit=fork_point) as base:
        report = gates_run(
            stage=GateStage.PRE_PUSH,
            profile=agent.gate_profile,
            context=_gate_context(
                context,
                diff,
                changes=functools.partial(
                    workspace.branch_changes, **branch, base_branch=agent.base_branch
                ),
                tree=functools.partial(workspace.branch_tree, **branch),
                base=base,
                conflict_check=conflicts,
                summary=summary,
            ),
        )
    _gate_events(context, report)
    # A conflict is never pushed, even where YOLO mode skipped the gate that reports it.
    if merge.conflicts:
        message = (conflict_hand_over_message if resolves_conflicts else conflict_refused_message)(
            agent, merge
        )
        return DeliveryReport("push", False, None, message, report, conflicts=merge.conflicts)
    if not report.passed:
        return DeliveryReport(
            "push",
            False,
            None,
            f"not pushed: the pre-push gates rejected {agent.work_branch}",
            report,
        )
    if on_approved:
        on_approved()
    sha = _push_retrying(context)
    context.emit(AgentEventKind.LOG, {"message": f"pushed {agent.work_branch}", "commit": sha})
    merged = f" (with {agent.base_branch} merged in)" if merge.status == "merged" else ""
    return DeliveryReport(
        "push", True, sha, f"pushed {agent.work_branch} at {sha[:12]}{merged}", report
    )


def _push_retrying(context: RunContext) -> str:
    """Push the branch; a push that fails is tried again with backoff, ``max_retries`` times.

    The remote being unreachable or refusing for a while is not the agent's
    fault, so its work is not thrown away for it. Every retry is a log event
    naming the error; a kill meanwhile stops the retries.
    """
    agent = context.agent
    retries = agent.max_retries

    def announce(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0
        message = f"push failed: {error}; retry {state.attempt_number} of {retries} in {delay:g} s"
        context.emit(AgentEventKind.LOG, {"message": message, "retry": state.attempt_number})

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(workspace.WorkspaceError),
        stop=tenacity.stop_after_attempt(retries + 1) | _Cancelled(context),
        wait=tenacity.wait_exponential(
            multiplier=settings.FLOTILLA_RETRY_BACKOFF_S, max=settings.FLOTILLA_RETRY_BACKOFF_MAX_S
        ),
        before_sleep=announce,
        reraise=True,
    )
    return retrying(
        workspace.branch_push, repository=agent.repository, work_branch=agent.work_branch
    )


class _Cancelled(tenacity.stop.stop_base):
    """Stop retrying once the run is cancelled (killed, or its node stops)."""

    def __init__(self, context: RunContext) -> None:
        self.context = context

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.context.is_cancelled()


def _gate_context(
    context: RunContext,
    diff: str,
    *,
    changes: Callable[[], list[tuple[str, str]]],
    tree: Callable[[], str],
    base: "_BaseCheckout",
    conflict_check: Callable[[], list[str]] | None = None,
    summary: str = "",
) -> GateContext:
    agent = context.agent

    def run_command(command: str, timeout_s: float) -> CommandOutcome:
        return _gate_command_run(context, context.handle, command, timeout_s)

    def changed_files() -> list[ChangedFile]:
        return [ChangedFile(path, status == "A") for status, path in changes() if status != "D"]

    return GateContext(
        agent_id=str(agent.id),
        task=_task_text(agent, summary),
        diff=diff,
        run_command=run_command,
        run_base_command=base.run,
        changed_files_list=changed_files,
        tree_id=tree,
        # Read from the base branch, never the worktree: an agent must not be
        # able to weaken its own gates by editing the file.
        config_text=workspace.branch_file_read(
            repository=agent.repository, base_branch=agent.base_branch, path=CONFIG_FILE
        ),
        config_overrides=(agent.options or {}).get("gates"),
        conflict_check=conflict_check,
        target=agent.base_branch,
        task_id=agent.task_id,
    )


@dataclass(frozen=True)
class GateCommandOutcome:
    exit_code: int | None
    timed_out: bool
    output_tail: str
    duration_s: float
    output_lines: tuple[str, ...] | None  # None when the output passed the bound


def _gate_command_run(
    context: RunContext, handle: SandboxHandle, command: str, timeout_s: float
) -> GateCommandOutcome:
    """A gate command in the sandbox, keeping every line it prints (within a bound)."""
    kept: list[str] = []
    size = 0
    complete = True

    def keep(lines: list[str]) -> None:
        nonlocal size, complete
        for line in lines:
            size += len(line) + 1
            if size > _GATE_OUTPUT_MAX_BYTES:
                complete = False
                return
            kept.append(line)

    result = context.sandbox.exec(handle, _GATE_ENV + command, timeout_s=timeout_s, on_output=keep)
    return GateCommandOutcome(
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        output_tail=result.output_tail,
        duration_s=result.duration_s,
        output_lines=tuple(kept) if complete else None,
    )


class _BaseCheckout:
    """The commit a change is measured against, checked out on first use.

    Only a gate with ``baseline = true`` whose command failed on the change
    asks for it; the command then runs again in the same sandbox with this
    checkout at /workspace (``Sandbox.workspace_handle``).
    """

    def __init__(self, context: RunContext, commit: Callable[[], str]) -> None:
        self.context = context
        self.commit = commit
        self.path: Path | None = None
        self.handle: SandboxHandle | None = None

    def run(self, command: str, timeout_s: float) -> CommandOutcome:
        if self.handle is None:
            agent = self.context.agent
            self.path = workspace.base_checkout_path(agent_id=str(agent.id))
            workspace.base_checkout_add(
                repository=agent.repository, commit=self.commit(), path=self.path
            )
            self.handle = self.context.sandbox.workspace_handle(self.context.handle, self.path)
        return _gate_command_run(self.context, self.handle, command, timeout_s)

    def remove(self) -> None:
        if self.path is not None:
            workspace.base_checkout_remove(repository=self.context.agent.repository, path=self.path)


@contextlib.contextmanager
def _base_checkout(context: RunContext, *, commit: Callable[[], str]) -> Iterator[_BaseCheckout]:
    checkout = _BaseCheckout(context, commit)
    try:
        yield checkout
    finally:
        checkout.remove()


def _task_text(agent: Agent, summary: str) -> str:
    parts = [f"Task {agent.task_id} ({agent.agent_type} agent) on branch {agent.base_branch}."]
    if agent.instructions:
        parts.append(f"Instructions:\n{agent.instructions}")
    if agent.work_items:
        parts.append("Work items:\n" + "\n".join(f"- {item}" for item in agent.work_items))
    if agent.runtime == "script" and agent.script:
        parts.append(f"Script run by the agent:\n{agent.script}")
    if summary:
        parts.append(f"The agent's own summary:\n{summary}")
    return "\n\n".join(parts)


def _gate_events(context: RunContext, report: GateReport) -> None:
    for result in report.results:
        context.emit(
            AgentEventKind.GATE,
            {"stage": report.stage, "profile": report.profile, **result.as_dict()},
        )
