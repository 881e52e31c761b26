"""A real HTTP server on 127.0.0.1 that speaks enough of the Anthropic Messages API for tests.

The real ``anthropic`` client talks to it over a socket, so retries, timeouts,
status codes and response parsing are exercised end to end. Replies are
scripted in order; each request takes the next one::

    with MessagesServer() as server:
        server.script(
            tool_use_reply([("read_file", {"path": "app.py"})]),
            error_reply(529),            # the SDK retries this one
            text_reply("done", stop_reason="end_turn"),
            delay_s=0,
        )
        settings.ANTHROPIC_BASE_URL = server.url

A reply may also be a callable taking the request body and returning a reply,
for conversations that depend on what the client sent. Every request is
recorded in ``server.requests`` (method, path, headers, parsed JSON body,
``received_at`` and ``replied_at`` monotonic times; ``replied_at`` is set
once the whole reply has been sent). With nothing scripted, the server
answers ``server.default`` (a reply or a callable), and 500 with an
``api_error`` when that is None.

A request with ``"stream": true`` gets its (successful) message as server-sent
events, as the real API sends them: ``message_start`` (with the input usage),
``ping``, ``content_block_start`` / ``content_block_delta`` /
``content_block_stop`` per block, ``message_delta`` (stop reason and output
usage) and ``message_stop``, in chunked transfer encoding, with
``Reply.event_delay_s`` between events. Errors are plain JSON either way.
``POST /v1/messages/count_tokens`` answers ``{"input_tokens":
server.count_tokens}``.

``conversation(turn, turn, ...)`` is a callable reply for tool-use loops: it
answers turn N of whatever conversation the request carries (N = assistant
messages already in it), so it needs no state, survives a paused and resumed
agent, and serves many agents at once. While a reply is delayed (or between
the events of a stream) the server watches the connection; a client that
gives up is recorded in ``server.disconnects`` (monotonic time, request index).
"""

import itertools
import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
# A streamed text block arrives in pieces of this many characters.
_TEXT_PIECE = 16


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # a dict (sent as JSON), bytes or str (sent as they are)
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds between two events when the reply is streamed.
    event_delay_s: float = 0.0


def usage(
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_creation_input_tokens,
        "cache_read_input_tokens": cache_read_input_tokens,
    }


def message_reply(
    content: list[dict[str, Any]],
    *,
    stop_reason: str = "end_turn",
    model: str = "claude-test",
    usage_data: dict[str, int] | None = None,
    delay_s: float = 0.0,
    event_delay_s: float = 0.0,
) -> Reply:
    body = {
        "id": f"msg_test_{next(_ids):06d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage_data or usage(),
    }
    return Reply(200, body, delay_s, event_delay_s=event_delay_s)


def text_reply(text: str, **options: Any) -> Reply:
    return message_reply([{"type": "text", "text": text}], **options)


def tool_use_reply(
    calls: list[tuple[str, dict[str, Any]]], *, text: str = "", **options: Any
) -> Reply:
    """One reply holding several ``tool_use`` blocks (and optional leading text)."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [
        {"type": "tool_use", "id": f"toolu_test_{next(_ids):06d}", "name": name, "input": data}
        for name, data in calls
    ]
    options.setdefault("stop_reason", "tool_use")
    return message_reply(content, **options)


def error_reply(status: int, message: str = "", *, delay_s: float = 0.0) -> Reply:
    kind = _ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message or f"scripted {status}"}}
    # A tiny retry-after keeps the SDK's retries fast in tests.
    return Reply(status, body, delay_s, {"retry-after-ms": "10", "x-should-retry": "true"})


def conversation(*turns: Reply | Callable[[dict], Reply]) -> Callable[[dict], Reply]:
    """A reply that answers the request's turn: the number of assistant messages sent so far."""

    def reply(body: dict) -> Reply:
        turn = sum(1 for message in body.get("messages", []) if message.get("role") == "assistant")
        if turn >= len(turns):
            return error_reply(400, f"the scripted conversation has no turn {turn}")
        chosen = turns[turn]
        return chosen(body) if callable(chosen) else chosen

    return reply


def tool_results(body: dict) -> list[dict[str, Any]]:
    """The tool_result blocks of the last user message of a request body."""
    content = body["messages"][-1]["content"]
    return [
        block for block in content if isinstance(block, dict) and block.get("type") == "tool_result"
    ]


def raw_reply(
    body: bytes | str, status: int = 200, content_type: str = "application/json"
) -> Reply:
    return Reply(status, body, 0.0, {"content-type": content_type})


def pieces(text: str, size: int = _TEXT_PIECE) -> list[str]:
    """``text`` cut into the deltas a stream sends it in (one empty piece for no text)."""
    return [text[start : start + size] for start in range(0, len(text), size)] or [""]


