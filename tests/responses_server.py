"""A real HTTP server on 127.0.0.1 that speaks enough of the OpenAI Responses API for tests.

The same scripted machinery as tests/messages_server.py (``script``,
``default``, ``requests``, ``disconnects``, callable replies), for
``POST /v1/responses``; the OpenAI SDKs and the Codex CLI take
``server.base_url`` (the URL with ``/v1``)::

    with ResponsesServer() as server:
        server.script(
            function_call_reply([("shell", {"command": ["pytest", "-q"]})]),
            text_reply("done"),
        )
        settings.OPENAI_BASE_URL = server.base_url

A request with ``"stream": true`` gets its (successful) response as
server-sent events, as the real API sends them: ``response.created``,
``response.in_progress``, per output item ``response.output_item.added``,
its deltas (``response.content_part.added``, ``response.output_text.delta``,
``response.output_text.done``, ``response.content_part.done`` for a message;
``response.function_call_arguments.delta`` / ``.done`` for a function call)
and ``response.output_item.done``, then ``response.completed`` with the usage.
Every event has its ``type`` and ``sequence_number``.

``conversation(turn, turn, ...)`` answers turn N of the conversation the
request carries in ``input`` (N = runs of assistant items already in it: a
message of role assistant, a function call, a reasoning item), as clients
that send the whole history do (Codex with ``store: false``).
"""

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from tests.messages_server import Reply, ScriptedServer, pieces

_ids = itertools.count(1)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}
# Items the model produced; a run of them in ``input`` is one assistant turn.
_ASSISTANT_ITEMS = {"function_call", "reasoning", "custom_tool_call", "local_shell_call"}
_FINAL_EVENTS = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
}


def usage(
    input_tokens: int = 10,
    output_tokens: int = 5,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> dict[str, Any]:
    """A Responses API usage object: ``input_tokens`` includes ``cached_tokens``."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def message_item(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_test_{next(_ids):06d}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def function_call_item(name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_test_{next(_ids):06d}",
        "call_id": f"call_test_{next(_ids):06d}",
        "name": name,
        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        "status": "completed",
    }


def response_reply(
    output: list[dict[str, Any]],
    *,
    model: str = "gpt-5",
    usage_data: dict[str, Any] | None = None,
    status: str = "completed",
    delay_s: float = 0.0,
    event_delay_s: float = 0.0,
) -> Reply:
    """A whole response object; ``output`` items may be any the API has (see the helpers)."""
    body = {
        "id": f"resp_test_{next(_ids):06d}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": output,
        "usage": usage_data or usage(),
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
    }
    return Reply(200, body, delay_s, event_delay_s=event_delay_s)


def text_reply(text: str, **options: Any) -> Reply:
    return response_reply([message_item(text)], **options)


def function_call_reply(
    calls: list[tuple[str, dict[str, Any] | str]], *, text: str = "", **options: Any
) -> Reply:
    """One response holding several function calls (and an optional leading message)."""
    output = [message_item(text)] if text else []
    output += [function_call_item(name, arguments) for name, arguments in calls]
    return response_reply(output, **options)


def error_reply(
    status: int, message: str = "", *, code: str | None = None, delay_s: float = 0.0
) -> Reply:
    kind = _ERROR_TYPES.get(status, "server_error")
    body = {
        "error": {
            "message": message or f"scripted {status}",
            "type": kind,
            "param": None,
            "code": code,
        }
    }
    # A tiny retry-after keeps the SDK's retries fast in tests.
    return Reply(status, body, delay_s, {"retry-after-ms": "10", "x-should-retry": "true"})


def conversation_turn(body: dict[str, Any]) -> int:
    """How many assistant turns the request's ``input`` already holds."""
    items = body.get("input")
    if not isinstance(items, list):
        return 0
    turns, inside = 0, False
    for item in items:
        mine = isinstance(item, dict) and (
            item.get("type") in _ASSISTANT_ITEMS or item.get("role") == "assistant"
        )
        turns += mine and not inside
        inside = mine
    return turns


def conversation(*turns: Reply | Callable[[dict], Reply]) -> Callable[[dict], Reply]:
    """A reply that answers the request's turn (``conversation_turn``)."""

    def reply(body: dict) -> Reply:
        turn = conversation_turn(body)
        if turn >= len(turns):
            return error_reply(400, f"the scripted conversation has no turn {turn}")
        chosen = turns[turn]
        return chosen(body) if callable(chosen) else chosen

    return reply


def function_call_outputs(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The function_call_output items the request sends after the last assistant turn."""
    outputs: list[dict[str, Any]] = []
    for item in body.get("input") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") in _ASSISTANT_ITEMS or item.get("role") == "assistant":
            outputs = []
        elif item.get("type") == "function_call_output":
            outputs.append(item)
    return outputs


def response_events(response: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A response as the Responses API streams it: (event name, data) pairs."""
    numbers = itertools.count()

    def event(kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
        return kind, {"type": kind, "sequence_number": next(numbers), **data}

    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    events = [event("response.created", response=pending)]
    events.append(event("response.in_progress", response=pending))
    for index, item in enumerate(response.get("output") or []):
        events += _item_events(event, index, item)
    final = _FINAL_EVENTS.get(response.get("status", "completed"), "response.completed")
    events.append(event(final, response=response))
    return events


def _item_events(event: Callable, index: int, item: dict[str, Any]) -> list:
    where = {"item_id": item.get("id"), "output_index": index}
    if item.get("type") == "message":
        events = [
            event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
        ]
        for number, part in enumerate(item.get("content") or []):
            at = {**where, "content_index": number}
            events.append(event("response.content_part.added", **at, part={**part, "text": ""}))
            for piece in pieces(part.get("text", "")):
                events.append(event("response.output_text.delta", **at, delta=piece, logprobs=[]))
            events.append(
                event("response.output_text.done", **at, text=part.get("text", ""), logprobs=[])
            )
            events.append(event("response.content_part.done", **at, part=part))
    elif item.get("type") == "function_call":
        started = {**item, "status": "in_progress", "arguments": ""}
        events = [event("response.output_item.added", output_index=index, item=started)]
        for piece in pieces(item.get("arguments", "")):
            events.append(event("response.function_call_arguments.delta", **where, delta=piece))
        events.append(
            event(
                "response.function_call_arguments.done",
                **where,
                arguments=item.get("arguments", ""),
            )
        )
    else:
        events = [event("response.output_item.added", output_index=index, item=item)]
    events.append(event("response.output_item.done", output_index=index, item=item))
    return events


class ResponsesServer(ScriptedServer):
    endpoints = ("/v1/responses",)

    @property
    def base_url(self) -> str:
        """The URL the OpenAI SDKs and the Codex CLI take (OPENAI_BASE_URL)."""
        return f"{self.url}/v1"

    def answer(self, path: str, body: dict) -> Reply:
        return super().answer("/v1/responses" if path.endswith("/v1/responses") else path, body)

    def error(self, status: int, message: str) -> Reply:
        return error_reply(status, message)

    def stream_events(self, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        return response_events(body)
