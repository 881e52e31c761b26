"""Opening and closing agents' egress proxies: one event loop per process, in one daemon thread.

Every listener of a process runs on that loop, so a worker that runs many
agents holds one thread for all their proxies, plus one thread that hands
connection events to the callers (which may write them to the database).
A process that forks (django-q2 workers do) starts its own loop on first use.
"""

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings

from agents.egress.events import ConnectionCallback, EventReporter, delivering
from agents.egress.policy import NETWORK_MODES, Allowlist, EgressPolicy
from agents.egress.proxy import AgentListener, ProxyLimits

# What a coroutine handed to the event loop's thread returns.
T = TypeVar("T")

# How long a caller waits for the loop to open or close a listener.
_CALL_TIMEOUT_S = 30.0


class _EgressLoop:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.listeners: dict[str, tuple[AgentListener, Path]] = {}
        self.events = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flotilla-egress-events")
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="flotilla-egress", daemon=True
        )
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(_CALL_TIMEOUT_S)

    async def open(self, agent_id: str, listener: AgentListener, socket_path: Path) -> None:
        previous = await self.close(agent_id)
        if previous is not None:
            previous.finish()
        # A socket file left by a crashed worker would make the bind fail.
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listening.bind(str(socket_path))
            _socket_permit(socket_path)
            listening.listen(128)
            listening.setblocking(False)
        except BaseException:
            listening.close()
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
            raise
        listener.start(listening)
        self.listeners[agent_id] = (listener, socket_path)

    async def close(self, agent_id: str) -> EventReporter | None:
        opened = self.listeners.pop(agent_id, None)
        if opened is None:
            return None
        listener, socket_path = opened
        await listener.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        return listener.reporter


def _socket_permit(path: Path) -> None:
    """Let the sandbox user connect to the socket (connecting needs write permission on it)."""
    if os.geteuid() == 0:
        os.chown(path, settings.FLOTILLA_SANDBOX_UID, -1)
        path.chmod(0o600)
    else:
        # A hub that is not root cannot give the socket away; the directory
        # the caller chose is what keeps other users of the host out.
        path.chmod(0o666)


_lock = threading.Lock()
_current: _EgressLoop | None = None


def _egress_loop(*, start: bool) -> _EgressLoop | None:
    global _current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            _current = _EgressLoop() if start else None
        return _current


def egress_open(
    *,
    agent_id: str,
    mode: str,
    allow_hosts: Sequence[str],
    socket_path: Path,
    on_connection: ConnectionCallback,
) -> None:
    """Start the egress proxy of one agent, listening on the Unix socket ``socket_path``.

    ``mode`` is the agent's network mode: ``"off"`` refuses every connection
    (each attempt is still reported), ``"allowlist"`` allows the hosts of
    ``settings.FLOTILLA_EGRESS_ALLOWLIST``, narrowed to ``allow_hosts`` when
    that is not empty, and ``"on"`` allows any host. In every mode a name
    that resolves to an address of this host or to a loopback, private,
    link-local, multicast, reserved or shared address is refused, unless the
    operator's list names that host as ``host:port`` with that very port.
    The operator's list and the ``FLOTILLA_EGRESS_*`` limits are read now,
    once; ``allow_hosts`` entries are ``host`` or ``host:port`` strings.

    The socket file is created (a stale one replaced), and made connectable
    by ``settings.FLOTILLA_SANDBOX_UID``: owned by it when the hub is root,
    mode 0666 otherwise. Its directory must exist, and the path must be
    shorter than 108 bytes. Opening an agent that is already open closes its
    previous listener first. Raises OSError if the socket cannot be bound,
    ValueError for an unknown mode or a malformed ``allow_hosts`` entry.

    ``on_connection(event)`` is called once per client connection when it
    ends, on a thread of its own (never the event loop), in order, so it may
    write to the database; an exception it raises is logged and ignored.
    ``event`` is ``{"event": "connection", "method", "host", "port",
    "address", "allowed", "reason", "end", "bytes_up", "bytes_down"}``:
    ``address`` is the IP address connected to (None if none was),
    ``allowed`` whether the policy let the connection through, ``reason``
    the one-line refusal the client was sent (or "allowed"), ``end`` how the
    connection ended. After ``FLOTILLA_EGRESS_MAX_EVENTS`` connections, one
    ``{"event": "limit", "message", "limit"}`` follows and later connections
    are only counted; ``egress_close`` then reports ``{"event": "summary",
    "connections", "refused", "unlisted"}``.
    """
    if mode not in NETWORK_MODES:
        raise ValueError(f"network mode must be one of {', '.join(NETWORK_MODES)}, not {mode!r}")
    policy = EgressPolicy(
        mode=mode,
        operator=Allowlist.parse(settings.FLOTILLA_EGRESS_ALLOWLIST),
        agent=Allowlist.parse(allow_hosts) if allow_hosts else None,
    )
    limits = ProxyLimits.from_settings()
    egress = _egress_loop(start=True)
    assert egress is not None
    reporter = EventReporter(on_connection, egress.events, limits.max_events)
    listener = AgentListener(policy=policy, limits=limits, reporter=reporter)
    egress.call(egress.open(str(agent_id), listener, Path(socket_path)))


def egress_socket_path(*, agent_id: str) -> Path:
    """Where the agent's proxy socket lives on the host: a short path, private to the hub.

    A Unix socket path has at most 107 bytes, so it does not live below a
    DATA_DIR of any length: under /run when the hub may write there (root),
    else in DATA_DIR. Its directory is the hub user's alone; the socket itself
    is handed to the sandbox user and bound into the sandbox.
    """
    run = Path("/run")
    if os.access(run, os.W_OK):
        directory = run / f"flotilla-{settings.FLOTILLA_HUB_UID}"
    else:
        directory = Path(settings.DATA_DIR) / "egress"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory / f"{agent_id}.sock"


def egress_close(*, agent_id: str) -> None:
    """Close the agent's listener and every open connection of it at once; idempotent.

    The socket file is removed. When this returns, every event of the agent
    has been handed to its ``on_connection`` (unless this is called from
    within that callback, which then must not wait for itself).
    """
    egress = _egress_loop(start=False)
    if egress is None:
        return
    reporter = egress.call(egress.close(str(agent_id)))
    if reporter is None:
        return
    reporter.finish()
    if not getattr(delivering, "active", False):
        egress.events.submit(_nothing).result(_CALL_TIMEOUT_S)


def _nothing() -> None:
    return None
