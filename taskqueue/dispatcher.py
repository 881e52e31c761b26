"""The dispatcher: decides which tasks run next and follows their agents to the end.

Everything it knows is in the database, so a worker that dies mid-pass loses
nothing that the next pass (the agent-finished hook, a waker, or the
periodic tick) will not redo:

* a pass locks the project row, moves tasks whose dependencies all succeeded
  from ``pending`` to ``ready``, and claims the due ready tasks (highest
  priority first, within the project's ``max_parallel`` and the hub's free
  slots) with conditional ``ready → running`` updates, each with a
  ``preparing`` attempt;
* each claimed attempt then builds its base branch (git, outside any
  transaction) and spawns its agent in one transaction that also marks the
  attempt ``started``; so an attempt has an agent exactly when it is started;
* the agent's final state arrives through ``agents.signals.agent_finished``
  (a django-q2 task then calls ``task_agent_finished``): success finishes the
  task, failure retries it after an exponential backoff with jitter or, once
  the retries are spent, applies the project's failure policy.
"""

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from django_q.tasks import async_task

from agents.errors import AgentError, ConcurrencyLimitReached, SpawnRefused
from agents.selectors import agent_get, live_agent_ids
from agents.services import SpawnRequest, agent_spawn, agent_terminate
from taskqueue import branches
from taskqueue.graph import graph_descendants
from taskqueue.models import (
    TASK_OPEN_STATES,
    AttemptState,
    FailurePolicy,
    Project,
    ProjectState,
    Task,
    TaskAttempt,
    TaskState,
    WebhookState,
)

logger = logging.getLogger(__name__)

_DISPATCHING = (ProjectState.PENDING, ProjectState.RUNNING)
_ATTEMPT_LIVE = (AttemptState.PREPARING, AttemptState.STARTED)
Edge = Task.depends_on.through


@dataclass
class DispatchReport:
    project_id: int
    promoted: int = 0
    started: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


# --- entry points -------------------------------------------------------------


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
    for attempt_id in _claim(project_id, report):
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
        _attempt_succeeded(attempt)
    else:
        _attempt_failed(attempt.id, error=agent.error or f"agent {agent.state}")
    project_dispatch(project_id=attempt.task.project_id)
    projects_dispatch_waiting(exclude=attempt.task.project_id)


def projects_dispatch_waiting(*, exclude: int | None = None) -> list[int]:
    """Dispatch other running projects with ready tasks: a finished agent freed a hub slot."""
    ids = list(
        Task.objects.filter(state=TaskState.READY, project__state=ProjectState.RUNNING)
        .exclude(project_id=exclude)
        .values_list("project_id", flat=True)
        .distinct()[:50]
    )
    for project_id in ids:
        if len(live_agent_ids()) >= settings.MAX_CONCURRENT_AGENTS:
            break
        project_dispatch(project_id=project_id)
    return ids


# --- claiming -----------------------------------------------------------------


