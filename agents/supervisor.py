"""The node supervisor: each worker node claims queued agents and runs them in threads.

An agent run lasts minutes to hours. Carried as a queue message it was
prefetched by one worker cluster, locked for its whole runtime and held a
worker process; when the cluster died the prefetched messages were stranded
(or, with Redis, gone) and a busy node starved agents another node could have
run. Here the database row is the queue: a supervisor claims agents with a
conditional update, up to its node's capacity, in priority and age order,
when it is woken (PostgreSQL ``NOTIFY`` or a datagram on SQLite, see
agents/wakeup.py) or every FLOTILLA_NODE_POLL_S. Each claimed agent runs in
a thread of this one process over its sandbox's own processes, and every
FLOTILLA_NODE_HEARTBEAT_S the supervisor renews the lease of all it holds.
A lease older than FLOTILLA_NODE_LEASE_S belongs to a lost node: every
supervisor recovers such agents (agents.reconciler.agents_recover_lapsed).
On SIGTERM the node hands its running agents back to the queue. The node
also runs FLOTILLA_NODE_TIMERS every FLOTILLA_NODE_POLL_S in a thread of their
own (the projects' backoff and not-before times), so nothing sleeps in a
django-q2 worker waiting for a time.
"""

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from django.conf import settings
from django.db import Error as DatabaseError
from django.db import connection, connections
from django.utils.module_loading import import_string

from agents.leases import agent_hand_back, agents_claim, agents_claim_resumes, agents_heartbeat
from agents.models import Agent
from agents.noderouting import postgres_conninfo
from agents.reconciler import agents_recover_lapsed
from agents.runner import AgentRun, agent_run
from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxError, SandboxHandle
from agents.wakeup import CHANNEL, wake_socket_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorConfig:
    node: str
    pool: str
    capacity: int
    lease_s: float
    heartbeat_s: float
    poll_s: float
    # How long a stopping node waits for its runs to hand their agents back.
    stop_s: float = 3.0
    # Dotted paths of what the node runs every poll_s (FLOTILLA_NODE_TIMERS).
    timers: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls) -> "SupervisorConfig":
        return cls(
            node=settings.FLOTILLA_NODE_NAME,
            pool=settings.FLOTILLA_NODE_POOL,
            capacity=settings.FLOTILLA_NODE_CAPACITY,
            lease_s=settings.FLOTILLA_NODE_LEASE_S,
            heartbeat_s=settings.FLOTILLA_NODE_HEARTBEAT_S,
            poll_s=settings.FLOTILLA_NODE_POLL_S,
            stop_s=settings.FLOTILLA_NODE_STOP_S,
            timers=tuple(settings.FLOTILLA_NODE_TIMERS),
        )


