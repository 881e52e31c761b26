"""The Anthropic Messages API client: the only module in the project that imports ``anthropic``.

The AI review gate and the Claude runtime both build their client here, so
the base URL, key, timeouts and retries are read from settings in one place,
and SDK exceptions become ``LlmError`` values that callers can handle without
importing the SDK. Messages are returned as plain dicts for the same reason.
"""

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
    except anthropic.APIStatusError as error:
        raise LlmError(
            _scrub(f"the Messages API answered {error.status_code}: {_error_text(error)}"),
            status=error.status_code,
            retryable=error.status_code in (408, 409, 429) or error.status_code >= 500,
        ) from None
    except anthropic.APITimeoutError:
        raise LlmError("the Messages API did not answer in time", retryable=True) from None
    except anthropic.APIConnectionError as error:
        raise LlmError(_scrub(f"cannot reach the Messages API: {error}"), retryable=True) from None
    except anthropic.APIResponseValidationError as error:
        raise LlmError(_scrub(f"the Messages API sent a malformed reply: {error}")) from None
    except anthropic.AnthropicError as error:
        raise LlmError(_scrub(f"the Messages API call failed: {error}")) from None
    except ValueError as error:
        raise LlmError(f"the Messages API sent a reply that is not JSON: {error}") from None
    if not hasattr(message, "model_dump"):
        raise LlmError(f"the Messages API sent an unreadable reply: {str(message)[:200]!r}")
    return message.model_dump(mode="json")


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
