"""The one sink every line an agent's commands print goes through on its way to the database.

The runner builds one per run (``agents.runner._prepare``) and hands it to
the runtime as ``RunContext.output``, so the script, every command of a
Claude agent and anything else that streams output share it, on any sandbox.
Within FLOTILLA_MAX_OUTPUT_BYTES (over the agent's whole life: earlier runs
of a resumed agent count) lines are stored as ``output`` events. Past it,
only a rolling tail stays, in memory; when the run ends the tail is stored
and one event says how many lines and bytes were dropped before it.
"""

import collections
import json
import threading
from collections.abc import Callable
from typing import Any

from agents.models import AgentEventKind

# What is kept past the bound: the end of the output, which usually says why it ended.
TAIL_BYTES = 64 * 1024
# The most one output event holds, so pages of events (API, dashboard) stay even.
EVENT_BYTES = 64 * 1024
# Bytes a stored line adds besides its JSON string: the ", " between lines.
_LINE_OVERHEAD = 2
_EVENT_OVERHEAD = len('{"lines": []}')

Emit = Callable[[str, dict[str, Any]], None]


def stored_size(line: str) -> int:
    """What a line takes in an output event's JSON, as the database stores it."""
    return len(json.dumps(line)) + _LINE_OVERHEAD


class BoundedOutput:
    """Called with lines (from the sandbox's output thread); ``finish`` once the run ends."""

    def __init__(self, *, emit: Emit, max_bytes: int, stored: int = 0) -> None:
        self._emit = emit
        self.max_bytes = max_bytes
        self.stored = stored
        self.over = stored >= max_bytes
        self.tail: collections.deque[tuple[str, int]] = collections.deque()
        self.tail_size = 0
        self.dropped_lines = 0
        self.dropped_bytes = 0
        # Output threads of two commands never overlap in practice, but the
        # order of the events must hold even if they did.
        self._lock = threading.Lock()

    def __call__(self, lines: list[str]) -> None:
        with self._lock:
            fitting = self._fitting(lines)
            self._store(fitting)
            if len(fitting) < len(lines):
                self._passed_the_bound()
                for line in lines[len(fitting) :]:
                    self._keep_in_tail(line)

    def _fitting(self, lines: list[str]) -> list[tuple[str, int]]:
        """The first of ``lines`` that fit within the bound, counted as stored."""
        if self.over:
            return []
        fitting: list[tuple[str, int]] = []
        used = self.stored + _EVENT_OVERHEAD
        for line in lines:
            size = stored_size(line)
            if used + size > self.max_bytes:
                break
            fitting.append((line, size))
            used += size
        if fitting:
            self.stored = used
        return fitting

    def finish(self) -> None:
        """Store the tail kept past the bound, after one event saying what was dropped."""
        with self._lock:
            if self.dropped_lines:
                self._emit(AgentEventKind.LOG, self._dropped_report())
                self.dropped_lines = self.dropped_bytes = 0
            tail, self.tail, self.tail_size = list(self.tail), collections.deque(), 0
            if tail:
                self.stored += _EVENT_OVERHEAD + sum(size for _, size in tail)
                self._store(tail)

    def _passed_the_bound(self) -> None:
        if self.over:
            return
        self.over = True
        message = (
            f"the output passed {self.max_bytes} bytes (FLOTILLA_MAX_OUTPUT_BYTES); from here "
            f"on only its last {TAIL_BYTES // 1024} KiB are kept, stored when the run ends"
        )
        self._emit(AgentEventKind.LOG, {"message": message})

    def _keep_in_tail(self, line: str) -> None:
        size = stored_size(line)
        self.tail.append((line, size))
        self.tail_size += size
        while self.tail_size > TAIL_BYTES and len(self.tail) > 1:
            dropped, dropped_size = self.tail.popleft()
            self.tail_size -= dropped_size
            self.dropped_lines += 1
            self.dropped_bytes += len(dropped.encode("utf-8", "replace")) + 1

    def _dropped_report(self) -> dict[str, Any]:
        message = (
            f"{self.dropped_lines} lines ({self.dropped_bytes} bytes) of output were dropped "
            f"past {self.max_bytes} bytes (FLOTILLA_MAX_OUTPUT_BYTES); the last "
            f"{len(self.tail)} lines follow"
        )
        return {
            "message": message,
            "dropped_lines": self.dropped_lines,
            "dropped_bytes": self.dropped_bytes,
            "max_output_bytes": self.max_bytes,
        }

    def _store(self, lines: list[tuple[str, int]]) -> None:
        """Emit ``lines`` as output events of at most about EVENT_BYTES each."""
        chunk: list[str] = []
        size = _EVENT_OVERHEAD
        for line, line_size in lines:
            if chunk and size + line_size > EVENT_BYTES:
                self._emit(AgentEventKind.OUTPUT, {"lines": chunk})
                chunk, size = [], _EVENT_OVERHEAD
            chunk.append(line)
            size += line_size
        if chunk:
            self._emit(AgentEventKind.OUTPUT, {"lines": chunk})
