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
``received_at`` and ``replied_at`` monotonic times).
With nothing scripted, the server answers ``server.default`` (a reply or a
callable), and 500 with an ``api_error`` when that is None.

``conversation(turn, turn, ...)`` is a callable reply for tool-use loops: it
answers turn N of whatever conversation the request carries (N = assistant
messages already in it), so it needs no state, survives a paused and resumed
agent, and serves many agents at once. While a reply is delayed the server
watches the connection; a client that gives up is recorded in
``server.disconnects`` (monotonic time, request index).
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


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # a dict (sent as JSON), bytes or str (sent as they are)
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


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
    return Reply(200, body, delay_s)


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


class MessagesServer:
    def __init__(self) -> None:
        self.replies: deque[Reply | Callable[[dict], Reply]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.default: Reply | Callable[[dict], Reply] | None = None
        self.disconnects: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
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

    def __enter__(self) -> "MessagesServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next_reply(self, body: dict) -> Reply:
        with self.lock:
            reply = self.replies.popleft() if self.replies else self.default
        if reply is None:
            return error_reply(500, "the test server has no scripted reply left")
        return reply(body) if callable(reply) else reply

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the body
            # would wait for the client's delayed ACK (about 40 ms) each time.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
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
                if not self.path.split("?")[0].endswith("/v1/messages"):
                    self._send(error_reply(404, f"no endpoint {self.path}"))
                    return
                self._send(server._next_reply(body))

            def _send(self, reply: Reply) -> None:
                if reply.delay_s and not self._wait(reply.delay_s):
                    return
                if isinstance(reply.body, dict | list):
                    payload = json.dumps(reply.body).encode()
                elif isinstance(reply.body, str):
                    payload = reply.body.encode()
                else:
                    payload = reply.body or b""
                try:
                    self.send_response(reply.status)
                    headers = {
                        "content-type": "application/json",
                        "request-id": f"req_test_{next(_ids):06d}",
                        **reply.headers,
                    }
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                    with server.lock:
                        if self.request_index < len(server.requests):
                            server.requests[self.request_index]["replied_at"] = time.monotonic()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a kill cancelled the request)

            def _wait(self, delay_s: float) -> bool:
                """Sleep ``delay_s``, unless the client goes away first (then False)."""
                deadline = time.monotonic() + delay_s
                while (left := deadline - time.monotonic()) > 0:
                    readable, _, _ = select.select([self.connection], [], [], min(left, 0.01))
                    if readable and not self.connection.recv(1, socket.MSG_PEEK):
                        with server.lock:
                            server.disconnects.append((time.monotonic(), self.request_index))
                        self.close_connection = True
                        return False
                return True

        return Handler
