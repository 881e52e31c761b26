"""django-q2 entry points: ids in, one service call."""

from agents import runner


def agent_run(agent_id: str) -> None:
    runner.agent_run(agent_id=agent_id)


def agent_resume(agent_id: str, hops: int = 0) -> None:
    runner.agent_resume_run(agent_id=agent_id, hops=hops)


def agents_reconcile() -> dict:
    """The reconciler schedule: one pass over the node whose worker runs it."""
    from django.conf import settings

    from agents.reconciler import agents_reconcile as reconcile

    return reconcile(node=settings.FLOTILLA_NODE_NAME).as_dict()
