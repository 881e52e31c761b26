"""Connection events of one agent's egress, handed to the caller off the event loop, bounded."""

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

ConnectionCallback = Callable[[dict[str, Any]], None]

# The most characters an event keeps of any text the client chose (a method, a
# host, a refusal that quotes the request): a request head may be 64 KiB, and
# hundreds of such events would otherwise store megabytes no output bound counts.
EVENT_TEXT_CHARS = 300

# Set on the thread that runs callbacks, so that a callback which closes its
# own agent's egress does not wait for itself.
delivering = threading.local()


@dataclass
class ConnectionRecord:
    """What one client connection asked for and what became of it."""

    method: str = ""
    host: str | None = None
    port: int | None = None
    address: str | None = None
    allowed: bool = False
    reason: str = ""
    end: str = ""
    bytes_up: int = 0
    bytes_down: int = 0

    def as_event(self) -> dict[str, Any]:
        return {"event": "connection", **{k: _clipped(v) for k, v in self.__dict__.items()}}


def _clipped(value: Any) -> Any:
    if isinstance(value, str) and len(value) > EVENT_TEXT_CHARS:
        return f"{value[:EVENT_TEXT_CHARS]}… ({len(value)} characters)"
    return value


@dataclass
class EventReporter:
    """Hands events to ``callback`` on ``executor``, listing at most ``limit`` connections.

    Beyond the limit one ``limit`` event says so and further connections are
    only counted; ``finish`` then reports the counts in a ``summary`` event.
    ``report`` is called on the event loop, ``finish`` after the listener closed.
    """

    callback: ConnectionCallback
    executor: Executor
    limit: int
    connections: int = 0
    refused: int = 0
    unlisted: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, record: ConnectionRecord) -> None:
        with self._lock:
            self.connections += 1
            self.refused += not record.allowed
            if self.connections <= self.limit:
                self._submit(record.as_event())
                return
            self.unlisted += 1
            if self.unlisted == 1:
                message = (
                    f"{self.limit} connections were listed; further connections are "
                    "counted, not listed"
                )
                self._submit({"event": "limit", "message": message, "limit": self.limit})

    def finish(self) -> None:
        with self._lock:
            if self.unlisted:
                self._submit(
                    {
                        "event": "summary",
                        "connections": self.connections,
                        "refused": self.refused,
                        "unlisted": self.unlisted,
                    }
                )

    def _submit(self, event: dict[str, Any]) -> None:
        self.executor.submit(self._deliver, event)

    def _deliver(self, event: dict[str, Any]) -> None:
        delivering.active = True
        try:
            self.callback(event)
        except Exception:
            # A failing callback (a database that went away) must not stop the
            # events of other connections or of other agents.
            logger.exception("egress event callback failed for %s", event)
