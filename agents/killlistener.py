"""The kill listener on every worker node: executes the kills that other processes route here.

``agents.noderouting`` sends a kill of an agent on another node as a
PostgreSQL ``NOTIFY``; this listener (``manage.py kill_listener``, started by
``runhub --role worker|all`` on PostgreSQL) kills and cleans up the agents
addressed to its node. Polling is only the fallback: twice a second it also
looks for kills routed to its node recently that it has not handled yet (a
notification lost while it was reconnecting, say); a kill its own node's
processes executed themselves was never routed, and is not repeated. See
docs/scaling.md.
"""

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psycopg
from django.db import DatabaseError, connections
from django.utils import timezone

from agents.models import Agent, AgentState
from agents.noderouting import (
    CHANNEL,
    KILL_ROUTED,
    listener_application_name,
    postgres_conninfo,
)
from agents.services import agent_cleanup, agent_sandbox_kill
from audit.services import audit_record

logger = logging.getLogger(__name__)

# An agent killed longer ago than this is the reconciler's business, not the sweep's.
SWEEP_WINDOW = timedelta(minutes=2)
_KILL_THREADS = 8


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
                with psycopg.connect(
                    postgres_conninfo(listener_application_name(self.node)), autocommit=True
                ) as listen:
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
                # Killed or failed: agent_stop(to=FAILED) is routed like a kill.
                Agent.objects.filter(
                    node=self.node,
                    state__in=(AgentState.KILLED, AgentState.FAILED),
                    finished_at__gte=since,
                )
                .filter(**{f"sandbox_handle__{KILL_ROUTED}": True})
                .values_list("id", "finished_at")
            )
            # finished_at__gte leaves out rows without a finish time; the
            # check only tells the type checker so.
            found = [
                (str(agent_id), finished) for agent_id, finished in killed if finished is not None
            ]
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
        finally:
            # A pool thread holds no connection between kills (a database
            # restart, or a test database being dropped, finds none open).
            connections.close_all()

    def _cleanup(self, agent: Agent, via: str, latency_ms: float, errors: list[str]) -> None:
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
