"""``Idempotency-Key`` on the POSTs that create: spawn an agent, create a project.

As Stripe does and draft-ietf-httpapi-idempotency-key-header describes, a
client that sends ``Idempotency-Key: <key>`` may send the same request again
(after a dropped connection, a timeout) and gets the first answer back, status
and body, with ``Idempotent-Replayed: true``, while nothing is created twice.
The same key with another body, or on another endpoint, is refused with 409.

A key belongs to the user who sent it, so two users never see each other's
answers. Each request claims its key with one INSERT that a unique constraint
guards: of two concurrent requests exactly one acts, and the other is answered
with the stored answer or, while the first is still running, 409.

What is kept: an answer that created something (2xx), and, as Stripe does, a
server error (5xx), after which the hub cannot tell whether anything was
created. A refusal (4xx: invalid body, hub halted, over the concurrency limit)
is raised before anything is written, so it releases the key and a retry with
the same key acts again. Keys expire after ``FLOTILLA_IDEMPOTENCY_TTL_S``.

``idempotent`` is the one place both views go through; this module sits in
``agents``, the lowest app both ``agents`` and ``taskqueue`` may import.
"""

import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.errors import AgentError
from agents.models import IdempotentRequest

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
# Printable ASCII: what any HTTP client can send in a header and a log can show.
_KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY_CHARS}}}")
# A claim and a conflicting row may both vanish (released, expired) between two
# statements; after this many rounds the key is busy in every practical sense.
_CLAIM_ROUNDS = 3


class IdempotencyKeyInvalid(AgentError):
    code = "invalid_idempotency_key"
    http_status = 400


class IdempotencyKeyReused(AgentError):
    code = "idempotency_key_reused"
    http_status = 409


class IdempotencyKeyInProgress(AgentError):
    code = "idempotency_key_in_progress"
    http_status = 409


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    body: str


def _problem(error: type[AgentError], message: str) -> AgentError:
    return error(message, fields={HEADER: [message]})


def idempotency_key_parse(value: str | None) -> str | None:
    """The key a request sent, None without the header; raises ``IdempotencyKeyInvalid``.

    The IETF draft sends the key as a structured-field string (``"abc"``),
    Stripe's clients send it bare; both mean the same key.
    """
    if value is None:
        return None
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _KEY.fullmatch(key):
        raise _problem(
            IdempotencyKeyInvalid,
            f"{HEADER} must be 1 to {MAX_KEY_CHARS} printable ASCII characters",
        )
    return key


def request_fingerprint(data: Any) -> str:
    """SHA-256 of the body as canonical JSON: keys sorted, no insignificant whitespace."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _expired_before() -> datetime:
    return timezone.now() - timedelta(seconds=settings.FLOTILLA_IDEMPOTENCY_TTL_S)


def idempotent_request_claim(
    *, principal: str, key: str, endpoint: str, fingerprint: str
) -> int | StoredAnswer:
    """Claim ``key`` for this request and return the claim's id, or the answer already stored.

    Raises ``IdempotencyKeyReused`` (another body or endpoint) and
    ``IdempotencyKeyInProgress`` (the first request has not answered yet).
    """
    for _ in range(_CLAIM_ROUNDS):
        try:
            with transaction.atomic():
                return IdempotentRequest.objects.create(
                    principal=principal, key=key, endpoint=endpoint, fingerprint=fingerprint
                ).id
        except IntegrityError:
            pass
        existing = IdempotentRequest.objects.filter(principal=principal, key=key).first()
        if existing is None:
            continue  # released between the INSERT and this read: claim it again
        if existing.created_at < _expired_before():
            # Expired but not yet pruned: the key is free again.
            IdempotentRequest.objects.filter(id=existing.id).delete()
            continue
        return _stored_answer(existing, endpoint=endpoint, fingerprint=fingerprint)
    raise _problem(IdempotencyKeyInProgress, f"a request with this {HEADER} is still running")


def _stored_answer(record: IdempotentRequest, *, endpoint: str, fingerprint: str) -> StoredAnswer:
    if record.endpoint != endpoint:
        raise _problem(
            IdempotencyKeyReused, f"this {HEADER} was already used for {record.endpoint}"
        )
    if record.fingerprint != fingerprint:
        raise _problem(
            IdempotencyKeyReused, f"this {HEADER} was already used with another request body"
        )
    if record.response_status is None:
        raise _problem(
            IdempotencyKeyInProgress,
            f"a request with this {HEADER} is still running; retry shortly",
        )
    return StoredAnswer(status=record.response_status, body=record.response_body)


def idempotent_request_answer(*, claim_id: int, status: int, body: str) -> None:
    """Keep the answer of the request that holds the claim."""
    IdempotentRequest.objects.filter(id=claim_id).update(response_status=status, response_body=body)


def idempotent_request_release(*, claim_id: int) -> None:
    """Give the key back: the request was refused before it created anything."""
    IdempotentRequest.objects.filter(id=claim_id, response_status__isnull=True).delete()


def idempotent_requests_prune() -> int:
    """Forget keys older than ``FLOTILLA_IDEMPOTENCY_TTL_S`` (a django-q2 schedule runs this)."""
    deleted, _ = IdempotentRequest.objects.filter(created_at__lt=_expired_before()).delete()
    return deleted


IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    HEADER,
    str,
    OpenApiParameter.HEADER,
    required=False,
    description=(
        "Send the same key again with the same body to get the first answer back instead of "
        f"acting twice (kept for FLOTILLA_IDEMPOTENCY_TTL_S). 1 to {MAX_KEY_CHARS} printable "
        "ASCII characters; the same key with another body is 409."
    ),
    pattern=rf"^[\x20-\x7e]{{1,{MAX_KEY_CHARS}}}$",
)


def _replay(answer: StoredAnswer) -> HttpResponse:
    response = HttpResponse(answer.body, status=answer.status, content_type="application/json")
    response[REPLAYED_HEADER] = "true"
    return response


def _keep_or_release(claim_id: int, response: Response) -> None:
    if 400 <= response.status_code < 500:
        idempotent_request_release(claim_id=claim_id)
        return
    # Rendered as DRF renders it, and kept as text so that a replay is the same bytes.
    body = JSONRenderer().render(response.data).decode()
    idempotent_request_answer(claim_id=claim_id, status=response.status_code, body=body)


def idempotent(view_method: Callable[..., Response]) -> Callable[..., HttpResponse | Response]:
    """Make a POST handler of an ``APIView`` honour ``Idempotency-Key`` (and document it)."""

    @functools.wraps(view_method)
    def handler(
        view: APIView, request: Request, *args: Any, **kwargs: Any
    ) -> HttpResponse | Response:
        key = idempotency_key_parse(request.headers.get(HEADER))
        if key is None:
            return view_method(view, request, *args, **kwargs)
        claim = idempotent_request_claim(
            principal=f"user:{request.user.pk}",
            key=key,
            endpoint=f"{request.method} {request.path}"[:200],
            fingerprint=request_fingerprint(request.data),
        )
        if isinstance(claim, StoredAnswer):
            return _replay(claim)
        try:
            response = view_method(view, request, *args, **kwargs)
        except Exception as error:
            # The answer the client gets is decided here, so that it can be kept.
            response = view.handle_exception(error)
        try:
            _keep_or_release(claim, response)
        except DatabaseError:
            # The claim stays "in progress" until it expires: never a second creation.
            logger.warning("could not record the answer for %s %r", request.path, key)
        return response

    return extend_schema(parameters=[IDEMPOTENCY_KEY_PARAMETER])(handler)
