"""Commit and push through the quality gates: the only way an agent's work leaves its worktree.

The script runtime reaches these through the runner once its command is
done; the Claude runtime's ``commit`` and ``finish`` tools call them directly
and hand the report back to the model. A rejection changes nothing in git:
the commit or the push simply does not happen.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents import workspace
from agents.models import Agent, AgentEventKind
from agents.runtimes.base import RunContext
from gates.base import CommandOutcome, GateContext, GateReport
from gates.config import CONFIG_FILE
from gates.models import GateStage
from gates.services import gates_run

# Gate commands must leave nothing behind for the next ``git add --all``:
# no bytecode, no pytest or ruff cache, no coverage data file in the worktree.
_GATE_ENV = (
    "export PYTHONDONTWRITEBYTECODE=1 RUFF_NO_CACHE=true COVERAGE_FILE=/tmp/.coverage "
    'PYTEST_ADDOPTS="-p no:cacheprovider $PYTEST_ADDOPTS"; '
)


@dataclass(frozen=True)
class DeliveryReport:
    action: str  # "commit" or "push"
    approved: bool
    sha: str | None
    message: str
    gates: GateReport | None = None

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
        }


def agent_commit(*, context: RunContext, message: str) -> DeliveryReport:
    """Run the pre-commit gates on everything the agent changed; commit only if they pass."""
    agent = context.agent
    diff = workspace.worktree_stage(path=context.worktree)
    if not diff:
        return DeliveryReport("commit", True, None, "nothing changed; nothing to commit")
    report = gates_run(
        stage=GateStage.PRE_COMMIT, profile=agent.gate_profile, context=_gate_context(context, diff)
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


def agent_push(
    *, context: RunContext, summary: str, on_approved: Callable[[], None] | None = None
) -> DeliveryReport:
    """Run the pre-push gates and the conflict check on the branch; push only if they pass.

    ``on_approved`` runs once the push may go ahead, just before it does (also
    when there is nothing to push); the runner uses it to enter ``pushing``.
    """
    agent = context.agent
    if not workspace.branch_unpushed_commits(
        repository=agent.repository, work_branch=agent.work_branch
    ):
        if on_approved:
            on_approved()
        context.emit(AgentEventKind.LOG, {"message": "nothing changed; nothing to push"})
        return DeliveryReport("push", True, None, "nothing changed; nothing to push")
    diff = workspace.branch_diff(
        repository=agent.repository, work_branch=agent.work_branch, base_branch=agent.base_branch
    )

    def conflicts() -> list[str]:
        return workspace.branch_conflicts(
            repository=agent.repository,
            work_branch=agent.work_branch,
            base_branch=agent.base_branch,
        )

    report = gates_run(
        stage=GateStage.PRE_PUSH,
        profile=agent.gate_profile,
        context=_gate_context(context, diff, conflict_check=conflicts, summary=summary),
    )
    _gate_events(context, report)
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
    sha = workspace.branch_push(repository=agent.repository, work_branch=agent.work_branch)
    context.emit(AgentEventKind.LOG, {"message": f"pushed {agent.work_branch}", "commit": sha})
    return DeliveryReport("push", True, sha, f"pushed {agent.work_branch} at {sha[:12]}", report)


def _gate_context(
    context: RunContext,
    diff: str,
    *,
    conflict_check: Callable[[], list[str]] | None = None,
    summary: str = "",
) -> GateContext:
    agent = context.agent

    def run_command(command: str, timeout_s: float) -> CommandOutcome:
        return context.sandbox.exec(context.handle, _GATE_ENV + command, timeout_s=timeout_s)

    return GateContext(
        agent_id=str(agent.id),
        task=_task_text(agent, summary),
        diff=diff,
        run_command=run_command,
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
