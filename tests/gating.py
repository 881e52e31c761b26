"""What the gate tests share: an agent prepared as the worker prepares one, the
files written into its worktree, a gate's result in a report, and someone else
pushing to main meanwhile."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.delivery import agent_commit
from agents.services import SpawnRequest
from tests.conftest import git


def gated_agent_preparer(
    prepared_agents: Callable[..., Any], *, task_id: str, instructions: str
) -> Callable[..., Any]:
    """Prepares an agent on a remote: worktree, bwrap sandbox, run context."""

    def prepare_agent(remote: Path, *, profile: str = "standard", gates: dict | None = None):
        request = SpawnRequest(
            task_id=task_id,
            agent_type="worker",
            runtime="script",
            script="true",
            repository=str(remote),
            base_branch="main",
            gate_profile=profile,
            instructions=instructions,
            options={"gates": gates} if gates else {},
        )
        return prepared_agents(request, requested_by="user:test")

    return prepare_agent


def write(context, relative: str, content: str) -> None:
    path = context.worktree / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def result_of(report, gate: str):
    return next(result for result in report.gates.results if result.gate == gate)


def someone_else_pushes(remote: Path, tmp_path: Path, files: dict[str, str], message: str) -> None:
    """Another clone changes tracked ``files`` and pushes the commit to main."""
    clone = tmp_path / "someone-else"
    git(tmp_path, "clone", "--quiet", str(remote), str(clone))
    for name, text in files.items():
        (clone / name).write_text(text)
    git(clone, "commit", "--quiet", "-am", message)
    git(clone, "push", "--quiet", "origin", "main")


def retitled_on_both_sides(context, remote: Path, tmp_path: Path) -> None:
    """The agent commits a new README title; meanwhile someone else pushes another to main."""
    write(context, "README.md", "# sample by the agent\n")
    assert agent_commit(context=context, message="retitle").approved
    someone_else_pushes(
        remote, tmp_path, {"README.md": "# sample by a human\n"}, "retitle differently"
    )
