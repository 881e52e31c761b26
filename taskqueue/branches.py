"""Where a task's agent starts: its base branch merged with what its dependencies pushed.

This module and ``taskqueue.artifacts`` are the project's only users of the
git adapter (``agents.workspace``); the merging itself happens there.
"""

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from agents import workspace
from agents.workspace import WorkspaceError
from taskqueue.models import AttemptState, Task, TaskAttempt

__all__ = [
    "Base",
    "MergeConflict",
    "WorkspaceError",
    "attempt_base",
    "repository_problem",
    "task_repository",
]


class MergeConflict(Exception):
    """The dependency branches do not merge; the message names the files."""


@dataclass(frozen=True)
class Base:
    repository: str
    branch: str


def integration_branch(*, project_id: int, key: str) -> str:
    return f"flotilla/project-{project_id}/{key}"


def task_repository(*, task: Task) -> str:
    """The task's repository; a task that names none works in its project's scratch repository."""
    if task.repository:
        return workspace.repository_normalise(task.repository)
    path = Path(settings.DATA_DIR) / "scratch" / f"project-{task.project_id}.git"
    return workspace.scratch_repository_ensure(path=path)


def dependency_branches(*, task: Task, repository: str) -> list[str]:
    """The pushed work branches of the successful attempts of ``task``'s dependencies."""
    successes = (
        TaskAttempt.objects.filter(task__in=task.depends_on.all(), state=AttemptState.SUCCEEDED)
        .select_related("agent")
        .order_by("task_id", "-number")
    )
    found: dict[int, str] = {}
    for attempt in successes:
        agent = attempt.agent
        if attempt.task_id in found or agent is None:
            continue
        if agent.repository == repository and (agent.result or {}).get("pushed_commit"):
            found[attempt.task_id] = agent.work_branch
    return [found[task_id] for task_id in sorted(found)]


def attempt_base(*, task: Task) -> Base:
    repository = task_repository(task=task)
    pushed = dependency_branches(task=task, repository=repository)
    if not pushed:
        return Base(repository, task.branch)
    target = integration_branch(project_id=task.project_id, key=task.key)
    report = workspace.branch_integrate(
        repository=repository, base_branch=task.branch, branches=pushed, target=target
    )
    if report.conflicts:
        raise MergeConflict(
            f"merge conflict: {report.conflicting_branch} does not merge into {target} "
            f"(conflicting files: {', '.join(report.conflicts)})"
        )
    return Base(repository, target)


def repository_problem(*, repository: str) -> str | None:
    """Why a task cannot use ``repository`` (None when it can), as the spawn API judges it."""
    return workspace.repository_problem(repository)
