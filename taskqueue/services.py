"""Writes on projects: create, cancel, pause, resume, retry a task by hand.

The dispatcher (``taskqueue.dispatcher``) does the scheduling; everything
here changes states with conditional updates and hands further work to it
through django-q2 once the transaction has committed.
"""

import secrets
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from taskqueue import dispatcher
from taskqueue.errors import ProjectNotFound, ProjectStateConflict, TaskNotFound
from taskqueue.graph import graph_descendants, graph_validate
from taskqueue.models import (
    PROJECT_OPEN_STATES,
    Project,
    ProjectState,
    Task,
    TaskState,
    WebhookState,
)


@dataclass(frozen=True)
class TaskSpec:
    key: str
    title: str = ""
    instructions: str = ""
    agent_type: str = "worker"
    runtime: str = "script"
    script: str = ""
    repository: str = ""
    branch: str = "main"
    depends_on: list[str] = field(default_factory=list)
    priority: int = 5
    max_retries: int = 0
    backoff_base_s: float = 10.0
    backoff_cap_s: float = 300.0
    backoff_jitter: float = 0.1
    timeout_s: int | None = None
    not_before: datetime | None = None
    gate_profile: str = "standard"


@dataclass(frozen=True)
class ProjectSpec:
    name: str
    tasks: list[TaskSpec]
    mode: str = "dag"
    failure_policy: str = "continue"
    max_parallel: int = 0
    webhook_url: str = ""
    webhook_secret: str = ""
    paused: bool = False  # created paused: nothing starts until it is resumed


def project_validate(*, spec: ProjectSpec) -> dict[str, list[str]]:
    """The dependency map of ``spec`` (implied edges included), or ``ProjectInvalid``."""
    return graph_validate(
        keys=[task.key for task in spec.tasks],
        depends_on=[task.depends_on for task in spec.tasks],
        mode=spec.mode,
        max_tasks=settings.FLOTILLA_PROJECT_MAX_TASKS,
    )


def project_create(*, spec: ProjectSpec, created_by: str) -> Project:
    """Validate the graph, store the project and its tasks, and start dispatching."""
    edges = project_validate(spec=spec)
    secret = spec.webhook_secret or (secrets.token_urlsafe(32) if spec.webhook_url else "")
    with transaction.atomic():
        project = Project.objects.create(
            name=spec.name,
            mode=spec.mode,
            failure_policy=spec.failure_policy,
            max_parallel=spec.max_parallel,
            webhook_url=spec.webhook_url,
            webhook_secret=secret,
            created_by=created_by,
            state=ProjectState.PAUSED if spec.paused else ProjectState.PENDING,
        )
        tasks = Task.objects.bulk_create(
            [_task_row(project, task) for task in spec.tasks], batch_size=1000
        )
        ids = {task.key: task.id for task in tasks}
        if any(task.id is None for task in tasks):  # backends without RETURNING
            ids = dict(Task.objects.filter(project=project).values_list("key", "id"))
        Task.depends_on.through.objects.bulk_create(
            [
                Task.depends_on.through(from_task_id=ids[key], to_task_id=ids[dep])
                for key, deps in edges.items()
                for dep in deps
            ],
            batch_size=2000,
        )
        summary = {"name": spec.name, "tasks": len(spec.tasks), "mode": spec.mode}
        audit_record(
            actor=created_by, action="project.create", target=f"project:{project.id}", data=summary
        )
        transaction.on_commit(lambda: dispatcher.project_dispatch_enqueue(project_id=project.id))
    return project


def _task_row(project: Project, task: TaskSpec) -> Task:
    return Task(
        project=project,
        key=task.key,
        title=task.title or task.key,
        instructions=task.instructions,
        agent_type=task.agent_type,
        runtime=task.runtime,
        script=task.script,
        repository=task.repository,
        branch=task.branch,
        priority=task.priority,
        max_retries=task.max_retries,
        backoff_base_s=task.backoff_base_s,
        backoff_cap_s=task.backoff_cap_s,
        backoff_jitter=task.backoff_jitter,
        timeout_s=task.timeout_s,
        not_before=task.not_before,
        gate_profile=task.gate_profile,
    )


