"""Reads on projects, and who owns them (DESIGN.md, "Ownership").

A project belongs to the principal that created it (``created_by``), and so
do its tasks, result, artifacts and the agents it spawned. Views, consumers
and the artifacts download find a project through ``projects_visible_to`` /
``project_visible_get`` (staff: every project; anyone else: their own; someone
else's is not found); ``project_get`` is the hub's own unscoped read.
"""

from collections import Counter
from collections.abc import Collection
from typing import Any, TypedDict

from django.db.models import CharField, Count, QuerySet, Value
from django.db.models.functions import Cast, Concat

from agents.selectors import Viewer, viewer_owner
from taskqueue.errors import ProjectNotFound
from taskqueue.models import AttemptState, Project, Task, TaskAttempt, TaskState


def projects_owned_by(owner: str | None) -> QuerySet[Project]:
    """The projects ``owner`` created; every project for None."""
    if owner is None:
        return Project.objects.all()
    if not owner:
        return Project.objects.none()
    return Project.objects.filter(created_by=owner)


def projects_visible_to(viewer: Viewer) -> QuerySet[Project]:
    return projects_owned_by(viewer_owner(viewer))


def project_principals_created_by(*, owner: str) -> QuerySet[Project, str]:
    """``project:<id>`` of every project ``owner`` created (``FLOTILLA_AGENT_DELEGATES``).

    The dispatcher spawns a project's agents under that principal, so they
    are the owner's.
    """
    principal = Concat(Value("project:"), Cast("id", output_field=CharField()))
    return Project.objects.filter(created_by=owner).values_list(principal, flat=True)


def project_visible_get(*, viewer: Viewer, project_id: int) -> Project:
    """The project, if ``viewer`` may see (and so control) it; otherwise ``ProjectNotFound``."""
    project = projects_visible_to(viewer).filter(id=project_id).first()
    if project is None:
        raise ProjectNotFound(f"no project with id {project_id}")
    return project


def project_get(*, project_id: int) -> Project:
    project = Project.objects.filter(id=project_id).first()
    if project is None:
        raise ProjectNotFound(f"no project with id {project_id}")
    return project


def project_list(
    *, state: str | None = None, projects: QuerySet[Project] | None = None
) -> QuerySet[Project]:
    """``projects`` (every project when None) in ``state`` when given, with their task counts."""
    projects = Project.objects.all() if projects is None else projects
    projects = projects.annotate(task_count=Count("tasks"))
    return projects.filter(state=state) if state else projects


def project_tasks(*, project_id: int) -> list[Task]:
    """The project's tasks with ``dependency_keys`` and ``last_attempt`` filled in, in 3 queries."""
    tasks = list(Task.objects.filter(project_id=project_id).order_by("id"))
    keys = {task.id: task.key for task in tasks}
    deps: dict[int, list[str]] = {task.id: [] for task in tasks}
    for task_id, dep_id in Task.depends_on.through.objects.filter(
        from_task__project_id=project_id
    ).values_list("from_task_id", "to_task_id"):
        deps[task_id].append(keys[dep_id])
    last: dict[int, TaskAttempt] = {}
    for attempt in (
        TaskAttempt.objects.filter(task__project_id=project_id)
        .select_related("agent")
        .order_by("task_id", "number")
    ):
        last[attempt.task_id] = attempt
    for task in tasks:
        task.dependency_keys = deps[task.id]
        task.last_attempt = last.get(task.id)
    return tasks


def project_progress(*, project_id: int) -> dict[str, Any]:
    counts = Counter(
        dict(
            Task.objects.filter(project_id=project_id)
            .values_list("state")
            .annotate(n=Count("id"))
            .values_list("state", "n")
        )
    )
    return progress_of(counts)


def progress_of(counts: Counter[str]) -> dict[str, Any]:
    """``{total, finished, percent, states}`` from the number of tasks in each state."""
    total = sum(counts.values())
    done = sum(
        counts[state]
        for state in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.SKIPPED)
    )
    return {
        "total": total,
        "finished": done,
        "percent": round(100 * done / total) if total else 100,
        "states": {state: counts.get(state, 0) for state in TaskState.values},
    }


