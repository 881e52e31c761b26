"""What the gateway knows of each model provider: endpoints, key, error shape, usage.

A provider's replies pass through the gateway unchanged; a ``UsageMeter``
reads a copy as it goes by, for the model that answered and the tokens it
reports (the Anthropic Messages API and the OpenAI Responses API, each plain
JSON or a stream of server-sent events).
"""

import json
import logging
from abc import ABC, abstractmethod
from typing import Any

from django.conf import settings

from agents.runtimes.claude.accounting import Usage

logger = logging.getLogger(__name__)

# The largest reply (or single stream event) the meter holds to read usage
# from; an OpenAI ``response.completed`` event repeats the whole reply.
_METER_MAX_BYTES = 64 * 1024 * 1024


class Provider(ABC):
    name: str
    # The paths (without a query) the gateway forwards, all POST; and those
    # whose replies cost tokens, so are metered and need a priced model.
    endpoints: frozenset[str]
    metered: frozenset[str]
    # The stream events that carry the model or the usage, or end the reply.
    usage_events: frozenset[str]

    @abstractmethod
    def upstream_url(self, target: str) -> str:
        """The provider's URL for ``target``, a forwarded path with its query."""

    @abstractmethod
    def key_headers(self) -> list[tuple[bytes, bytes]]:
        """The hub's real key, in the header the provider reads it from."""

    @abstractmethod
    def prices(self) -> dict[str, dict[str, float]]:
        """USD per million tokens by model prefix (settings)."""

    @abstractmethod
    def error_body(self, status: int, message: str, *, budget: bool) -> dict[str, Any]:
        """An error as the provider would send it, so the CLI reports it as it would theirs."""

    @abstractmethod
    def read_event(self, event: dict[str, Any], seen: dict[str, Any]) -> None:
        """Note in ``seen`` the ``model`` and ``usage`` one stream event reports, and
        ``complete`` once the reply's last usage has been reported."""

    @abstractmethod
    def read_body(self, body: dict[str, Any], seen: dict[str, Any]) -> None:
        """Note in ``seen`` the ``model`` and ``usage`` of a plain JSON reply."""

    @abstractmethod
    def usage(self, reported: dict[str, Any]) -> Usage:
        """The provider's usage object in the hub's four counts."""


