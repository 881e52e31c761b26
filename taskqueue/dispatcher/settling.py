"""A project's end (and its webhook), and when its backoffs and not-before times end."""

from datetime import datetime

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_q.tasks import async_task

from taskqueue.dispatcher.claims import DISPATCHING
from taskqueue.models import TASK_OPEN_STATES, Project, ProjectState, Task, TaskState, WebhookState


def project_settle(*, project_id: int) -> bool:
    """Mark the project finished once no task is open; True if this call did."""
    tasks = Task.objects.filter(project_id=project_id)
    if tasks.filter(state__in=TASK_OPEN_STATES).exists():
        return False
    failed = tasks.exclude(state=TaskState.SUCCEEDED).exists()
    with transaction.atomic():
        project = Project.objects.filter(id=project_id).first()
        if project is None:
            return False
        won = Project.objects.filter(
            id=project_id, state__in=[*DISPATCHING, ProjectState.PAUSED]
        ).update(
            state=ProjectState.FAILED if failed else ProjectState.SUCCEEDED,
            finished_at=timezone.now(),
            wake_at=None,
            webhook_state=WebhookState.PENDING if project.webhook_url else WebhookState.NONE,
        )
        if won and project.webhook_url:
            transaction.on_commit(lambda: webhook_enqueue(project_id=project_id))
    return bool(won)


def webhook_enqueue(*, project_id: int) -> None:
    async_task(
        "taskqueue.tasks.project_webhook_deliver",
        project_id,
        group="projects",
        task_name=f"project-webhook-{project_id}",
    )


def project_wake_plan(*, project_id: int) -> datetime | None:
    """Record when the project's next backoff or not-before time ends (``wake_at``).

    Nothing sleeps: every node supervisor runs ``projects_wake_due`` about once
    a second (``FLOTILLA_NODE_TIMERS``), and that dispatches each project whose
    time has come. An earlier time already recorded is kept; the pass it
    triggers records the next one.
    """
    now = timezone.now()
    times = [
        max(filter(None, pair))
        for pair in Task.objects.filter(project_id=project_id, state=TaskState.READY)
        .filter(Q(retry_at__gt=now) | Q(not_before__gt=now))
        .values_list("retry_at", "not_before")
    ]
    if not times:
        return None
    wake = min(times)
    if (
        Project.objects.filter(id=project_id, state__in=DISPATCHING)
        .filter(Q(wake_at__isnull=True) | Q(wake_at__gt=wake))
        .update(wake_at=wake)
    ):
        return wake
    return None
