"""The external coordinator gate: a Mosaic-style coordinator approves every push.

``POST <FLOTILLA_COORDINATOR_URL>/api/quality/check`` with
``{taskId, agentId, files, diffSummary}``; the answer is
``{approved, gate, message, details}``. Connection errors, timeouts, 429 and
5xx answers are retried with exponential backoff; when the retries run out,
or the answer is not that shape, the push is refused. The request goes
through the hub's outbound guard (``netguard``): a coordinator on a private
address must be named in ``FLOTILLA_PRIVATE_URL_ALLOWLIST``, and each
redirect is judged again.
"""

import json
import time
from typing import Any, TypedDict

import requests
import tenacity
from django.conf import settings

from gates.base import Gate, GateContext, GateResult, gate_failed, gate_passed
from gates.diffs import diff_summary
from netguard.http import OutboundRefused, outbound_session

_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


class CoordinatorRequest(TypedDict):
    """What the coordinator is asked about a push (its names, camelCase)."""

    taskId: str
    agentId: str
    files: list[str]
    diffSummary: str


class CoordinatorError(Exception):
    pass


class _CoordinatorStatus(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _CoordinatorUnavailable(CoordinatorError):
    """A failure another attempt may get past: unreachable, or a 408/429/5xx answer."""


class _CoordinatorRefused(CoordinatorError):
    """A failure that another attempt would meet again: a 4xx answer, a refused address."""


def coordinator_check(*, url: str, body: CoordinatorRequest) -> dict[str, Any]:
    """The coordinator's verdict, after up to ``FLOTILLA_COORDINATOR_RETRIES`` retries.

    The verdict is its JSON answer, which has a boolean ``approved``.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_CoordinatorUnavailable),
        stop=tenacity.stop_after_attempt(settings.FLOTILLA_COORDINATOR_RETRIES + 1),
        wait=tenacity.wait_exponential(multiplier=settings.FLOTILLA_COORDINATOR_BACKOFF_S),
        reraise=True,
    )
    try:
        return retrying(_attempt, url, body)
    except (_CoordinatorUnavailable, _CoordinatorRefused) as error:
        attempts = retrying.statistics.get("attempt_number", 1)
        raise CoordinatorError(f"{error} (after {attempts} attempt(s))") from None


def _attempt(url: str, body: CoordinatorRequest) -> dict[str, Any]:
    try:
        return _post(url, body)
    except _CoordinatorStatus as error:
        message = f"the coordinator answered {error.code}"
        if error.code in _RETRYABLE:
            raise _CoordinatorUnavailable(message) from None
        raise _CoordinatorRefused(message) from None
    except OutboundRefused as error:
        raise _CoordinatorRefused(f"the coordinator's address is refused: {error}") from None
    except requests.RequestException as error:
        message = f"cannot reach the coordinator: {type(error).__name__}: {error}"[:1000]
        raise _CoordinatorUnavailable(message) from None


def _post(url: str, body: CoordinatorRequest) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if settings.FLOTILLA_COORDINATOR_TOKEN:
        headers["Authorization"] = f"Bearer {settings.FLOTILLA_COORDINATOR_TOKEN}"
    with outbound_session() as session:
        reply = session.post(
            url,
            data=json.dumps(body).encode(),
            headers=headers,
            timeout=settings.FLOTILLA_COORDINATOR_TIMEOUT_S,
            stream=True,
        )
        with reply:
            if reply.status_code >= 400:
                raise _CoordinatorStatus(reply.status_code)
            try:
                answer = json.loads(reply.raw.read(1024 * 1024, decode_content=True))
            except ValueError:
                raise CoordinatorError("the coordinator's answer is not JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("approved"), bool):
        raise CoordinatorError("the coordinator's answer has no boolean 'approved'")
    return answer


class CoordinatorGate(Gate):
    name = "coordinator"

    def is_configured(self, context: GateContext) -> bool:
        return bool(settings.FLOTILLA_COORDINATOR_URL)

    def run(self, context: GateContext) -> GateResult:
        started = time.monotonic()
        base_url = settings.FLOTILLA_COORDINATOR_URL
        if not base_url:  # is_configured said there is one; the gates fail closed anyway
            return gate_failed(self.name, "no coordinator URL is configured, so rejected")
        url = base_url.rstrip("/") + "/api/quality/check"
        body = CoordinatorRequest(
            taskId=context.task_id,
            agentId=context.agent_id,
            files=context.files,
            diffSummary=diff_summary(context.diff),
        )
        try:
            answer = coordinator_check(url=url, body=body)
        except CoordinatorError as error:
            return gate_failed(
                self.name,
                f"no verdict from the coordinator, so rejected: {error}",
                duration_s=time.monotonic() - started,
            )
        message = str(answer.get("message") or "")[:500]
        extra = {
            "duration_s": time.monotonic() - started,
            "output": message,
            "details": {"gate": answer.get("gate"), "details": answer.get("details")},
        }
        label = f"coordinator gate {answer.get('gate')!r}" if answer.get("gate") else "coordinator"
        if not answer["approved"]:
            return gate_failed(self.name, f"{label} rejected: {message}", **extra)
        return gate_passed(
            self.name, f"{label} approved" + (f": {message}" if message else ""), **extra
        )
