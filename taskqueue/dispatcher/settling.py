"""A project's end (and its webhook), and the wakers for backoffs and not-before times."""

from datetime import datetime, timedelta

from django.conf import settings
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
    """Queue a waker for the next backoff or not-before time, when it is near enough.

    django-q2 schedules fire at best every 30 s, too coarse for short
    backoffs, so a waker task sleeps until the time and dispatches. Times
    beyond ``FLOTILLA_PROJECT_WAKE_HORIZON_S`` are left to the periodic tick,
    which plans them once they come near. ``wake_at`` on the project keeps a
    second waker from being queued for a time already covered.
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
    if (wake - now).total_seconds() > settings.FLOTILLA_PROJECT_WAKE_HORIZON_S:
        return None
    stale = now - timedelta(seconds=settings.FLOTILLA_PROJECT_WAKE_HORIZON_S + 60)
    if (
        Project.objects.filter(id=project_id, state__in=DISPATCHING)
        .filter(Q(wake_at__isnull=True) | Q(wake_at__gt=wake) | Q(wake_at__lt=stale))
        .update(wake_at=wake)
    ):
        async_task(
            "taskqueue.tasks.project_wake",
            project_id,
            wake.isoformat(),
            group="projects",
            task_name=f"project-wake-{project_id}",
        )
        return wake
    return None
