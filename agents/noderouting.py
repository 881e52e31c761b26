"""Kill routing across nodes: the node that runs an agent is the one that kills it.

On several machines the web process serving a kill is usually not on the
agent's node, and a cgroup, process group or container can only be killed
where it lives. ``agents.services.agent_stop`` stays the one chokepoint: it
marks the agent final, and when the agent runs on another node it calls
``node_kill_request`` instead of the local sandbox backend. The request is a
PostgreSQL ``NOTIFY`` on one channel; every worker node runs a listener
(``manage.py kill_listener``, started by ``runhub --role worker|all``) that
kills and cleans up the agents addressed to it. Polling is only the
fallback: twice a second the listener also looks for agents of its node that
were killed recently and that it has not handled yet (a notification lost
while the listener was reconnecting, say). See docs/scaling.md.
"""

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, connections
from django.utils import timezone
from django.utils.module_loading import import_string

from agents.models import Agent, AgentState
from audit.services import audit_record

logger = logging.getLogger(__name__)

CHANNEL = "flotilla_node_kill"
# An agent killed longer ago than this is the reconciler's business, not the sweep's.
SWEEP_WINDOW = timedelta(minutes=2)
_KILL_THREADS = 8


def node_is_local(node: str) -> bool:
    """True when ``node`` is this process's node (or no node ran the agent yet)."""
    return not node or node == settings.FLOTILLA_NODE_NAME


def node_kill_request(*, agent: Agent) -> bool:
    """Ask the node running ``agent`` (already final) to kill and clean up its sandbox.

    False when the request could not be routed; the caller then kills here.
    """
    return import_string(settings.FLOTILLA_NODE_KILL_ROUTER)(agent=agent)


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
    if not _listener_connected(agent.node):
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])
    return True


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


# --- the listener on every worker node -----------------------------------------


class NodeKillListener:
    """Kills what other processes ask this node to kill; run one per worker node."""

    def __init__(self, *, node: str, sweep_every_s: float = 0.5) -> None:
        self.node = node
        self.sweep_every_s = sweep_every_s
        self.handled: dict[str, float] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=_KILL_THREADS, thread_name_prefix="node-kill")
        self._cleanup_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="node-cleanup")

    def run(self, *, stop: threading.Event, ready: Callable[[], None] = lambda: None) -> None:
        """Listen until ``stop`` is set, reconnecting whenever the database goes away."""
        while not stop.is_set():
            try:
                with psycopg.connect(_conninfo(self.node), autocommit=True) as listen:
                    listen.execute(f"LISTEN {CHANNEL}")
                    ready()
                    # Notifications sent while this listener was away are lost: sweep now.
                    self.sweep()
                    while not stop.is_set():
                        for notify in listen.notifies(timeout=self.sweep_every_s):
                            self._on_notify(notify.payload)
                        self.sweep()
            except (psycopg.OperationalError, DatabaseError) as error:
                logger.warning("kill listener of node %s lost the database: %s", self.node, error)
                connections.close_all()
                stop.wait(0.5)
        self._pool.shutdown(wait=True)
        self._cleanup_pool.shutdown(wait=True)

    def _on_notify(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            node, agent_id, sent_at = message["node"], message["agent_id"], message["sent_at"]
        except (ValueError, KeyError, TypeError):
            logger.warning("kill listener ignores a malformed request: %r", payload[:200])
            return
        if node == self.node:
            self._submit(str(agent_id), float(sent_at), via="notify")

    def sweep(self) -> list[str]:
        """Handle agents of this node killed recently that no notification brought."""
        try:
            since = timezone.now() - SWEEP_WINDOW
            killed = (
                Agent.objects.filter(
                    node=self.node, state=AgentState.KILLED, finished_at__gte=since
                )
                .exclude(sandbox_handle={})
                .values_list("id", "finished_at")
            )
            found = [(str(agent_id), finished) for agent_id, finished in killed]
        except DatabaseError:
            connections.close_all()
            raise
        self._forget_old()
        missed = [
            (agent_id, finished) for agent_id, finished in found if agent_id not in self.handled
        ]
        for agent_id, finished in missed:
            self._submit(agent_id, finished.timestamp(), via="sweep")
        return [agent_id for agent_id, _ in missed]

    def _submit(self, agent_id: str, sent_at: float, *, via: str) -> None:
        with self._lock:
            if agent_id in self.handled:
                return
            self.handled[agent_id] = time.time()
        self._pool.submit(self._kill, agent_id, sent_at, via)

    def _kill(self, agent_id: str, sent_at: float, via: str) -> None:
        from agents.services import agent_sandbox_kill

        try:
            agent = Agent.objects.filter(id=agent_id).first()
            if agent is None or not agent.is_final or agent.node != self.node:
                return
            errors = agent_sandbox_kill(agent=agent)
            latency_ms = round(max(0.0, time.time() - sent_at) * 1000, 2)
            # Git cleanup is slow and serialised per mirror: it must not hold up other kills.
            self._cleanup_pool.submit(self._cleanup, agent, via, latency_ms, errors)
        except Exception:
            # A kill that failed half-way may be retried by the next sweep; the
            # thread's connection may be the reason (a database restart).
            logger.exception("kill listener could not kill agent %s", agent_id)
            with self._lock:
                self.handled.pop(agent_id, None)
            connections.close_all()

    def _cleanup(self, agent: Agent, via: str, latency_ms: float, errors: list[str]) -> None:
        from agents.services import agent_cleanup

        try:
            _, cleanup_errors = agent_cleanup(agent=agent)
            audit_record(
                actor=f"system:node:{self.node}",
                action="agent.sandbox_kill",
                target=f"agent:{agent.id}",
                reason="kill routed to the agent's node",
                data={
                    "node": self.node,
                    "via": via,
                    "latency_ms": latency_ms,
                    "errors": errors + cleanup_errors,
                },
            )
        except Exception:
            logger.exception("kill listener could not clean up agent %s", agent.id)
        finally:
            connections.close_all()

    def _forget_old(self) -> None:
        horizon = time.time() - 2 * SWEEP_WINDOW.total_seconds()
        with self._lock:
            for agent_id in [key for key, at in self.handled.items() if at < horizon]:
                del self.handled[agent_id]


def _conninfo(node: str) -> str:
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
    params["application_name"] = listener_application_name(node)
    return psycopg.conninfo.make_conninfo(**{key: str(value) for key, value in params.items()})