def _claim(project_id: int, report: DispatchReport) -> list[int]:
    now = timezone.now()
    with transaction.atomic():
        project = (
            Project.objects.select_for_update()
            .filter(id=project_id, state__in=_DISPATCHING)
            .first()
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


# --- starting an attempt ------------------------------------------------------


def attempt_start(*, attempt_id: int, report: DispatchReport | None = None) -> None:
    """Build the attempt's base branch and spawn its agent; a refusal puts the task back."""
    report = report or DispatchReport(project_id=0)
    attempt = TaskAttempt.objects.select_related("task").get(id=attempt_id)
    task = attempt.task
    if attempt.state != AttemptState.PREPARING:
        return
    try:
        base = branches.attempt_base(task=task)
    except branches.MergeConflict as conflict:
        report.failed.append(task.key)
        _attempt_failed(attempt.id, error=str(conflict), retryable=False)
        return
    except branches.WorkspaceError as error:
        report.failed.append(task.key)
        _attempt_failed(attempt.id, error=str(error))
        return
    try:
        with transaction.atomic():
            if not TaskAttempt.objects.filter(id=attempt.id, state=AttemptState.PREPARING).update(
                state=AttemptState.STARTED, base_branch=base.branch
            ):
                return  # cancelled while the branch was being built
            agent = agent_spawn(
                request=_spawn_request(task, attempt, base),
                requested_by=f"project:{task.project_id}",
            )
            TaskAttempt.objects.filter(id=attempt.id).update(agent_id=agent.id)
    except (ConcurrencyLimitReached, SpawnRefused) as refusal:
        report.deferred.append(task.key)
        _attempt_defer(attempt, reason=str(refusal))
        return
    except AgentError as error:
        report.failed.append(task.key)
        _attempt_failed(attempt.id, error=str(error), retryable=False)
        return
    report.started.append(task.key)


def _spawn_request(task: Task, attempt: TaskAttempt, base: "branches.Base") -> SpawnRequest:
    script = task.script
    if task.runtime == "script":
        # Scripts can tell which attempt they are (a flaky test, a resumable job).
        script = (
            f"export FLOTILLA_PROJECT_ID={task.project_id} FLOTILLA_TASK_KEY={task.key} "
            f"FLOTILLA_TASK_ATTEMPT={attempt.number}\n{task.script}"
        )
    return SpawnRequest(
        task_id=f"p{task.project_id}-{task.key}",
        agent_type=task.agent_type,
        runtime=task.runtime,
        repository=base.repository,
        base_branch=base.branch,
        script=script,
        instructions="\n\n".join(part for part in (task.title, task.instructions) if part),
        timeout_s=task.timeout_s or 0,
        # An agent whose worker dies is run again by the reconciler; that is
        # the hub's failure, so it does not spend the task's own retries.
        max_retries=settings.FLOTILLA_PROJECT_AGENT_RESTARTS,
        gate_profile=task.gate_profile,
        options={
            "project_id": task.project_id,
            "task_key": task.key,
            "task_attempt": attempt.number,
        },
    )


def _attempt_defer(attempt: TaskAttempt, *, reason: str) -> None:
    """The hub cannot take the agent now (full, halted): the task waits, no retry is spent."""
    with transaction.atomic():
        if TaskAttempt.objects.filter(id=attempt.id, state=AttemptState.PREPARING).delete()[0]:
            Task.objects.filter(id=attempt.task_id, state=TaskState.RUNNING).update(
                state=TaskState.READY, attempts=F("attempts") - 1, error=f"waiting: {reason}"
            )


# --- finishing an attempt -----------------------------------------------------


def _attempt_succeeded(attempt: TaskAttempt) -> None:
    now = timezone.now()
    with transaction.atomic():
        if TaskAttempt.objects.filter(id=attempt.id, state=AttemptState.STARTED).update(
            state=AttemptState.SUCCEEDED, finished_at=now
        ):
            Task.objects.filter(id=attempt.task_id, state=TaskState.RUNNING).update(
                state=TaskState.SUCCEEDED, finished_at=now, error=""
            )


def _attempt_failed(attempt_id: int, *, error: str, retryable: bool = True) -> None:
    """Retry after a backoff while retries remain; then fail the task and apply the policy."""
    now = timezone.now()
    to_stop: list[Any] = []
    with transaction.atomic():
        if not TaskAttempt.objects.filter(id=attempt_id, state__in=_ATTEMPT_LIVE).update(
            state=AttemptState.FAILED, error=error, finished_at=now
        ):
            return
        task = Task.objects.select_related("project").get(attempt_runs__id=attempt_id)
        if task.state != TaskState.RUNNING:
            return  # the project was cancelled meanwhile
        failures = task.failures + 1
        if retryable and failures <= task.max_retries:
            delay = backoff_delay(
                base_s=task.backoff_base_s,
                cap_s=task.backoff_cap_s,
                jitter=task.backoff_jitter,
                failures=failures,
            )
            Task.objects.filter(id=task.id, state=TaskState.RUNNING).update(
                state=TaskState.READY,
                failures=failures,
                error=error,
                retry_at=now + timedelta(seconds=delay),
            )
            TaskAttempt.objects.filter(id=attempt_id).update(backoff_s=delay)
            return
        if not Task.objects.filter(id=task.id, state=TaskState.RUNNING).update(
            state=TaskState.FAILED, failures=failures, error=error, finished_at=now
        ):
            return
        to_stop = _failure_policy(task)
    agents_stop(agent_ids=to_stop, reason=f"project {task.project_id}: task {task.key} failed")


def backoff_delay(*, base_s: float, cap_s: float, jitter: float, failures: int) -> float:
    """``min(cap, base · 2^(failures-1))``, shortened by up to ``jitter`` of itself at random."""
    delay = min(cap_s, base_s * 2 ** (failures - 1))
    return delay * (1 - jitter * random.random())


def _failure_policy(task: Task) -> list[Any]:
    """Skip what depends on the failed task; fail-fast also cancels everything else."""
    project_id = task.project_id
    if task.project.failure_policy == FailurePolicy.FAIL_FAST:
        return tasks_cancel(
            project_id=project_id, reason=f"cancelled: task {task.key} failed (fail-fast)"
        )
    below = graph_descendants(edges=project_edges(project_id=project_id), roots={task.id})
    Task.objects.filter(id__in=below, state__in=[TaskState.PENDING, TaskState.READY]).update(
        state=TaskState.SKIPPED,
        finished_at=timezone.now(),
        error=f"skipped: it depends on {task.key}, which failed",
    )
    return []


def tasks_cancel(*, project_id: int, reason: str) -> list[Any]:
    """Cancel every open task of the project; returns the agents that must be stopped."""
    now = timezone.now()
    live = TaskAttempt.objects.filter(task__project_id=project_id, state__in=_ATTEMPT_LIVE)
    agent_ids = list(live.filter(agent__isnull=False).values_list("agent_id", flat=True))
    live.update(state=AttemptState.CANCELLED, finished_at=now, error=reason)
    Task.objects.filter(project_id=project_id, state__in=TASK_OPEN_STATES).update(
        state=TaskState.CANCELLED, finished_at=now, error=reason
    )
    return agent_ids


def agents_stop(*, agent_ids: list[Any], reason: str) -> None:
    for agent_id in agent_ids:
        try:
            agent_terminate(agent_id=agent_id, reason=reason)
        except AgentError:
            logger.warning("could not stop agent %s", agent_id, exc_info=True)


def project_edges(*, project_id: int) -> dict[int, list[int]]:
    edges: dict[int, list[int]] = {
        task_id: []
        for task_id in Task.objects.filter(project_id=project_id).values_list("id", flat=True)
    }
    for task_id, dep_id in Edge.objects.filter(from_task__project_id=project_id).values_list(
        "from_task_id", "to_task_id"
    ):
        edges[task_id].append(dep_id)
    return edges


# --- finishing a project ------------------------------------------------------


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
            id=project_id, state__in=[*_DISPATCHING, ProjectState.PAUSED]
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


# --- waking up for backoffs and not-before times ------------------------------


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
        Project.objects.filter(id=project_id, state__in=_DISPATCHING)
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


def project_wake(*, project_id: int, at: datetime) -> None:
    """The waker: sleep until ``at``, then dispatch."""
    pause = (at - timezone.now()).total_seconds()
    if pause > 0:
        time.sleep(pause)
    Project.objects.filter(id=project_id, wake_at=at).update(wake_at=None)
    project_dispatch(project_id=project_id)


# --- the periodic tick --------------------------------------------------------


def projects_tick() -> dict[str, Any]:
    """Catch up on anything a lost task or signal left behind, then dispatch every project."""
    recovered = attempts_recover()
    dispatched = list(Project.objects.filter(state__in=_DISPATCHING).values_list("id", flat=True))
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
        _attempt_defer(attempt, reason="its dispatcher stopped while preparing it")
        recovered.append(f"{attempt.task.project_id}/{attempt.task.key}#{attempt.number}")
    return recovered
