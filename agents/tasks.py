"""django-q2 entry points for short jobs: ids in, one service call.

Agent runs are not among them: node supervisors claim agents (agents/supervisor.py).
"""

from typing import Any


def agents_reconcile() -> dict[str, Any]:
    """The reconciler schedule: one pass over the node whose worker runs it."""
    from django.conf import settings

    from agents.reconciler import agents_reconcile as reconcile

    return reconcile(node=settings.FLOTILLA_NODE_NAME).as_dict()


def docker_pool_refill() -> dict[str, list[str]]:
    """Top the docker warm pool of the node whose worker runs this up to its size."""
    from django.conf import settings

    from agents.sandboxes.docker import docker_pool_refill as refill

    return refill(node=settings.FLOTILLA_NODE_NAME)
