"""The passes: one project's dispatch, an agent's end, the wake timer, and the periodic tick."""

from datetime import timedelta
from typing import TypedDict

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django_q.tasks import async_task

from agents.selectors import agent_get, live_agent_ids
from taskqueue.dispatcher.attempts import (
    attempt_defer,
    attempt_failed,
    attempt_start,
    attempt_succeeded,
)
from taskqueue.dispatcher.claims import DISPATCHING, DispatchReport, tasks_claim
from taskqueue.dispatcher.settling import project_settle, project_wake_plan, webhook_enqueue
from taskqueue.models import (
    AttemptState,
    Project,
    ProjectState,
    Task,
    TaskAttempt,
    TaskState,
    WebhookState,
)


def project_dispatch_enqueue(*, project_id: int) -> None:
    async_task(
        "taskqueue.tasks.project_dispatch",
        project_id,
        group="projects",
        task_name=f"project-dispatch-{project_id}",
    )


def project_dispatch(*, project_id: int) -> DispatchReport:
    """One pass: promote, claim and start what may run now; settle a finished project."""
    report = DispatchReport(project_id=project_id)
    for attempt_id in tasks_claim(project_id, report):
        attempt_start(attempt_id=attempt_id, report=report)
    project_wake_plan(project_id=project_id)
    project_settle(project_id=project_id)
    return report


def task_agent_finished(*, agent_id: str) -> None:
    """An agent reached a final state: record its attempt, then dispatch what follows."""
    attempt = TaskAttempt.objects.filter(agent_id=agent_id).select_related("task").first()
    if attempt is None:
        return
    agent = agent_get(agent_id=agent_id)
    if not agent.is_final:
        return
    if agent.state == "completed":
        attempt_succeeded(attempt)
    else:
        attempt_failed(attempt.id, error=agent.error or f"agent {agent.state}")
    project_dispatch(project_id=attempt.task.project_id)
    projects_dispatch_waiting(exclude=attempt.task.project_id)


def projects_dispatch_waiting(*, exclude: int | None = None) -> list[int]:
    """Dispatch other running projects with ready tasks: a finished agent freed a hub slot."""
    ready = Task.objects.filter(state=TaskState.READY, project__state=ProjectState.RUNNING)
    if exclude is not None:
        ready = ready.exclude(project_id=exclude)
    ids = list(ready.values_list("project_id", flat=True).distinct()[:50])
    for project_id in ids:
        if len(live_agent_ids()) >= settings.MAX_CONCURRENT_AGENTS:
            break
        project_dispatch(project_id=project_id)
    return ids


def projects_wake_due() -> list[int]:
    """A node timer: dispatch every project whose backoff or not-before time has come.

    The conditional update has one winner, so of several nodes exactly one
    dispatches each project for each recorded time.
    """
    due = Project.objects.filter(state__in=DISPATCHING, wake_at__lte=timezone.now())
    woken = []
    for project_id, at in due.values_list("id", "wake_at"):
        if Project.objects.filter(id=project_id, wake_at=at).update(wake_at=None):
            project_dispatch(project_id=project_id)
            woken.append(project_id)
    return woken


class TickReport(TypedDict):
    recovered: list[str]
    dispatched: list[int]
    webhooks: list[int]


def projects_tick() -> TickReport:
    """Catch up on anything a lost task or signal left behind, then dispatch every project."""
    recovered = attempts_recover()
    dispatched = list(Project.objects.filter(state__in=DISPATCHING).values_list("id", flat=True))
    for project_id in dispatched:
        project_dispatch(project_id=project_id)
    due = Q(webhook_next_at__isnull=True) | Q(webhook_next_at__lte=timezone.now())
    webhooks = list(
        Project.objects.filter(due, webhook_state=WebhookState.PENDING).values_list("id", flat=True)
    )
    for project_id in webhooks:
        webhook_enqueue(project_id=project_id)
    return {"recovered": recovered, "dispatched": dispatched, "webhooks": webhooks}


def attempts_recover() -> list[str]:
    """Attempts whose agent ended unnoticed, and claims whose preparer died, are settled."""
    recovered = []
    for attempt in TaskAttempt.objects.filter(
        state=AttemptState.STARTED, agent__state__in=["completed", "failed", "killed"]
    ).select_related("task"):
        task_agent_finished(agent_id=str(attempt.agent_id))
        recovered.append(f"{attempt.task.project_id}/{attempt.task.key}#{attempt.number}")
    cutoff = timezone.now() - timedelta(seconds=settings.FLOTILLA_PROJECT_PREPARE_TIMEOUT_S)
    for attempt in TaskAttempt.objects.filter(
        state=AttemptState.PREPARING, created_at__lt=cutoff
    ).select_related("task"):
        attempt_defer(attempt, reason="its dispatcher stopped while preparing it")
        recovered.append(f"{attempt.task.project_id}/{attempt.task.key}#{attempt.number}")
    return recovered