def project_attempts(*, project_id: int) -> QuerySet[TaskAttempt]:
    return (
        TaskAttempt.objects.filter(task__project_id=project_id)
        .select_related("task", "agent")
        .order_by("task_id", "number")
    )


class TaskResult(TypedDict):
    key: str
    state: str
    attempts: int
    error: str
    agent_id: str | None
    work_branch: str | None
    pushed_commit: str | None
    base_branch: str | None
    succeeded: bool
    result: dict[str, Any]


class ProjectResult(TypedDict):
    id: int
    name: str
    state: str
    finished_at: str | None
    error: str
    progress: dict[str, Any]
    tasks: list[TaskResult]


def task_result(task: Task) -> TaskResult:
    """What a task produced: its state and the branch its successful agent pushed."""
    attempt: TaskAttempt | None = getattr(task, "last_attempt", None)
    agent = attempt.agent if attempt else None
    pushed: str | None = (agent.result or {}).get("pushed_commit") if agent else None
    return {
        "key": task.key,
        "state": task.state,
        "attempts": task.attempts,
        "error": task.error,
        "agent_id": str(agent.id) if agent else None,
        "work_branch": agent.work_branch if agent and pushed else None,
        "pushed_commit": pushed,
        "base_branch": attempt.base_branch if attempt else None,
        "succeeded": attempt is not None and attempt.state == AttemptState.SUCCEEDED,
        "result": agent.result if agent else {},
    }


def project_result(*, project_id: int) -> ProjectResult:
    project = project_get(project_id=project_id)
    return {
        "id": project.id,
        "name": project.name,
        "state": project.state,
        "finished_at": project.finished_at.isoformat() if project.finished_at else None,
        "error": project.error,
        "progress": project_progress(project_id=project.id),
        "tasks": [task_result(task) for task in project_tasks(project_id=project.id)],
    }


def projects_progress(*, project_ids: Collection[int]) -> dict[int, dict[str, Any]]:
    """``project_progress`` of many projects in one query."""
    counts: dict[int, Counter[str]] = {project_id: Counter() for project_id in project_ids}
    rows = (
        Task.objects.filter(project_id__in=list(counts))
        .order_by()
        .values("project_id", "state")
        .annotate(n=Count("id"))
    )
    for row in rows:
        counts[row["project_id"]][row["state"]] = row["n"]
    return {project_id: progress_of(tally) for project_id, tally in counts.items()}


def projects_live(*, project_ids: Collection[int]) -> dict[int, dict[str, Any]]:
    """What changes while projects run, for pages that watch them; three queries in all.

    Per project ``{"project": {id, name, state, error, started_at, finished_at},
    "tasks": {key: {key, state, attempts, error, retry_at, agent_id}}}``; a project
    that does not exist is absent.
    """
    live: dict[int, dict[str, Any]] = {
        row["id"]: {"project": row, "tasks": {}}
        for row in Project.objects.filter(id__in=list(project_ids)).values(
            "id", "name", "state", "error", "started_at", "finished_at"
        )
    }
    attempts = TaskAttempt.objects.filter(task__project_id__in=list(live)).order_by(
        "task_id", "number"
    )
    # Ordered by attempt number, so the last one written per task wins.
    latest_agent = dict(attempts.values_list("task_id", "agent_id"))
    tasks = (
        Task.objects.filter(project_id__in=list(live))
        .order_by("id")
        .values("id", "project_id", "key", "state", "attempts", "error", "retry_at")
    )
    for task in tasks:
        live[task["project_id"]]["tasks"][task["key"]] = {
            "key": task["key"],
            "state": task["state"],
            "attempts": task["attempts"],
            "error": task["error"],
            "retry_at": task["retry_at"],
            "agent_id": latest_agent.get(task["id"]),
        }
    return live
