"""Opening and closing agents' egress proxies: one event loop per process, in one daemon thread.

Every listener of a process runs on that loop, so a worker that runs many
agents holds one thread for all their proxies, plus one thread that hands
connection events to the callers (which may write them to the database).
A process that forks (django-q2 workers do) starts its own loop on first use.
"""

import contextlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings

from agents.egress.events import ConnectionCallback, EventReporter, delivering
from agents.egress.policy import NETWORK_MODES, Allowlist, EgressPolicy
from agents.egress.proxy import AgentListener, ProxyLimits
from agents.unixserver import CALL_TIMEOUT_S, PerProcess, ServingLoop, unix_listen


class _EgressLoop(ServingLoop):
    def __init__(self) -> None:
        super().__init__("flotilla-egress")
        self.listeners: dict[str, tuple[AgentListener, Path]] = {}
        self.events = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flotilla-egress-events")

    async def open(self, agent_id: str, listener: AgentListener, socket_path: Path) -> None:
        previous = await self.close(agent_id)
        if previous is not None:
            previous.finish()
        listener.start(unix_listen(socket_path))
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


_egress_loop = PerProcess(_EgressLoop)


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
    egress = _egress_loop.get(start=True)
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
    egress = _egress_loop.get(start=False)
    if egress is None:
        return
    reporter = egress.call(egress.close(str(agent_id)))
    if reporter is None:
        return
    reporter.finish()
    if not getattr(delivering, "active", False):
        egress.events.submit(_nothing).result(CALL_TIMEOUT_S)


def _nothing() -> None:
    return None
