"""Kill routing on PostgreSQL: each kill is executed, and audited, exactly once.

A web process that kills an agent of its own node (``runhub --role all``)
kills it there; the node's kill listener must not execute and audit that kill
again. A kill routed to another node whose notification was lost must still
be executed by that node's sweep. Found by CI: ``/metrics`` counted one API
kill twice.
"""

import uuid

import psycopg
import pytest
from django.conf import settings
from django.test import override_settings

from agents.killlistener import NodeKillListener
from agents.models import Agent, AgentState
from agents.noderouting import _listeners_seen, listener_application_name, postgres_conninfo
from agents.services import agent_stop
from audit.models import AuditEvent
from tests.conftest import wait_until

pytestmark = [
    pytest.mark.skipif(
        settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
        reason="kills are routed by PostgreSQL NOTIFY: runs in the PostgreSQL pass",
    ),
    pytest.mark.django_db(transaction=True),
]


def running_agent(node: str) -> Agent:
    agent_id = uuid.uuid4()
    return Agent.objects.create(
        id=agent_id,
        task_id="routing",
        agent_type="worker",
        runtime="script",
        script="sleep 60",
        repository="/nowhere",
        base_branch="main",
        work_branch=f"agent/{agent_id}",
        sandbox_backend="bwrap",
        timeout_s=60,
        pool="unserved",
        state=AgentState.RUNNING,
        node=node,
        # No process carries this agent's label: killing it finds nothing.
        sandbox_handle={"backend": "bwrap", "agent_id": str(agent_id)},
        requested_by="user:test",
    )


def swept(node: str) -> list[str]:
    listener = NodeKillListener(node=node)
    try:
        return listener.sweep()
    finally:
        listener._pool.shutdown(wait=True)
        listener._cleanup_pool.shutdown(wait=True)


def test_a_kill_done_on_the_agents_own_node_is_not_executed_again_by_its_sweep():
    node = f"node-{uuid.uuid4().hex[:8]}"
    agent = running_agent(node)
    with override_settings(FLOTILLA_NODE_NAME=node):
        stopped = agent_stop(agent_id=agent.id, reason="operator")
    assert stopped.terminated and not stopped.routed_to

    assert swept(node) == []
    assert not AuditEvent.objects.filter(action="agent.sandbox_kill").exists()


def test_a_routed_kill_whose_notification_was_lost_is_executed_by_the_nodes_sweep():
    node = f"node-{uuid.uuid4().hex[:8]}"
    agent = running_agent(node)
    # The node's listener is connected, but the notification never reaches
    # it (this connection does not LISTEN): only the sweep can find the kill.
    with psycopg.connect(postgres_conninfo(listener_application_name(node))):
        _listeners_seen.clear()
        with override_settings(FLOTILLA_NODE_NAME="node-web"):
            stopped = agent_stop(agent_id=agent.id, reason="operator")
    assert stopped.routed_to == node

    assert swept(node) == [str(agent.id)]
    audit = wait_until(
        lambda: AuditEvent.objects.filter(action="agent.sandbox_kill").first(),
        10,
        "the node to audit the kill it executed",
    )
    assert audit.target == f"agent:{agent.id}"
    assert audit.data["via"] == "sweep"
