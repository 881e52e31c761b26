"""Receivers of signals from lower layers; each only hands work to django-q2."""

import logging

from django_q.tasks import async_task

from taskqueue.models import ProjectState, Task, TaskAttempt, TaskState

logger = logging.getLogger(__name__)


def on_agent_finished(sender: object, agent_id: str, state: str, **kwargs: object) -> None:
    """A project's agent ended: its attempt is settled and the project dispatched, in a worker.

    Any other agent freed a hub slot that a waiting project may take.
    """
    try:
        if TaskAttempt.objects.filter(agent_id=agent_id).exists():
            async_task(
                "taskqueue.tasks.task_agent_finished",
                agent_id,
                group="projects",
                task_name=f"project-agent-finished-{agent_id}",
            )
        elif Task.objects.filter(
            state=TaskState.READY, project__state=ProjectState.RUNNING
        ).exists():
            async_task("taskqueue.tasks.projects_dispatch_waiting", group="projects")
    except Exception:
        # The agent's own transition has committed; the periodic tick catches up.
        logger.exception("could not queue the project work after agent %s finished", agent_id)