class NodeSupervisor:
    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.runs: dict[str, tuple[AgentRun, threading.Thread]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()

    # --- the loop -------------------------------------------------------------

    def serve(self, *, ready: Callable[[], None] = lambda: None) -> None:
        """Claim and run agents until ``stop()``; then hand back what still runs."""
        waker = threading.Thread(target=self._listen, name="supervisor-wake", daemon=True)
        waker.start()
        if self.config.timers:
            timers = threading.Thread(target=self._time, name="supervisor-timers", daemon=True)
            timers.start()
        ready()
        next_beat = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                if time.monotonic() >= next_beat:
                    self._beat()
                    next_beat = time.monotonic() + self.config.heartbeat_s
                self._fill()
            except DatabaseError as error:
                # A database restart must not end the node: reconnect on a later
                # pass, at the poll rate rather than as fast as connections fail.
                logger.warning("node supervisor %s lost the database: %s", self.config.node, error)
                connections.close_all()
                self._stop.wait(self.config.poll_s)
            except Exception:
                # Nor may one bad pass: the agents it runs would all be handed back.
                logger.exception("node supervisor %s: a pass failed", self.config.node)
                connections.close_all()
                self._stop.wait(1.0)
            timeout = min(self.config.poll_s, max(0.0, next_beat - time.monotonic()))
            self._wake.wait(timeout)
        self._hand_back_all()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _time(self) -> None:
        """Run the node's timers every poll_s, in a thread of their own.

        A timer may do slow work (a project pass builds branches with git), so
        it never delays a claim; one that fails is logged and runs again next
        time.
        """
        timers = [import_string(path) for path in self.config.timers]
        while not self._stop.wait(self.config.poll_s):
            for timer in timers:
                try:
                    timer()
                except Exception:
                    logger.exception("node %s: timer %s failed", self.config.node, timer)
                finally:
                    connections.close_all()

    def _fill(self) -> None:
        """Claim as many agents as there are free slots: resumes first, then the queue."""
        free = self.config.capacity - len(self.runs)
        if free <= 0:
            return
        resumed = agents_claim_resumes(node=self.config.node, limit=free)
        claimed = agents_claim(
            node=self.config.node, pool=self.config.pool, limit=free - len(resumed)
        )
        for agent in resumed:
            self._start(AgentRun(agent=agent, resuming=True))
        for agent in claimed:
            self._start(AgentRun(agent=agent))
        if len(resumed) + len(claimed) == free:
            self._wake.set()  # there may be more waiting for a slot

    def _start(self, run: AgentRun) -> None:
        agent_id = str(run.agent.id)
        thread = threading.Thread(
            target=self._run, args=(run,), name=f"agent-{agent_id[:8]}", daemon=True
        )
        with self._lock:
            self.runs[agent_id] = (run, thread)
        try:
            thread.start()
        except RuntimeError:
            # No thread to run it (the process is out of threads): back to the queue.
            logger.exception("cannot start a thread for agent %s", agent_id)
            with self._lock:
                self.runs.pop(agent_id, None)
            agent_hand_back(agent=run.agent, node=self.config.node)

    def _run(self, run: AgentRun) -> None:
        try:
            agent_run(run=run)
        except Exception:
            logger.exception("the run of agent %s ended with an error", run.agent.id)
        finally:
            connections.close_all()
            with self._lock:
                self.runs.pop(str(run.agent.id), None)
            self._wake.set()
            logger.info("node %s: the run of agent %s ended", self.config.node, run.agent.id)

    # --- leases ---------------------------------------------------------------

    def _beat(self) -> None:
        """Renew every held lease, let go of agents held no more, recover lapsed ones."""
        with self._lock:
            held = [run.agent.id for run, _ in self.runs.values()]
        for agent_id in agents_heartbeat(node=self.config.node, agent_ids=held):
            self._let_go(agent_id)
        report = agents_recover_lapsed(lease_s=self.config.lease_s, pool=self.config.pool)
        if report.retried or report.failed:
            logger.warning(
                "node %s recovered agents of lost nodes: retried %s, failed %s",
                self.config.node,
                report.retried,
                report.failed,
            )

    def _let_go(self, agent_id: str) -> None:
        """An agent this node runs is not its own any more (killed, or recovered elsewhere)."""
        with self._lock:
            entry = self.runs.get(agent_id)
        if entry is None:
            return
        run, _ = entry
        agent = Agent.objects.filter(id=agent_id).first()
        if agent is not None and agent.is_final:
            return  # the killer kills the sandbox; the run sees it and stops
        # Another node took the agent over: stop this run's own sandbox (never
        # the row's, which names the new owner's), touch nothing else.
        run.released = True
        run.stopping.set()
        _sandbox_kill(run.handle)
        logger.warning(
            "node %s let go of agent %s: another node holds it now", self.config.node, agent_id
        )

    # --- stopping -------------------------------------------------------------

    def _hand_back_all(self) -> None:
        """Stop every run, let each clean up, then return its agent to the queue."""
        with self._lock:
            entries = list(self.runs.values())
        for run, _ in entries:
            run.stopping.set()
        for run, _ in entries:
            _sandbox_kill(run.handle)
        deadline = time.monotonic() + self.config.stop_s
        for run, thread in entries:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                # Its lease lapses and another node (or this one, restarted) recovers it.
                logger.warning("agent %s did not stop in time; left to recovery", run.agent.id)
                continue
            try:
                agent_hand_back(agent=run.agent, node=self.config.node)
            except DatabaseError:
                logger.warning("could not hand agent %s back; left to recovery", run.agent.id)

    # --- wake-ups -------------------------------------------------------------

    def _listen(self) -> None:
        if connection.vendor == "postgresql":
            self._listen_postgres()
        else:
            self._listen_datagrams()

    def _listen_postgres(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    postgres_conninfo(f"flotilla-supervisor:{self.config.node}"), autocommit=True
                ) as listen:
                    listen.execute(f"LISTEN {CHANNEL}")
                    self._wake.set()  # wake-ups sent while away are lost: look now
                    while not self._stop.is_set():
                        for _ in listen.notifies(timeout=1.0, stop_after=1):
                            self._wake.set()
            except psycopg.Error as error:
                logger.warning("supervisor wake-ups lost the database: %s", error)
                self._stop.wait(1.0)

    def _listen_datagrams(self) -> None:
        try:
            self._receive_datagrams()
        except OSError as error:
            logger.warning("no wake-ups for supervisor %s (%s): it polls", self.config.node, error)

    def _receive_datagrams(self) -> None:
        directory = wake_socket_dir()
        directory.mkdir(mode=0o700, exist_ok=True)
        for stale in directory.glob("*.sock"):
            # The socket of a supervisor that was killed: nothing answers it any more.
            if not Path(f"/proc/{stale.stem}").exists():
                with contextlib.suppress(OSError):
                    stale.unlink()
        path = directory / f"{os.getpid()}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(str(path))
            receiver.settimeout(1.0)
            try:
                while not self._stop.is_set():
                    try:
                        receiver.recv(64)
                    except TimeoutError:
                        continue
                    self._wake.set()
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()


def _sandbox_kill(handle: SandboxHandle) -> None:
    if not handle:
        return
    try:
        sandbox_backend(handle["backend"]).kill(handle)
    except (SandboxError, KeyError) as error:
        logger.warning("could not kill sandbox %s: %s", handle.get("agent_id"), error)
