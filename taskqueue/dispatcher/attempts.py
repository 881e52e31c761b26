"""An attempt: its base branch built and its agent spawned; then its agent's end recorded.

A failed attempt is retried after an exponential backoff with jitter while
retries remain; then the task fails and the project's failure policy applies.
"""

import logging
import random
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from agents.errors import AgentError, ConcurrencyLimitReached, SpawnRefused
from agents.services import SpawnRequest, agent_spawn, agent_terminate
from taskqueue import branches
from taskqueue.dispatcher.claims import ATTEMPT_LIVE, DispatchReport, Edge
from taskqueue.graph import graph_descendants
from taskqueue.models import (
    TASK_OPEN_STATES,
    AttemptState,
    FailurePolicy,
    Task,
    TaskAttempt,
    TaskState,
)

logger = logging.getLogger(__name__)


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
        attempt_failed(attempt.id, error=str(conflict), retryable=False)
        return
    except branches.WorkspaceError as error:
        report.failed.append(task.key)
        attempt_failed(attempt.id, error=str(error))
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
        attempt_defer(attempt, reason=str(refusal))
        return
    except AgentError as error:
        report.failed.append(task.key)
        attempt_failed(attempt.id, error=str(error), retryable=False)
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
        priority=task.priority,
        gate_profile=task.gate_profile,
        options={
            "project_id": task.project_id,
            "task_key": task.key,
            "task_attempt": attempt.number,
        },
    )


def attempt_defer(attempt: TaskAttempt, *, reason: str) -> None:
    """The hub cannot take the agent now (full, halted): the task waits, no retry is spent."""
    with transaction.atomic():
        if TaskAttempt.objects.filter(id=attempt.id, state=AttemptState.PREPARING).delete()[0]:
            Task.objects.filter(id=attempt.task_id, state=TaskState.RUNNING).update(
                state=TaskState.READY, attempts=F("attempts") - 1, error=f"waiting: {reason}"
            )


def attempt_succeeded(attempt: TaskAttempt) -> None:
    now = timezone.now()
    with transaction.atomic():
        if TaskAttempt.objects.filter(id=attempt.id, state=AttemptState.STARTED).update(
            state=AttemptState.SUCCEEDED, finished_at=now
        ):
            Task.objects.filter(id=attempt.task_id, state=TaskState.RUNNING).update(
                state=TaskState.SUCCEEDED, finished_at=now, error=""
            )


def attempt_failed(attempt_id: int, *, error: str, retryable: bool = True) -> None:
    """Retry after a backoff while retries remain; then fail the task and apply the policy."""
    now = timezone.now()
    to_stop: list[uuid.UUID] = []
    with transaction.atomic():
        if not TaskAttempt.objects.filter(id=attempt_id, state__in=ATTEMPT_LIVE).update(
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
    delay: float = min(cap_s, base_s * 2 ** (failures - 1))
    return delay * (1 - jitter * random.random())


def _failure_policy(task: Task) -> list[uuid.UUID]:
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


def tasks_cancel(*, project_id: int, reason: str) -> list[uuid.UUID]:
    """Cancel every open task of the project; returns the agents that must be stopped."""
    now = timezone.now()
    live = TaskAttempt.objects.filter(task__project_id=project_id, state__in=ATTEMPT_LIVE)
    agent_ids = list(live.filter(agent__isnull=False).values_list("agent_id", flat=True))
    live.update(state=AttemptState.CANCELLED, finished_at=now, error=reason)
    Task.objects.filter(project_id=project_id, state__in=TASK_OPEN_STATES).update(
        state=TaskState.CANCELLED, finished_at=now, error=reason
    )
    return agent_ids


def agents_stop(*, agent_ids: list[uuid.UUID], reason: str) -> None:
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
