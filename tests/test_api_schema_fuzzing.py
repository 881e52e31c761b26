"""Schemathesis, in process: the hub's own OpenAPI schema against the hub's own WSGI app.

Every operation gets 200 generated requests (the schema's examples, then
fuzzing, valid and invalid), as a staff user so that every operation is
reachable. Then a state machine follows the schema's links (a spawn or a
list → that agent's read, events, kill, resume; a project → its read, pause,
cancel, retry, …; a peer → accept, reject, …), so requests also reach objects
that exist. The checks: no 5xx, and every answer is one the schema declares
(status, content type, body).

The app runs in this process, on the test database, without a network:
every name resolves to a documentation address that the outbound guard
refuses, so no URL the fuzzer makes up is ever contacted, and no agent runs
(they queue; no worker is started). tests/reliability/test_api_fuzzing.py
runs the same checks over HTTP against a real hub in the PostgreSQL pass.
"""

import json
import logging
import socket

import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.test import Client

from agents.models import Agent
from federation import signing
from federation.models import Peer, PeerState
from federation.services import peer_register_inbound
from taskqueue.models import Project
from tests.conftest import spawn_body

# The API contract does not depend on the database: one database pass runs it.
pytestmark = pytest.mark.api_fuzz

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 200
UNREACHABLE = "192.0.2.1"  # TEST-NET-1 (RFC 5737), for documentation only
PEER_DOCUMENT = {
    "instance_id": "fuzzed",
    "name": "fuzzed",
    # .test never resolves (RFC 2606); under ``offline`` it is UNREACHABLE.
    "url": "https://fuzzed.example.test",
    "keys": [
        {
            "key_id": "fuzzed#1",
            "alg": "ed25519",
            "created": None,
            "expires": None,
            "public_key": signing.public_key_text(Ed25519PrivateKey.generate()),
        }
    ],
}
QUIET = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}


def hub_schema() -> dict:
    """The schema ``/api/v1/schema/`` serves, generated without a request."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(document, renderer_context={}))


schema = schemathesis.openapi.from_dict(hub_schema())
schema.app = get_wsgi_application()


class Hub:
    """The hub under test, reached through the same WSGI app as the fuzzer reaches it."""

    def __init__(self, *, token: str, repository: str) -> None:
        self.headers = {"Authorization": f"Token {token}"}
        self.repository = repository
        self.client = Client(schema.app)

    def post(self, path: str, body: dict) -> int:
        return self.client.post(path, json=body, headers=self.headers).status_code

    def reset(self) -> None:
        """One queued agent, one project and one pending peer, and the hub not halted."""
        Project.objects.all().delete()
        Agent.objects.all().delete()
        Peer.objects.exclude(instance_id="fuzzed").delete()
        Peer.objects.update(state=PeerState.PENDING)
        assert self.post("/api/v1/killswitch/release", {"reason": "fuzzing"}) == 200
        assert self.post("/api/v1/agents", spawn_body(self.repository, "true")) == 202
        task = {"key": "a", "script": "true", "repository": self.repository}
        # Paused, so the session's worker node does not dispatch and run its
        # task meanwhile: a replayed scenario must meet the same hub.
        project = {"name": "p", "tasks": [task], "paused": True}
        assert self.post("/api/v1/projects", project) == 201


@pytest.fixture
def hub(staff_user, remote_repo, guarded, monkeypatch, settings):
    """A staff user's hub, offline, with Django's WSGI handler run as its test client runs it."""
    # Agents spawned here wait in a pool no worker node serves: a worker of the
    # session running them meanwhile would answer a replayed scenario differently.
    settings.FLOTILLA_NODE_POOL = "unserved"
    peer_register_inbound(document=PEER_DOCUMENT, key_id="fuzzed#1")

    def getaddrinfo(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (UNREACHABLE, port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    # The handler must not close the test's database connection after each request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    # Thousands of refused requests are expected; a server error is still logged.
    request_log = logging.getLogger("django.request")
    level = request_log.level
    request_log.setLevel(logging.ERROR)
    hub = Hub(token=Token.objects.create(user=staff_user).key, repository=str(remote_repo))
    hub.reset()
    yield hub
    request_log.setLevel(level)
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


# Committed transactions: kill-all kills from a thread pool, whose connections
# must see the agents.
@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@hypothesis_settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    **QUIET,
)
def test_no_request_gets_a_server_error_or_an_answer_outside_the_schema(case, hub):
    case.call_and_validate(headers=hub.headers, checks=CHECKS)


@pytest.mark.django_db(transaction=True)
def test_linked_requests_get_no_server_error_or_an_answer_outside_the_schema(hub):
    class LinkedRequests(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each scenario starts on the same hub, so that a scenario
            # replayed (to shrink it) meets what it met the first time.
            hub.reset()

        def get_call_kwargs(self, case):
            return {"headers": hub.headers}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    LinkedRequests.run(
        settings=hypothesis_settings(
            max_examples=100, stateful_step_count=8, derandomize=True, **QUIET
        )
    )
