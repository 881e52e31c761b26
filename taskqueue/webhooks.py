"""The project-finished webhook: a signed JSON POST, retried with backoff through django-q2.

The receiver checks ``X-Flotilla-Signature: sha256=<hex>``, the HMAC-SHA256
with the project's webhook secret of ``<timestamp>.<body>`` where timestamp
is the ``X-Flotilla-Timestamp`` header (Unix seconds). Signing the timestamp
with the body lets a receiver refuse replays of an old delivery.
"""

import hashlib
import hmac
import json
import logging
import time
import uuid
from datetime import datetime, timedelta

import requests
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import async_task, schedule

from netguard.http import OutboundRefused, outbound_session
from taskqueue.models import Project, WebhookState
from taskqueue.selectors import project_result

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Flotilla-Signature"
# The longest backoff a worker sleeps through before the next attempt; longer
# ones are scheduled, so no worker is held for minutes by one receiver.
_INLINE_BACKOFF_MAX_S = 5.0
TIMESTAMP_HEADER = "X-Flotilla-Timestamp"


def webhook_signature(*, secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def webhook_signature_valid(*, secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    expected = webhook_signature(secret=secret, timestamp=timestamp, body=body)
    return hmac.compare_digest(expected, signature)


def webhook_deliver(*, project_id: int) -> bool:
    """One delivery attempt, the next queued after a backoff on failure; True if delivered."""
    project = Project.objects.filter(id=project_id, webhook_state=WebhookState.PENDING).first()
    if project is None:
        return False
    attempt = project.webhook_attempts + 1
    # Claiming the attempt number also leases the delivery, so the tick does
    # not queue a second one while this one is in flight.
    lease = timezone.now() + timedelta(seconds=settings.FLOTILLA_WEBHOOK_TIMEOUT_S + 30)
    if not Project.objects.filter(
        id=project_id, webhook_state=WebhookState.PENDING, webhook_attempts=project.webhook_attempts
    ).update(webhook_attempts=attempt, webhook_next_at=lease):
        return False
    error, retryable = _post(project, attempt)
    now = timezone.now()
    if error is None:
        Project.objects.filter(id=project_id).update(
            webhook_state=WebhookState.DELIVERED,
            webhook_delivered_at=now,
            webhook_error="",
            webhook_next_at=None,
        )
        return True
    # A refused address is refused again on the next try: give up at once.
    if attempt >= settings.FLOTILLA_WEBHOOK_MAX_ATTEMPTS or not retryable:
        Project.objects.filter(id=project_id).update(
            webhook_state=WebhookState.FAILED, webhook_error=error, webhook_next_at=None
        )
        logger.warning(
            "project %s webhook given up after %s attempts: %s", project_id, attempt, error
        )
        return False
    delay = min(
        settings.FLOTILLA_WEBHOOK_BACKOFF_CAP_S,
        settings.FLOTILLA_WEBHOOK_BACKOFF_S * 2 ** (attempt - 1),
    )
    next_at = now + timedelta(seconds=delay)
    Project.objects.filter(id=project_id).update(webhook_error=error, webhook_next_at=next_at)
    _retry_schedule(project_id, next_at, delay)
    return False


def _retry_schedule(project_id: int, next_at: datetime, delay: float) -> None:
    """Queue the next attempt after ``delay``; a worker never waits longer than a moment for it.

    A short backoff is slept here (the scheduler's clock ticks only every
    ~30 s); a longer one is a django-q2 schedule, and the projects tick,
    which queues every delivery whose ``webhook_next_at`` is due, covers it
    should that schedule be lost.
    """
    if delay > _INLINE_BACKOFF_MAX_S:
        schedule(
            "taskqueue.tasks.project_webhook_deliver",
            project_id,
            name=f"project-webhook-{project_id}-{uuid.uuid4().hex[:8]}",
            schedule_type=Schedule.ONCE,
            next_run=next_at,
        )
        return
    time.sleep(delay)
    async_task(
        "taskqueue.tasks.project_webhook_deliver",
        project_id,
        group="projects",
        task_name=f"project-webhook-{project_id}",
    )


def _post(project: Project, attempt: int) -> tuple[str | None, bool]:
    """The error of one attempt (None when delivered) and whether another may succeed."""
    body = json.dumps(
        {
            "event": "project.finished",
            "delivery": f"{project.id}-{attempt}",
            "project": project_result(project_id=project.id),
        },
        cls=DjangoJSONEncoder,
        separators=(",", ":"),
    ).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "flotilla-webhook/1",
        "X-Flotilla-Event": "project.finished",
        "X-Flotilla-Delivery": f"{project.id}-{attempt}",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: webhook_signature(
            secret=project.webhook_secret, timestamp=timestamp, body=body
        ),
    }
    # The receiver's URL is the project owner's: it goes through the outbound
    # guard, which refuses the hub's own and private addresses.
    try:
        with outbound_session() as session:
            response = session.post(
                project.webhook_url,
                data=body,
                headers=headers,
                timeout=settings.FLOTILLA_WEBHOOK_TIMEOUT_S,
                allow_redirects=False,
            )
    except OutboundRefused as error:
        return f"attempt {attempt}: refused: {error}"[:1000], False
    except requests.RequestException as error:
        return f"attempt {attempt}: {type(error).__name__}: {error}"[:1000], True
    if 200 <= response.status_code < 300:
        return None, False
    return f"attempt {attempt}: the receiver answered {response.status_code}", True
