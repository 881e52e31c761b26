"""django-q2 entry points: ids in, one service call."""

from taskqueue import dispatcher, webhooks


def project_dispatch(project_id: int) -> None:
    dispatcher.project_dispatch(project_id=project_id)


def task_agent_finished(agent_id: str) -> None:
    dispatcher.task_agent_finished(agent_id=agent_id)


def projects_dispatch_waiting() -> None:
    dispatcher.projects_dispatch_waiting()


def project_wake(project_id: int, at: str) -> None:
    """A waker an earlier version queued (it slept until ``at``): dispatch now."""
    dispatcher.project_dispatch(project_id=project_id)


def projects_tick() -> dispatcher.TickReport:
    """The periodic schedule (created by migration 0002): catch up and dispatch."""
    return dispatcher.projects_tick()


def project_webhook_deliver(project_id: int) -> None:
    webhooks.webhook_deliver(project_id=project_id)
