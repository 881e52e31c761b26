"""Kill routing on PostgreSQL: each kill is executed, and audited, exactly once, and never lost.

A web process that kills an agent of its own node (``runhub --role all``)
kills it there; the node's kill listener must not execute and audit that kill
again (found by CI: ``/metrics`` counted one API kill twice). A kill routed
to another node is marked ``kill_routed`` on the agent's sandbox handle, and
the node's sweep executes every marked kill its notification did not bring:
an agent with no sandbox (paused, or still spawning), a sandbox whose handle
was stored while the kill was under way, a kill sent while the node's
listener was away, and a routed stop that ends ``failed``.
"""

import uuid

import psycopg
import pytest
from django.conf import settings
from django.test import override_settings

from agents import termination
from agents.killlistener import NodeKillListener
from agents.models import Agent, AgentState
from agents.noderouting import (
    KILL_ROUTED,
    _listeners_seen,
    listener_application_name,
    postgres_conninfo,
)
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


def agent_on(node: str, *, state: AgentState, handle: dict | None = None) -> Agent:
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
        state=state,
        node=node,
        sandbox_handle=handle if handle is not None else {},
        requested_by="user:test",
    )


def bwrap_handle(agent: Agent) -> dict:
    # No process carries this label: killing it finds nothing, and says so to no one.
    return {"backend": "bwrap", "agent_id": str(agent.id)}


def swept(node: str) -> list[str]:
    listener = NodeKillListener(node=node)
    try:
        return listener.sweep()
    finally:
        listener._pool.shutdown(wait=True)
        listener._cleanup_pool.shutdown(wait=True)


def node_audit(agent: Agent) -> AuditEvent:
    return wait_until(
        lambda: AuditEvent.objects.filter(
            action="agent.sandbox_kill", target=f"agent:{agent.id}"
        ).first(),
        10,
        "the node to audit the kill it executed",
    )


def stop_from_another_node(agent: Agent, *, listener_connected: bool, **kwargs):
    """``agent_stop`` from node-web, with the agent's node's listener connected (not listening)."""
    _listeners_seen.clear()
    if not listener_connected:
        with override_settings(FLOTILLA_NODE_NAME="node-web"):
            return agent_stop(agent_id=agent.id, reason="operator", **kwargs)
    listener = postgres_conninfo(listener_application_name(agent.node))
    with psycopg.connect(listener), override_settings(FLOTILLA_NODE_NAME="node-web"):
        return agent_stop(agent_id=agent.id, reason="operator", **kwargs)


def test_a_routed_kill_of_a_paused_agent_is_executed_and_audited_by_its_node():
    # A paused agent keeps its worktree on its node but has no sandbox: its
    # handle is empty, and the routing mark is all the handle then holds.
    node = f"node-{uuid.uuid4().hex[:8]}"
    agent = agent_on(node, state=AgentState.PAUSED)

    stopped = stop_from_another_node(agent, listener_connected=True)
    assert stopped.routed_to == node

    assert swept(node) == [str(agent.id)]
    audit = node_audit(agent)
    assert audit.data["via"] == "sweep"
    assert audit.data["errors"] == []


def test_a_kill_routed_while_the_sandbox_started_keeps_the_handle_the_node_kills_by(
    monkeypatch,
):
    node = f"node-{uuid.uuid4().hex[:8]}"
    agent = agent_on(node, state=AgentState.SPAWNING)
    real_transition = termination.agent_transition

    def sandbox_stored_meanwhile(**kwargs):
        # The run on the agent's node stores its new sandbox's handle after
        # the kill read the row and before the kill marks it final (runner
        # _prepare → _held_update, which a live state still allows).
        Agent.objects.filter(id=agent.id, state=AgentState.SPAWNING).update(
            sandbox_handle=bwrap_handle(agent)
        )
        return real_transition(**kwargs)

    monkeypatch.setattr(termination, "agent_transition", sandbox_stored_meanwhile)
    stopped = stop_from_another_node(agent, listener_connected=True)
    assert stopped.routed_to == node

    # The node kills by the row's handle: it must still name the sandbox.
    handle = Agent.objects.get(id=agent.id).sandbox_handle
    assert handle == {**bwrap_handle(agent), KILL_ROUTED: True}
    assert swept(node) == [str(agent.id)]
    assert node_audit(agent).data["via"] == "sweep"


def test_a_kill_sent_while_the_nodes_listener_was_away_is_executed_by_its_first_sweep():
    # The listener is reconnecting (a database restart, say): the web process
    # kills "here", where nothing of the agent runs. The node's sweep after
    # it reconnects is what kills the processes (noderouting's docstring).
    node = f"node-{uuid.uuid4().hex[:8]}"
    agent = agent_on(node, state=AgentState.RUNNING)
    Agent.objects.filter(id=agent.id).update(sandbox_handle=bwrap_handle(agent))

    stopped = stop_from_another_node(agent, listener_connected=False)
    assert stopped.terminated and not stopped.routed_to

    assert swept(node) == [str(agent.id)]
    assert node_audit(agent).data["via"] == "sweep"


def test_a_routed_stop_that_ends_failed_is_executed_by_the_nodes_sweep():
    # agent_stop(to=FAILED) is routed like a kill (the reconciler fails the
    # agents of a lost node this way); a lost notification must not lose it.
    node = f"node-{uuid.uuid4().hex[:8]}"
    agent = agent_on(node, state=AgentState.RUNNING)
    Agent.objects.filter(id=agent.id).update(sandbox_handle=bwrap_handle(agent))

    stopped = stop_from_another_node(agent, listener_connected=True, to=AgentState.FAILED)
    assert stopped.routed_to == node

    assert swept(node) == [str(agent.id)]
    assert node_audit(agent).data["via"] == "sweep"


def test_a_kill_done_on_the_agents_own_node_is_not_executed_again_by_its_sweep():
    node = f"node-{uuid.uuid4().hex[:8]}"
    agent = agent_on(node, state=AgentState.RUNNING)
    Agent.objects.filter(id=agent.id).update(sandbox_handle=bwrap_handle(agent))
    with override_settings(FLOTILLA_NODE_NAME=node):
        stopped = agent_stop(agent_id=agent.id, reason="operator")
    assert stopped.terminated and not stopped.routed_to

    assert swept(node) == []
    assert not AuditEvent.objects.filter(action="agent.sandbox_kill").exists()


def test_a_routed_kill_whose_notification_was_lost_is_executed_by_the_nodes_sweep():
    node = f"node-{uuid.uuid4().hex[:8]}"
    agent = agent_on(node, state=AgentState.RUNNING)
    Agent.objects.filter(id=agent.id).update(sandbox_handle=bwrap_handle(agent))

    # The node's listener is connected, but the notification never reaches
    # it (this connection does not LISTEN): only the sweep can find the kill.
    stopped = stop_from_another_node(agent, listener_connected=True)
    assert stopped.routed_to == node

    assert swept(node) == [str(agent.id)]
    audit = node_audit(agent)
    assert audit.target == f"agent:{agent.id}"
    assert audit.data["via"] == "sweep"
