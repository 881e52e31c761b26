"""What the egress proxies and the model gateways share: serving agents on Unix sockets.

Each agent's server listens on a Unix socket the sandbox user may connect
to, and serves every connection in a task of its own. All the servers of a
process run on one event loop in one daemon thread; a process that forks
(django-q2 workers do) starts its own loop on first use. What a server does
with a connection is its own (agents/egress/proxy.py, agents/gateway/server.py).
"""

import abc
import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Generic, TypeVar

from django.conf import settings

logger = logging.getLogger(__name__)

# What a coroutine handed to the event loop's thread returns.
T = TypeVar("T")

# How long a caller waits for the loop to open or close a server.
CALL_TIMEOUT_S = 30.0

# Headers that belong to one hop only (RFC 9110 7.6.1); each server adds its own.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
    }
)


def unix_listen(socket_path: Path) -> socket.socket:
    """A non-blocking listening socket at ``socket_path`` that the sandbox user may connect to.

    A stale socket file is replaced; on failure none is left behind.
    """
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
    return listening


def _socket_permit(path: Path) -> None:
    """Let the sandbox user connect to the socket (connecting needs write permission on it)."""
    if os.geteuid() == 0:
        os.chown(path, settings.FLOTILLA_SANDBOX_UID, -1)
        path.chmod(0o600)
    else:
        # A hub that is not root cannot give the socket away; the directory
        # the caller chose is what keeps other users of the host out.
        path.chmod(0o666)


class UnixServer(abc.ABC):
    """One agent's server: accepts on its socket and serves each connection in a task."""

    # Who could not accept a connection, in the log.
    label = "unix server"

    def __init__(self) -> None:
        self.connections: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None

    def start(self, listening: socket.socket) -> None:
        """Serve every connection to ``listening`` (a bound, listening Unix socket)."""
        self._accepting = asyncio.get_running_loop().create_task(self._accept(listening))

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.wait([self._accepting])
        while self.connections:
            for task in self.connections:
                task.cancel()
            await asyncio.wait(list(self.connections))

    @abc.abstractmethod
    async def _serve(self, client: socket.socket) -> None:
        """Serve one connection (a non-blocking socket) and close it."""

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    client, _ = await loop.sock_accept(listening)
                except OSError:
                    # Out of file descriptors, say: refuse for a moment, keep listening.
                    logger.exception("%s could not accept a connection", self.label)
                    await asyncio.sleep(0.1)
                    continue
                client.setblocking(False)
                task = loop.create_task(self._serve(client))
                self.connections.add(task)
                task.add_done_callback(self.connections.discard)
        finally:
            listening.close()


class ServingLoop:
    """An event loop running in a daemon thread of this process."""

    def __init__(self, name: str) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(CALL_TIMEOUT_S)


L = TypeVar("L", bound=ServingLoop)


class PerProcess(Generic[L]):
    """The one serving loop of this process, made anew after a fork."""

    def __init__(self, factory: Callable[[], L]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._current: L | None = None

    def get(self, *, start: bool) -> L | None:
        """The process's loop; started if ``start``, else None when it has none."""
        with self._lock:
            if self._current is None or self._current.pid != os.getpid():
                self._current = self._factory() if start else None
            return self._current
