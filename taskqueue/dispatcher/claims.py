"""Claiming: promote the tasks whose dependencies all succeeded, and claim the due ready ones."""

from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from agents.selectors import live_agent_ids
from taskqueue.models import AttemptState, Project, ProjectState, Task, TaskAttempt, TaskState

DISPATCHING = (ProjectState.PENDING, ProjectState.RUNNING)
ATTEMPT_LIVE = (AttemptState.PREPARING, AttemptState.STARTED)
Edge = Task.depends_on.through


@dataclass
class DispatchReport:
    project_id: int
    promoted: int = 0
    started: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def tasks_claim(project_id: int, report: DispatchReport) -> list[int]:
    now = timezone.now()
    with transaction.atomic():
        project = (
            Project.objects.select_for_update().filter(id=project_id, state__in=DISPATCHING).first()
        )
        if project is None:
            return []
        if project.state == ProjectState.PENDING:
            Project.objects.filter(id=project_id).update(state=ProjectState.RUNNING, started_at=now)
        report.promoted = tasks_promote(project_id=project_id)
        limit = _free_slots(project)
        if limit <= 0:
            return []
        claimed = []
        for task_id in tasks_due(project_id=project_id, now=now, limit=limit):
            if Task.objects.filter(id=task_id, state=TaskState.READY).update(
                state=TaskState.RUNNING,
                attempts=F("attempts") + 1,
                retry_at=None,
                started_at=now,
            ):
                number = Task.objects.filter(id=task_id).values_list("attempts", flat=True)[0]
                claimed.append(TaskAttempt.objects.create(task_id=task_id, number=number).id)
        return claimed


def tasks_promote(*, project_id: int) -> int:
    """Pending tasks whose dependencies all succeeded become ready; returns how many."""
    blocking = Edge.objects.filter(from_task_id=OuterRef("pk")).exclude(
        to_task__state=TaskState.SUCCEEDED
    )
    return (
        Task.objects.filter(project_id=project_id, state=TaskState.PENDING)
        .filter(~Exists(blocking))
        .update(state=TaskState.READY)
    )


def tasks_due(*, project_id: int, now: datetime, limit: int) -> list[int]:
    """Ready tasks whose time has come, in dispatch order: highest priority, then oldest."""
    return list(
        Task.objects.filter(project_id=project_id, state=TaskState.READY)
        .filter(_due(now))
        .order_by("-priority", "id")
        .values_list("id", flat=True)[:limit]
    )


def _free_slots(project: Project) -> int:
    hub_free = settings.MAX_CONCURRENT_AGENTS - len(live_agent_ids())
    if not project.max_parallel:
        return hub_free
    running = Task.objects.filter(project_id=project.id, state=TaskState.RUNNING).count()
    return min(hub_free, project.max_parallel - running)


def _due(now: datetime) -> Q:
    return (Q(not_before__isnull=True) | Q(not_before__lte=now)) & (
        Q(retry_at__isnull=True) | Q(retry_at__lte=now)
    )
