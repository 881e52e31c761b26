"""Kill routing across nodes: the node that runs an agent is the one that kills it.

On several machines the web process serving a kill is usually not on the
agent's node, and a cgroup, process group or container can only be killed
where it lives. ``agents.services.agent_stop`` stays the one chokepoint: it
marks the agent final, and when the agent runs on another node it calls
``node_kill_request`` instead of the local sandbox backend. The request is a
PostgreSQL ``NOTIFY`` on one channel; every worker node runs a listener
(``manage.py kill_listener``, started by ``runhub --role worker|all``;
``agents.killlistener``) that kills and cleans up the agents addressed to it. Polling is only the
fallback: twice a second the listener also looks for agents routed to its node
recently that it has not handled yet (a notification lost while the listener
was reconnecting, say). A kill executed by the agent's own node is never
routed, so it is never executed twice. See docs/scaling.md.
"""

import json
import time
from typing import Any, Protocol

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils.module_loading import import_string

from agents.models import Agent

CHANNEL = "flotilla_node_kill"
# The sandbox-handle key that marks a kill routed to the agent's node.
KILL_ROUTED = "kill_routed"


class KillRouter(Protocol):
    """``FLOTILLA_NODE_KILL_ROUTER``: routes a final agent's kill to its node, or says False."""

    def __call__(self, *, agent: Agent) -> bool: ...


def node_is_local(node: str) -> bool:
    """True when ``node`` is this process's node (or no node ran the agent yet)."""
    return not node or node == settings.FLOTILLA_NODE_NAME


def node_kill_request(*, agent: Agent) -> bool:
    """Ask the node running ``agent`` (already final) to kill and clean up its sandbox.

    False when the request could not be routed; the caller then kills here.
    """
    router: KillRouter = import_string(settings.FLOTILLA_NODE_KILL_ROUTER)
    return router(agent=agent)


def notify_node(*, agent: Agent) -> bool:
    """The PostgreSQL router: one NOTIFY, delivered when the caller's transaction commits.

    It routes only when the node's listener is connected. Otherwise the node
    is down or runs no listener: the kill is tried here (a development setup
    where several node names share one machine), and the listener's first
    sweep and the reconciler finish it when the node comes back. With SQLite
    every node shares one machine (a SQLite file cannot be shared across
    machines), so the kill always happens here.
    """
    if connection.vendor != "postgresql":
        return False
    payload = json.dumps({"node": agent.node, "agent_id": str(agent.id), "sent_at": time.time()})
    connected = _listener_connected(agent.node)
    # The mark tells the node's sweep that this kill is its to execute (a
    # notification lost while its listener reconnected); a kill done by a
    # process of the agent's own node is never routed, carries no mark and is
    # not executed a second time. A node whose listener is away is marked
    # too: the kill tried here reaches nothing on another machine, and the
    # node's first sweep after it reconnects executes it. Mark and
    # notification commit together.
    with transaction.atomic():
        # The row as it is now, not as the caller read it: the run may have
        # stored its sandbox's handle since (the agent is final now, so no
        # run writes it again), and the node kills by this handle.
        stored = (
            Agent.objects.select_for_update()
            .filter(id=agent.id)
            .values_list("sandbox_handle", flat=True)
            .first()
        )
        handle = {**(stored or {}), KILL_ROUTED: True}
        Agent.objects.filter(id=agent.id).update(sandbox_handle=handle)
        if connected:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])
    agent.sandbox_handle = handle
    return connected


# node → (when it was checked, whether its listener was connected); a kill-all
# asks once per node rather than once per agent.
_listeners_seen: dict[str, tuple[float, bool]] = {}
_LISTENER_CHECK_TTL_S = 2.0


def _listener_connected(node: str) -> bool:
    checked = _listeners_seen.get(node)
    if checked and time.monotonic() - checked[0] < _LISTENER_CHECK_TTL_S:
        return checked[1]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s LIMIT 1",
            [listener_application_name(node)],
        )
        connected = cursor.fetchone() is not None
    _listeners_seen[node] = (time.monotonic(), connected)
    return connected


def listener_application_name(node: str) -> str:
    """How a node's listener names its connection (PostgreSQL keeps 63 bytes of it)."""
    return f"flotilla-kills:{node}"[:63]


def postgres_conninfo(application_name: str) -> str:
    """A libpq connection string for the default database, from Django's own settings."""
    db = settings.DATABASES["default"]
    parts = {
        "dbname": db.get("NAME"),
        "user": db.get("USER"),
        "password": db.get("PASSWORD"),
        "host": db.get("HOST"),
        "port": db.get("PORT"),
    }
    params: dict[str, Any] = {key: value for key, value in parts.items() if value}
    params.update(
        {
            key: value
            for key, value in (db.get("OPTIONS") or {}).items()
            if key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout")
        }
    )
    params.setdefault("connect_timeout", 5)
    params["application_name"] = application_name[:63]
    return psycopg.conninfo.make_conninfo(**{key: str(value) for key, value in params.items()})