def message_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A message as the Messages API streams it: (event name, data) pairs."""
    reported = message.get("usage") or {}
    # message_start carries the input counts, message_delta the output count.
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**reported, "output_tokens": min(1, reported.get("output_tokens", 0))}
    events = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(message.get("content") or []):
        events += _block_events(index, block)
    delta = {
        "stop_reason": message.get("stop_reason"),
        "stop_sequence": message.get("stop_sequence"),
    }
    output = {"output_tokens": reported.get("output_tokens", 0)}
    events += [
        ("message_delta", {"type": "message_delta", "delta": delta, "usage": output}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def _block_events(index: int, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    kind = block.get("type")
    if kind == "text":
        empty = {**block, "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in pieces(block["text"])]
    elif kind == "tool_use":
        empty = {**block, "input": {}}
        arguments = json.dumps(block.get("input") or {})
        deltas = [
            {"type": "input_json_delta", "partial_json": piece} for piece in pieces(arguments)
        ]
    elif kind == "thinking":
        empty = {**block, "thinking": "", "signature": ""}
        deltas = [
            {"type": "thinking_delta", "thinking": piece} for piece in pieces(block["thinking"])
        ]
        deltas.append({"type": "signature_delta", "signature": block.get("signature", "")})
    else:
        empty, deltas = block, []
    start = {"type": "content_block_start", "index": index, "content_block": empty}
    return [
        ("content_block_start", start),
        *(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            for delta in deltas
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


class ScriptedServer:
    """Scripted replies over real HTTP/1.1; subclasses name the API's endpoints and shapes."""

    # Paths (without a query) that take the next scripted reply; anything else is 404.
    endpoints: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.replies: deque[Reply | Callable[[dict], Reply]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.default: Reply | Callable[[dict], Reply] | None = None
        self.disconnects: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, *replies: Reply | Callable[[dict], Reply]) -> None:
        with self.lock:
            self.replies.extend(replies)

    def reset(self) -> None:
        """Forget the script, the default, the requests and the disconnects."""
        with self.lock:
            self.replies.clear()
            self.requests.clear()
            self.disconnects.clear()
            self.default = None

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str, body: dict) -> Reply:
        """The reply to a POST of ``body`` to ``path``."""
        if path not in self.endpoints:
            return self.error(404, f"no endpoint {path}")
        with self.lock:
            reply = self.replies.popleft() if self.replies else self.default
        if reply is None:
            return self.error(500, "the test server has no scripted reply left")
        return reply(body) if callable(reply) else reply

    def error(self, status: int, message: str) -> Reply:
        raise NotImplementedError

    def stream_events(self, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """A successful reply's body as (event name, data) pairs, for a streaming request."""
        raise NotImplementedError


class MessagesServer(ScriptedServer):
    endpoints = ("/v1/messages", "/v1/messages/count_tokens")

    def __init__(self) -> None:
        super().__init__()
        # What POST /v1/messages/count_tokens answers.
        self.count_tokens = 10

    def answer(self, path: str, body: dict) -> Reply:
        if path.endswith("/v1/messages/count_tokens"):
            return Reply(200, {"input_tokens": self.count_tokens})
        # A base URL with a path of its own (a proxy's prefix) still reaches the API.
        return super().answer("/v1/messages" if path.endswith("/v1/messages") else path, body)

    def error(self, status: int, message: str) -> Reply:
        return error_reply(status, message)

    def stream_events(self, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        return message_events(body)


def _handler_class(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, the body
        # would wait for the client's delayed ACK (about 40 ms) each time.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"_unparseable": raw.decode("utf-8", "replace")}
            with server.lock:
                self.request_index = len(server.requests)
                server.requests.append(
                    {
                        "method": "POST",
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                        "received_at": time.monotonic(),
                    }
                )
            reply = server.answer(self.path.split("?")[0], body)
            if reply.delay_s and not self._wait(reply.delay_s):
                return
            streamed = isinstance(body, dict) and body.get("stream") is True
            if streamed and reply.status == 200 and isinstance(reply.body, dict):
                self._send_events(reply, server.stream_events(reply.body))
            else:
                self._send(reply)

        def _send(self, reply: Reply) -> None:
            if isinstance(reply.body, dict | list):
                payload = json.dumps(reply.body).encode()
            elif isinstance(reply.body, str):
                payload = reply.body.encode()
            else:
                payload = reply.body or b""
            try:
                self._send_head(reply, {"content-type": "application/json"})
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
                self._replied()
            except (BrokenPipeError, ConnectionResetError):
                self._disconnected()

        def _send_events(self, reply: Reply, events: list[tuple[str, dict[str, Any]]]) -> None:
            streaming = {
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
            }
            try:
                self._send_head(reply, streaming)
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for number, (name, data) in enumerate(events):
                    if number and reply.event_delay_s and not self._wait(reply.event_delay_s):
                        return
                    event = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                self._replied()
            except (BrokenPipeError, ConnectionResetError):
                self._disconnected()

        def _send_head(self, reply: Reply, defaults: dict[str, str]) -> None:
            self.send_response(reply.status)
            headers = {**defaults, "request-id": f"req_test_{next(_ids):06d}", **reply.headers}
            for name, value in headers.items():
                self.send_header(name, value)

        def _replied(self) -> None:
            with server.lock:
                if self.request_index < len(server.requests):
                    server.requests[self.request_index]["replied_at"] = time.monotonic()

        def _disconnected(self) -> None:
            # The client gave up (a kill cancelled the request, a stream was cut).
            with server.lock:
                server.disconnects.append((time.monotonic(), self.request_index))
            self.close_connection = True

        def _wait(self, delay_s: float) -> bool:
            """Sleep ``delay_s``, unless the client goes away first (then False)."""
            deadline = time.monotonic() + delay_s
            while (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([self.connection], [], [], min(left, 0.01))
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    self._disconnected()
                    return False
            return True

    return Handler
