"""One run of a CLI (a round), and the shape its output takes as transcript events.

Every CLI module turns a line of its CLI's output into events of one shape,
so the dashboard and API clients read any CLI's transcript alike:

    {"cli": "codex", "role": "tool_call", "tool": "exec_command",
     "text": "exec_command: pytest -q", "input": {...}, "id": "..."}

``role`` is one of ``system`` (a session started), ``user`` (a prompt the hub
sent), ``assistant`` (the model's text), ``thinking``, ``tool_call``,
``tool_result``, ``result`` (the CLI's final report), ``error``, ``model``
(one model call, from the gateway's count), or ``event`` (anything else the
CLI said, kept as it came). ``text`` is always a short readable line.
"""

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from agents.models import AgentEventKind

# Event strings longer than this are cut, and say so.
EVENT_TEXT_CHARS = 20_000
# The most JSON one transcript event holds; a larger one keeps only its summary.
EVENT_MAX_BYTES = 64 * 1024
_SUMMARY_CHARS = 300
_SESSION_ID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")


@dataclass
class CliRound:
    """What one run of the CLI said about itself, read from its output as it arrives."""

    session_id: str = ""
    final_text: str = ""
    # The CLI's own report that it failed (its final result, an error event).
    error: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    # The last lines the CLI printed that were not structured output (its stderr).
    stderr_tail: str = ""
    # The tool each call id named, so a result can say which tool it is from.
    tools: dict[str, str] = field(default_factory=dict)

    def note_session(self, value: Any) -> None:
        """Keep a session id the CLI reported, if it is one: it goes into a command line."""
        if isinstance(value, str) and _SESSION_ID.match(value):
            self.session_id = value


def json_object(value: Any) -> dict[str, Any]:
    """``value`` when the CLI put a JSON object there, else an empty one."""
    return value if isinstance(value, dict) else {}


def clipped(value: Any, limit: int = EVENT_TEXT_CHARS) -> Any:
    """``value`` with very long strings (file contents, command output) shortened, at any depth."""
    if isinstance(value, dict):
        return {key: clipped(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        return [clipped(item, limit) for item in value]
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"[... {len(value) - limit} more characters]"
    return value


def one_line(value: Any, limit: int = _SUMMARY_CHARS) -> str:
    """A short readable rendering of a tool's input or output for an event's ``text``."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def redacted(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the hub's real API keys replaced (they should never be there at all)."""
    text = json.dumps(data, ensure_ascii=False)
    scrubbed = text
    for key in (settings.ANTHROPIC_API_KEY, settings.OPENAI_API_KEY):
        if key:
            scrubbed = scrubbed.replace(key, "[redacted]")
    return data if scrubbed == text else json.loads(scrubbed)


def tool_call(
    tool: str, tool_input: Any, *, call_id: str = "", shown: Any = None
) -> dict[str, Any]:
    return {
        "role": "tool_call",
        "tool": tool,
        "id": call_id,
        "input": tool_input,
        "text": f"{tool}: {one_line(tool_input if shown is None else shown)}",
    }


def tool_result(
    tool: str, output: Any, *, call_id: str = "", is_error: bool = False, **extra: Any
) -> dict[str, Any]:
    return {
        "role": "tool_result",
        "tool": tool,
        "id": call_id,
        "is_error": is_error,
        "output": output,
        "text": f"{tool} {'failed' if is_error else 'returned'}: {one_line(output)}",
        **extra,
    }


class TranscriptBound:
    """Stores transcript events until they reach the agent's output bound, then counts them.

    A CLI's output is the agent's (its commands can write into the CLI's
    output pipe), so its events are bounded as its plain output is
    (FLOTILLA_MAX_OUTPUT_BYTES, in a budget of their own): one event says
    when the bound is reached, and how many events were not stored.
    """

    def __init__(self, *, store: Callable[[str, dict[str, Any]], None], max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.stored = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        size = len(json.dumps(event, ensure_ascii=False))
        if size > EVENT_MAX_BYTES:
            event = {key: event[key] for key in ("cli", "role", "tool", "id") if key in event}
            event.update(text=one_line(event.get("text", ""), 2000), cut_from_bytes=size)
            size = len(json.dumps(event, ensure_ascii=False))
        with self._lock:
            if self.dropped or self.stored + size > self.max_bytes:
                self.dropped += 1
                if self.dropped > 1:
                    return
                kind, event = AgentEventKind.LOG, {"message": self._passed()}
            else:
                self.stored += size
                kind = AgentEventKind.TRANSCRIPT
        self.store(kind, event)

    def finish(self) -> None:
        if self.dropped > 1:
            message = f"{self.dropped} transcript events were not stored"
            self.store(AgentEventKind.LOG, {"message": message})

    def _passed(self) -> str:
        return (
            f"the transcript reached {self.max_bytes} bytes (FLOTILLA_MAX_OUTPUT_BYTES): "
            "later transcript events are not stored"
        )
