"""The dispatcher keeps nothing in memory: racing passes and lost work are settled from the rows."""

import threading
from datetime import timedelta

from django.db import connection
from django.utils import timezone
from django_q.models import Task as QueueTask

from taskqueue import dispatcher
from taskqueue.models import AttemptState, Project, Task, TaskAttempt
from taskqueue.services import ProjectSpec, TaskSpec, project_create
from tests.test_projects import wait_for_project, wait_until


def spec(*keys: str, script: str = "true", **fields) -> ProjectSpec:
    return ProjectSpec(name="p", tasks=[TaskSpec(key=key, script=script) for key in keys], **fields)


def test_racing_dispatch_passes_start_every_task_exactly_once(hub):
    project = project_create(
        spec=spec(*[f"t{i}" for i in range(12)], mode="parallel"), created_by="test"
    )
    errors: list[BaseException] = []

    def dispatch() -> None:
        try:
            dispatcher.project_dispatch(project_id=project.id)
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=dispatch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert wait_for_project(project.id).state == "succeeded"
    for task in Task.objects.filter(project=project):
        assert list(TaskAttempt.objects.filter(task=task).values_list("state", flat=True)) == [
            AttemptState.SUCCEEDED
        ], task.key
        assert task.attempts == 1


def test_a_claim_whose_dispatcher_died_is_released_by_the_tick(hub):
    project = Project.objects.create(name="p", created_by="test", state="paused")
    project_task = Task.objects.create(
        project=project, key="only", script="true", state="running", attempts=1
    )
    stale = TaskAttempt.objects.create(task=project_task, number=1)  # preparing, no agent
    long_ago = timezone.now() - timedelta(hours=1)
    TaskAttempt.objects.filter(id=stale.id).update(created_at=long_ago)
    Project.objects.filter(id=project.id).update(state="running")

    report = dispatcher.projects_tick()

    assert report["recovered"] == [f"{project.id}/only#1"]
    assert wait_for_project(project.id).state == "succeeded"
    attempt = TaskAttempt.objects.get(task=project_task)
    assert attempt.number == 1 and attempt.state == "succeeded" and attempt.agent_id


def test_the_tick_settles_an_agent_whose_finish_was_never_handled(hub):
    project = project_create(spec=spec("a", "b", mode="sequential"), created_by="test")
    wait_until(
        lambda: Task.objects.filter(project=project, key="a", state="succeeded").exists(),
        what="a done",
    )
    wait_for_project(project.id)
    # Rewind the rows to "a's agent finished but nobody recorded it": the
    # signal or its django-q2 task was lost.
    Project.objects.filter(id=project.id).update(state="running", finished_at=None)
    TaskAttempt.objects.filter(task__project=project, task__key="b").delete()
    Task.objects.filter(project=project, key="b").update(state="pending", attempts=0)
    TaskAttempt.objects.filter(task__project=project, task__key="a").update(state="started")
    Task.objects.filter(project=project, key="a").update(state="running")

    report = dispatcher.projects_tick()

    assert report["recovered"] == [f"{project.id}/a#1"]
    assert wait_for_project(project.id).state == "succeeded"
    assert TaskAttempt.objects.filter(task__project=project).count() == 2


def test_a_not_before_time_holds_a_task_back_until_then(hub):
    later = timezone.now() + timedelta(seconds=2)
    project = project_create(
        spec=ProjectSpec(
            name="p",
            tasks=[
                TaskSpec(key="soon", script="true"),
                TaskSpec(key="later", script="true", not_before=later),
            ],
        ),
        created_by="test",
    )

    assert wait_for_project(project.id).state == "succeeded"

    agent = TaskAttempt.objects.get(task__project=project, task__key="later").agent
    # Never before its time; how soon after is a benchmark figure (bench/taskqueue.py).
    assert agent.created_at >= later


def test_backoff_grows_exponentially_up_to_the_cap_and_jitter_only_shortens_it():
    delays = [
        dispatcher.backoff_delay(base_s=2, cap_s=20, jitter=0, failures=n) for n in range(1, 7)
    ]
    assert delays == [2, 4, 8, 16, 20, 20]
    jittered = [
        dispatcher.backoff_delay(base_s=10, cap_s=100, jitter=0.5, failures=1) for _ in range(200)
    ]
    assert all(5 <= delay <= 10 for delay in jittered)
    assert len(set(jittered)) > 100


def test_a_not_before_time_is_kept_by_the_nodes_timer_with_no_worker_asleep(hub):
    later = timezone.now() + timedelta(hours=1)
    project = project_create(
        spec=ProjectSpec(name="p", tasks=[TaskSpec(key="later", script="true", not_before=later)]),
        created_by="test",
    )
    # The worker's pass records the time; nothing runs before it.
    wait_until(
        lambda: Project.objects.get(id=project.id).wake_at == later, 30, "the wake time recorded"
    )
    assert not TaskAttempt.objects.filter(task__project=project).exists()

    # The time comes: the worker node's timer dispatches the project by itself.
    now = timezone.now()
    Task.objects.filter(project=project).update(not_before=now)
    Project.objects.filter(id=project.id).update(wake_at=now)

    assert wait_for_project(project.id).state == "succeeded"
    assert Project.objects.get(id=project.id).wake_at is None
    # No django-q2 task ever slept in a worker until the time came.
    assert not QueueTask.objects.filter(name__startswith="project-wake").exists()
    # The timer's clear is conditional: a second node finds nothing left to wake.
    assert dispatcher.projects_wake_due() == []
