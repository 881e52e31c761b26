"""The external coordinator gate: a Mosaic-style coordinator approves every push.

``POST <FLOTILLA_COORDINATOR_URL>/api/quality/check`` with
``{taskId, agentId, files, diffSummary}``; the answer is
``{approved, gate, message, details}``. Connection errors, timeouts, 429 and
5xx answers are retried with exponential backoff; when the retries run out,
or the answer is not that shape, the push is refused.
"""

import json
import time
import urllib.error
import urllib.request

from django.conf import settings

from gates.base import Gate, GateContext, GateResult, gate_failed, gate_passed
from gates.diffs import diff_summary

_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


class CoordinatorError(Exception):
    pass


def coordinator_check(*, url: str, body: dict) -> dict:
    """The coordinator's verdict, after up to ``FLOTILLA_COORDINATOR_RETRIES`` retries."""
    attempts = settings.FLOTILLA_COORDINATOR_RETRIES + 1
    last_error = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(settings.FLOTILLA_COORDINATOR_BACKOFF_S * 2 ** (attempt - 1))
        try:
            return _post(url, body)
        except urllib.error.HTTPError as error:
            last_error = f"the coordinator answered {error.code}"
            if error.code not in _RETRYABLE:
                break
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            last_error = f"cannot reach the coordinator: {getattr(error, 'reason', error)}"
    raise CoordinatorError(f"{last_error} (after {attempt + 1} attempt(s))")


def _post(url: str, body: dict) -> dict:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if settings.FLOTILLA_COORDINATOR_TOKEN:
        headers["Authorization"] = f"Bearer {settings.FLOTILLA_COORDINATOR_TOKEN}"
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=settings.FLOTILLA_COORDINATOR_TIMEOUT_S) as reply:
        try:
            answer = json.loads(reply.read(1024 * 1024))
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
        url = settings.FLOTILLA_COORDINATOR_URL.rstrip("/") + "/api/quality/check"
        body = {
            "taskId": context.task_id,
            "agentId": context.agent_id,
            "files": context.files,
            "diffSummary": diff_summary(context.diff),
        }
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
