"""The Anthropic Messages API client: the only module in the project that imports ``anthropic``.

The AI review gate and the Claude runtime both build their client here, so
the base URL, key, timeouts and retries are read from settings in one place,
and SDK exceptions become ``LlmError`` values that callers can handle without
importing the SDK. Messages are returned as plain dicts for the same reason.
"""

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import anthropic
from django.conf import settings


class LlmError(Exception):
    """The model could not be asked, or did not answer usably. ``reason`` is for humans."""

    def __init__(self, reason: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retryable = retryable


def llm_configured() -> bool:
    return bool(settings.ANTHROPIC_API_KEY)


def llm_client(
    *, timeout_s: float | None = None, max_retries: int | None = None
) -> anthropic.Anthropic:
    """A client for the configured endpoint; the SDK retries 408/409/429/5xx with backoff."""
    if not settings.ANTHROPIC_API_KEY:
        raise LlmError("ANTHROPIC_API_KEY is not set on this hub")
    return anthropic.Anthropic(
        api_key=settings.ANTHROPIC_API_KEY,
        base_url=settings.ANTHROPIC_BASE_URL,
        timeout=timeout_s if timeout_s is not None else settings.ANTHROPIC_TIMEOUT_S,
        max_retries=max_retries if max_retries is not None else settings.ANTHROPIC_MAX_RETRIES,
    )


def llm_message_create(
    *, client: anthropic.Anthropic | None = None, **params: Any
) -> dict[str, Any]:
    """One Messages API call; the reply as a dict, or ``LlmError`` once retries are spent.

    The reason never contains the API key: the SDK's messages name the status
    and the server's error text, and the key is scrubbed from them anyway.
    """
    client = client or llm_client()
    try:
        message = client.messages.create(**params)
    except (anthropic.AnthropicError, ValueError) as error:
        raise _llm_error(error) from None
    return _message_dict(message)


def _llm_error(error: Exception) -> LlmError:
    """The ``LlmError`` for an exception the SDK raised; the key never appears in it."""
    if isinstance(error, anthropic.APIStatusError):
        return LlmError(
            _scrub(f"the Messages API answered {error.status_code}: {_error_text(error)}"),
            status=error.status_code,
            retryable=error.status_code in (408, 409, 429) or error.status_code >= 500,
        )
    if isinstance(error, anthropic.APITimeoutError):
        return LlmError("the Messages API did not answer in time", retryable=True)
    if isinstance(error, anthropic.APIConnectionError):
        return LlmError(_scrub(f"cannot reach the Messages API: {error}"), retryable=True)
    if isinstance(error, anthropic.APIResponseValidationError):
        return LlmError(_scrub(f"the Messages API sent a malformed reply: {error}"))
    if isinstance(error, anthropic.AnthropicError):
        return LlmError(_scrub(f"the Messages API call failed: {error}"))
    return LlmError(_scrub(f"the Messages API sent a reply that is not JSON: {error}"))


def _message_dict(message: Any) -> dict[str, Any]:
    if not hasattr(message, "model_dump"):
        raise LlmError(f"the Messages API sent an unreadable reply: {str(message)[:200]!r}")
    dumped: dict[str, Any] = message.model_dump(mode="json")
    return dumped


class LlmCancelled(LlmError):
    """The caller gave up on the call (its agent was killed); the request was abandoned."""


class LlmSession:
    """A client for a long conversation whose calls can be abandoned mid-flight.

    The SDK's synchronous client cannot be interrupted while it waits for a
    reply, so the calls run on an asyncio loop in a thread of their own, and
    the caller's thread waits on them, asking ``should_stop`` every ``poll_s``
    seconds. Cancelling the call cancels its task: httpx closes the
    connection, so the server sees the request go away, and the SDK's retries
    and back-off stop with it. One session serves one agent run; close it.
    """

    def __init__(self, *, timeout_s: float | None = None, max_retries: int | None = None) -> None:
        if not settings.ANTHROPIC_API_KEY:
            raise LlmError("ANTHROPIC_API_KEY is not set on this hub")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="llm-session", daemon=True
        )
        self._thread.start()
        self._client = anthropic.AsyncAnthropic(
            api_key=settings.ANTHROPIC_API_KEY,
            base_url=settings.ANTHROPIC_BASE_URL,
            timeout=timeout_s if timeout_s is not None else settings.ANTHROPIC_TIMEOUT_S,
            max_retries=max_retries if max_retries is not None else settings.ANTHROPIC_MAX_RETRIES,
        )

    def create(
        self, *, should_stop: Callable[[], bool], poll_s: float = 0.1, **params: Any
    ) -> dict[str, Any]:
        """One Messages API call; ``LlmCancelled`` as soon as ``should_stop()`` says so."""
        call = self._client.messages.create(**params)
        future = asyncio.run_coroutine_threadsafe(call, self._loop)
        while True:
            try:
                message = future.result(timeout=poll_s)
            except concurrent.futures.TimeoutError:
                if should_stop():
                    future.cancel()
                    raise LlmCancelled("the call was cancelled") from None
                continue
            except (anthropic.AnthropicError, ValueError) as error:
                raise _llm_error(error) from None
            return _message_dict(message)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        # Closing the connections is best effort: the loop ends regardless.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> "LlmSession":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def llm_redact(text: str) -> str:
    """``text`` with the hub's API key replaced, for anything that is stored or shown."""
    return _scrub(text)


def _error_text(error: anthropic.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        detail = body.get("error", body)
        if isinstance(detail, dict) and detail.get("message"):
            return f"{detail.get('type', 'error')}: {detail['message']}"[:500]
    return str(error.message)[:500]


def _scrub(text: str) -> str:
    key = settings.ANTHROPIC_API_KEY
    return text.replace(key, "[redacted]") if key else text