class Anthropic(Provider):
    name = "anthropic"
    endpoints = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
    metered = frozenset({"/v1/messages"})
    usage_events = frozenset({"message_start", "message_delta", "message_stop"})
    _kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
    }

    def upstream_url(self, target: str) -> str:
        base = settings.ANTHROPIC_BASE_URL or settings.ANTHROPIC_PUBLIC_URL
        return base.rstrip("/") + target

    def key_headers(self) -> list[tuple[bytes, bytes]]:
        key = settings.ANTHROPIC_API_KEY
        return [(b"x-api-key", key.encode())] if key else []

    def prices(self) -> dict[str, dict[str, float]]:
        return settings.FLOTILLA_CLAUDE_PRICES

    def error_body(self, status: int, message: str, *, budget: bool) -> dict[str, Any]:
        kind = self._kinds.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def read_event(self, event: dict[str, Any], seen: dict[str, Any]) -> None:
        # message_start has the input counts; each message_delta the output so
        # far (and, from newer servers, the input counts again).
        if event.get("type") == "message_start":
            self.read_body(event.get("message") or {}, seen)
        elif event.get("type") == "message_delta":
            reported = {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
            seen["usage"] = {**seen.get("usage", {}), **reported}
        elif event.get("type") == "message_stop":
            seen["complete"] = True

    def read_body(self, body: dict[str, Any], seen: dict[str, Any]) -> None:
        if body.get("model"):
            seen["model"] = body["model"]
        if isinstance(body.get("usage"), dict):
            seen["usage"] = {k: v for k, v in body["usage"].items() if v is not None}

    def usage(self, reported: dict[str, Any]) -> Usage:
        return Usage.from_reply(reported)


class OpenAI(Provider):
    name = "openai"
    endpoints = frozenset({"/v1/responses"})
    metered = endpoints
    usage_events = frozenset({"response.completed", "response.incomplete", "response.failed"})
    _types = {401: "invalid_request_error", 429: "rate_limit_exceeded", 502: "server_error"}
    _codes = {401: "invalid_api_key", 404: "unknown_url", 429: "rate_limit_exceeded"}

    def upstream_url(self, target: str) -> str:
        # OPENAI_BASE_URL ends in /v1, as the SDKs expect; the CLI's paths start with it.
        return settings.OPENAI_BASE_URL.rstrip("/") + target.removeprefix("/v1")

    def key_headers(self) -> list[tuple[bytes, bytes]]:
        key = settings.OPENAI_API_KEY
        return [(b"authorization", b"Bearer " + key.encode())] if key else []

    def prices(self) -> dict[str, dict[str, float]]:
        return settings.FLOTILLA_OPENAI_PRICES

    def error_body(self, status: int, message: str, *, budget: bool) -> dict[str, Any]:
        # OpenAI's own answer to an account out of credit; the CLIs stop on it
        # rather than retry.
        kind = "insufficient_quota" if budget else self._types.get(status, "invalid_request_error")
        code = "insufficient_quota" if budget else self._codes.get(status)
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def read_event(self, event: dict[str, Any], seen: dict[str, Any]) -> None:
        if event.get("type") in self.usage_events:
            self.read_body(event.get("response") or {}, seen)
            seen["complete"] = True

    def read_body(self, body: dict[str, Any], seen: dict[str, Any]) -> None:
        if body.get("model"):
            seen["model"] = body["model"]
        if isinstance(body.get("usage"), dict):
            seen["usage"] = body["usage"]

    def usage(self, reported: dict[str, Any]) -> Usage:
        # OpenAI's input count includes the cached tokens; the hub's, like
        # Anthropic's, counts them apart.
        cached = int((reported.get("input_tokens_details") or {}).get("cached_tokens") or 0)
        return Usage(
            input_tokens=max(int(reported.get("input_tokens") or 0) - cached, 0),
            output_tokens=int(reported.get("output_tokens") or 0),
            cache_read_tokens=cached,
        )


PROVIDERS: dict[str, Provider] = {"anthropic": Anthropic(), "openai": OpenAI()}


class UsageMeter:
    """Reads one model reply as it passes: a JSON body, or server-sent events."""

    def __init__(self, provider: Provider, *, streamed: bool) -> None:
        self.provider = provider
        self.streamed = streamed
        self.seen: dict[str, Any] = {}
        # Set by the gateway once it has counted this reply.
        self.recorded = False
        self._buffer = bytearray()
        self._scanned = 0
        self._overflowed = False

    def feed(self, data: bytes) -> None:
        if self._overflowed:
            return
        self._buffer += data
        if self.streamed:
            self._read_events()
        if len(self._buffer) > _METER_MAX_BYTES:
            logger.warning("a %s reply too large to meter passed the gateway", self.provider.name)
            self._overflowed = True
            self._buffer.clear()

    @property
    def complete(self) -> bool:
        """Whether the stream has reported its final usage."""
        return bool(self.seen.get("complete"))

    def result(self) -> tuple[str | None, Usage | None]:
        """The model and the usage the reply reported; (model, None) if it reported none."""
        if not self.streamed and self._buffer:
            body = _json_object(bytes(self._buffer))
            if body is not None:
                self.provider.read_body(body, self.seen)
            self._buffer.clear()
        reported = self.seen.get("usage")
        return self.seen.get("model"), None if reported is None else self.provider.usage(reported)

    def _read_events(self) -> None:
        while True:
            end, gap = _event_end(self._buffer, self._scanned)
            if end < 0:
                # A blank line may straddle two chunks: look again from just before it.
                self._scanned = max(len(self._buffer) - 3, 0)
                return
            block = bytes(self._buffer[:end])
            del self._buffer[: end + gap]
            self._scanned = 0
            if any(name.encode() in block for name in self.provider.usage_events):
                self._read_event(block)

    def _read_event(self, block: bytes) -> None:
        data = [
            line[5:].removeprefix(b" ")
            for line in block.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data:")
        ]
        event = _json_object(b"\n".join(data))
        if event is not None:
            self.provider.read_event(event, self.seen)


def _event_end(buffer: bytearray, start: int) -> tuple[int, int]:
    """Where the first event of ``buffer`` ends (-1 if it has not) and its separator's length."""
    ends = [
        (found, len(separator))
        for separator in (b"\n\n", b"\r\n\r\n")
        if (found := buffer.find(separator, start)) >= 0
    ]
    return min(ends) if ends else (-1, 0)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
