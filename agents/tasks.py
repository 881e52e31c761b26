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


def docker_pool_refill() -> dict:
    """Top the docker warm pool of the node whose worker runs this up to its size."""
    from django.conf import settings

    from agents.sandboxes.docker import docker_pool_refill as refill

    return refill(node=settings.FLOTILLA_NODE_NAME)
