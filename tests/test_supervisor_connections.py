"""The node supervisor: database connections held while agents run.

docs/architecture.md and agents/runner.py promise that "a run holds no
database connection while the sandbox works", because a node runs hundreds
of agents on a PostgreSQL server that allows a hundred connections. Each
agent here prints one line and then works (sleeps); the node's process must
not hold a connection per working agent.
"""

import threading
import uuid

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import override_settings

from agents.leases import agents_claim
from agents.models import Agent, AgentEvent, AgentEventKind, AgentState
from agents.runner import AgentRun, agent_run
from agents.services import SpawnRequest, agent_spawn, agent_terminate
from tests.conftest import wait_until

AGENTS = 8


def open_connections() -> int:
    """Connections to the test database on the server, apart from the test's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


# A connection limit is PostgreSQL's (max_connections): SQLite has none, and
# its file descriptors stay open after a close while another connection of the
# process holds a lock, so they would not count connections anyway.
pytestmark = pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="counts PostgreSQL server connections: runs in the PostgreSQL pass",
)


@pytest.mark.django_db(transaction=True)
@override_settings(MAX_CONCURRENT_AGENTS=100)
def test_working_agents_hold_no_database_connection_each(remote_repo):
    pool = f"conns-{uuid.uuid4().hex[:8]}"
    with override_settings(FLOTILLA_NODE_POOL=pool):
        for index in range(AGENTS):
            request = SpawnRequest(
                task_id=f"conn-{index}",
                agent_type="worker",
                runtime="script",
                script="echo hello; sleep 300",
                repository=str(remote_repo),
                base_branch="main",
            )
            agent_spawn(request=request, requested_by="user:test")
    claimed = agents_claim(node="node-conns", limit=AGENTS, pool=pool)
    assert len(claimed) == AGENTS
    connections.close_all()
    before = open_connections()

    def target(run: AgentRun) -> None:
        try:
            agent_run(run=run)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=target, args=(AgentRun(agent=agent),), daemon=True)
        for agent in claimed
    ]
    for thread in threads:
        thread.start()
    ids = [agent.id for agent in claimed]
    try:
        wait_until(
            lambda: (
                AgentEvent.objects.filter(agent_id__in=ids, kind=AgentEventKind.OUTPUT)
                .values("agent_id")
                .distinct()
                .count()
                == AGENTS
            ),
            timeout=120,
            what="every agent to have printed and be working",
        )
        assert Agent.objects.filter(id__in=ids, state=AgentState.RUNNING).count() == AGENTS
        held = open_connections() - before
    finally:
        for agent_id in ids:
            agent_terminate(agent_id=agent_id, reason="test teardown")
        for thread in threads:
            thread.join(timeout=60)

    # A few for the node itself would do; one per working agent exhausts the server.
    assert held < AGENTS // 2, f"{held} connections held by {AGENTS} working agents"