def project_cancel(*, project_id: int, actor: str, reason: str = "") -> Project:
    """Cancel every task that has not finished and kill the agents running them."""
    reason = reason or f"project {project_id} cancelled"
    with transaction.atomic():
        project = _locked(project_id)
        if project.state not in PROJECT_OPEN_STATES:
            raise ProjectStateConflict(
                f"project {project_id} is {project.state}; nothing to cancel"
            )
        Project.objects.filter(id=project_id).update(
            state=ProjectState.CANCELLED,
            finished_at=timezone.now(),
            error=reason,
            webhook_state=WebhookState.PENDING if project.webhook_url else WebhookState.NONE,
        )
        agent_ids = dispatcher.tasks_cancel(project_id=project_id, reason=reason)
        audit_record(
            actor=actor,
            action="project.cancel",
            target=f"project:{project_id}",
            reason=reason,
            data={"agents": [str(i) for i in agent_ids]},
        )
        if project.webhook_url:
            transaction.on_commit(lambda: dispatcher.webhook_enqueue(project_id=project_id))
    dispatcher.agents_stop(agent_ids=agent_ids, reason=reason)
    return Project.objects.get(id=project_id)


def project_pause(*, project_id: int, actor: str) -> Project:
    """No new task starts until resumed; tasks already running finish normally."""
    with transaction.atomic():
        project = _locked(project_id)
        paused = Project.objects.filter(
            id=project_id, state__in=[ProjectState.PENDING, ProjectState.RUNNING]
        ).update(state=ProjectState.PAUSED)
        if not paused:
            raise ProjectStateConflict(f"project {project_id} is {project.state}; cannot pause it")
        audit_record(actor=actor, action="project.pause", target=f"project:{project_id}")
    return Project.objects.get(id=project_id)


def project_resume(*, project_id: int, actor: str) -> Project:
    with transaction.atomic():
        project = _locked(project_id)
        resumed = Project.objects.filter(id=project_id, state=ProjectState.PAUSED).update(
            state=ProjectState.RUNNING, started_at=project.started_at or timezone.now()
        )
        if not resumed:
            raise ProjectStateConflict(f"project {project_id} is {project.state}; not paused")
        audit_record(actor=actor, action="project.resume", target=f"project:{project_id}")
        transaction.on_commit(lambda: dispatcher.project_dispatch_enqueue(project_id=project_id))
    return Project.objects.get(id=project_id)


_RETRYABLE = (TaskState.FAILED, TaskState.CANCELLED, TaskState.SKIPPED)


def task_retry(*, project_id: int, key: str, actor: str) -> Task:
    """Run a finished-unsuccessfully task again with a fresh retry budget.

    The tasks it skipped (or that were cancelled because it failed) go back to
    pending with it, and a finished project opens again.
    """
    with transaction.atomic():
        project = _locked(project_id)
        if project.state == ProjectState.CANCELLED:
            raise ProjectStateConflict(f"project {project_id} was cancelled; create a new one")
        task = Task.objects.filter(project_id=project_id, key=key).first()
        if task is None:
            raise TaskNotFound(f"project {project_id} has no task {key!r}")
        reopened = Task.objects.filter(id=task.id, state__in=_RETRYABLE).update(
            state=TaskState.PENDING, failures=0, retry_at=None, error="", finished_at=None
        )
        if not reopened:
            raise ProjectStateConflict(
                f"task {key!r} is {task.state}; only a failed, "
                "cancelled or skipped task can be retried"
            )
        below = graph_descendants(
            edges=dispatcher.project_edges(project_id=project_id), roots={task.id}
        )
        Task.objects.filter(id__in=below, state__in=_RETRYABLE).update(
            state=TaskState.PENDING, failures=0, retry_at=None, error="", finished_at=None
        )
        Project.objects.filter(
            id=project_id, state__in=[ProjectState.FAILED, ProjectState.SUCCEEDED]
        ).update(
            state=ProjectState.RUNNING,
            finished_at=None,
            error="",
            webhook_state=WebhookState.NONE,
            webhook_attempts=0,
            webhook_next_at=None,
            webhook_error="",
        )
        audit_record(
            actor=actor,
            action="task.retry",
            target=f"project:{project_id}/{key}",
            data={"reopened_dependents": len(below)},
        )
        transaction.on_commit(lambda: dispatcher.project_dispatch_enqueue(project_id=project_id))
    task.refresh_from_db()
    return task


def _locked(project_id: int) -> Project:
    project = Project.objects.select_for_update().filter(id=project_id).first()
    if project is None:
        raise ProjectNotFound(f"no project with id {project_id}")
    return project
