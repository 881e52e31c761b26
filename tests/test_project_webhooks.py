"""The project-finished webhook: signed with HMAC-SHA256, retried through django-q2."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django_q.models import Schedule

from taskqueue.models import Project, WebhookState
from taskqueue.webhooks import webhook_deliver, webhook_signature_valid
from tests.test_projects import create, wait_for_project, wait_until


class Receiver:
    """A real HTTP server on 127.0.0.1 answering the scripted statuses in order, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(
                    {"headers": dict(self.headers), "body": body, "at": time.monotonic()}
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/flotilla"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for one in made:
        one.close()


SECRET = "s3cret-for-the-webhook-test"


def test_receiver_gets_the_finished_project_signed_with_hmac_sha256(hub, api, receiver):
    server = receiver()
    project = create(
        api, [{"key": "only", "script": "true"}], webhook_url=server.url, webhook_secret=SECRET
    )
    assert "webhook_secret" not in project  # the caller chose it; it is never echoed

    assert wait_for_project(project["id"]).state == "succeeded"
    wait_until(lambda: server.received, what="the webhook")

    delivery = server.received[0]
    headers = delivery["headers"]
    assert headers["Content-Type"] == "application/json"
    assert webhook_signature_valid(
        secret=SECRET,
        timestamp=headers["X-Flotilla-Timestamp"],
        body=delivery["body"],
        signature=headers["X-Flotilla-Signature"],
    )
    assert not webhook_signature_valid(
        secret="another-secret-entirely",
        timestamp=headers["X-Flotilla-Timestamp"],
        body=delivery["body"],
        signature=headers["X-Flotilla-Signature"],
    )
    assert abs(int(headers["X-Flotilla-Timestamp"]) - time.time()) < 60
    payload = json.loads(delivery["body"])
    assert payload["event"] == "project.finished"
    assert payload["project"]["id"] == project["id"]
    assert payload["project"]["state"] == "succeeded"
    assert payload["project"]["tasks"][0]["key"] == "only"
    wait_until(
        lambda: Project.objects.get(id=project["id"]).webhook_state == "delivered", what="delivered"
    )


def test_a_failing_receiver_is_retried_with_backoff_until_it_accepts(hub, api, receiver):
    server = receiver([500, 503])
    project = create(api, [{"key": "only", "script": "true"}], webhook_url=server.url)
    secret = project["webhook_secret"]  # generated and shown once

    wait_for_project(project["id"])
    wait_until(
        lambda: Project.objects.get(id=project["id"]).webhook_state == "delivered",
        what="delivered after retries",
    )

    assert len(server.received) == 3
    gaps = [b["at"] - a["at"] for a, b in zip(server.received, server.received[1:], strict=False)]
    # settings_test: FLOTILLA_WEBHOOK_BACKOFF_S = 0.2, doubling.
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4
    assert [d["headers"]["X-Flotilla-Delivery"] for d in server.received] == [
        f"{project['id']}-1",
        f"{project['id']}-2",
        f"{project['id']}-3",
    ]
    for delivery in server.received:
        headers = delivery["headers"]
        assert webhook_signature_valid(
            secret=secret,
            body=delivery["body"],
            timestamp=headers["X-Flotilla-Timestamp"],
            signature=headers["X-Flotilla-Signature"],
        )
    stored = Project.objects.get(id=project["id"])
    assert stored.webhook_attempts == 3 and stored.webhook_delivered_at is not None


def test_a_cancelled_project_also_reports_through_its_webhook(hub, api, receiver):
    server = receiver()
    project = create(api, [{"key": "long", "script": "sleep 60"}], webhook_url=server.url)

    api.post(f"/api/v1/projects/{project['id']}/cancel", {}, format="json")

    wait_until(lambda: server.received, what="the webhook")
    assert json.loads(server.received[0]["body"])["project"]["state"] == "cancelled"


@pytest.mark.django_db
def test_a_long_backoff_is_a_schedule_not_a_sleep_in_the_worker(receiver, settings):
    settings.FLOTILLA_WEBHOOK_BACKOFF_S = 30
    server = receiver([500])
    project = Project.objects.create(
        name="p",
        state="succeeded",
        created_by="test",
        webhook_url=server.url,
        webhook_secret="s" * 32,
        webhook_state=WebhookState.PENDING,
    )

    assert webhook_deliver(project_id=project.id) is False

    assert len(server.received) == 1
    (retry,) = Schedule.objects.filter(func="taskqueue.tasks.project_webhook_deliver")
    assert retry.args == f"({project.id},)"
    stored = Project.objects.get(id=project.id)
    assert stored.webhook_state == WebhookState.PENDING and stored.webhook_attempts == 1
    # The schedule fires when the project's next attempt is due.
    assert retry.next_run == stored.webhook_next_at
