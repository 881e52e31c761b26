"""Reads on projects."""

from collections import Counter
from typing import Any

from django.db.models import Count, QuerySet

from taskqueue.errors import ProjectNotFound
from taskqueue.models import AttemptState, Project, Task, TaskAttempt, TaskState


def project_get(*, project_id: Any) -> Project:
    project = Project.objects.filter(id=project_id).first()
    if project is None:
        raise ProjectNotFound(f"no project with id {project_id}")
    return project


def project_list(*, state: str | None = None) -> QuerySet[Project]:
    projects = Project.objects.annotate(task_count=Count("tasks"))
    return projects.filter(state=state) if state else projects


def project_tasks(*, project_id: Any) -> list[Task]:
    """The project's tasks with ``dependency_keys`` and ``last_attempt`` filled in, in 3 queries."""
    tasks = list(Task.objects.filter(project_id=project_id).order_by("id"))
    keys = {task.id: task.key for task in tasks}
    deps: dict[int, list[str]] = {task.id: [] for task in tasks}
    for task_id, dep_id in Task.depends_on.through.objects.filter(
        from_task__project_id=project_id
    ).values_list("from_task_id", "to_task_id"):
        deps[task_id].append(keys[dep_id])
    last: dict[int, TaskAttempt] = {}
    for attempt in (TaskAttempt.objects.filter(task__project_id=project_id)
                    .select_related("agent").order_by("task_id", "number")):  # fmt: skip
        last[attempt.task_id] = attempt
    for task in tasks:
        task.dependency_keys = deps[task.id]  # type: ignore[attr-defined]
        task.last_attempt = last.get(task.id)  # type: ignore[attr-defined]
    return tasks


def project_progress(*, project_id: Any) -> dict[str, Any]:
    counts = Counter(dict(Task.objects.filter(project_id=project_id).values_list("state")
                          .annotate(n=Count("id")).values_list("state", "n")))  # fmt: skip
    total = sum(counts.values())
    done = sum(counts[state] for state in (TaskState.SUCCEEDED, TaskState.FAILED,
                                           TaskState.CANCELLED, TaskState.SKIPPED))  # fmt: skip
    return {
        "total": total,
        "finished": done,
        "percent": round(100 * done / total) if total else 100,
        "states": {state: counts.get(state, 0) for state in TaskState.values},
    }


def project_attempts(*, project_id: Any) -> QuerySet[TaskAttempt]:
    return (TaskAttempt.objects.filter(task__project_id=project_id)
            .select_related("task", "agent").order_by("task_id", "number"))  # fmt: skip


def task_result(task: Task) -> dict[str, Any]:
    """What a task produced: its state and the branch its successful agent pushed."""
    attempt = getattr(task, "last_attempt", None)
    agent = attempt.agent if attempt else None
    pushed = (agent.result or {}).get("pushed_commit") if agent else None
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


def project_result(*, project_id: Any) -> dict[str, Any]:
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
