"""Every HTTP endpoint × {anonymous, owner, other user, staff, peer}: exactly this status.

The matrix is written out in docs/scaling.md ("Who may call what"). Each row
is one request, asked by each principal in turn against the same world
(tests/owners.py), each in a savepoint that is rolled back, so a kill by the
owner does not change what staff then find. "owner" owns the agents and
projects a row names; "other" is another ordinary user; "peer" is a request
signed by an ACTIVE peer hub's pinned key, with no API token. Agents and
projects of someone else answer 404, never 403, so their ids do not leak.

The findings of issue 13 (another user listed, read, killed and resumed the
owner's agents, read the owner's project with its webhook URL and downloaded
its artifacts) are the tests after the matrix.
"""

import io
import tarfile
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.db import transaction
from django.test import Client
from django.urls import resolve

from agents.models import Agent, AgentState
from audit.models import AuditEvent
from orchestrator_site.asgi import application
from taskqueue.dispatcher import project_dispatch
from tests.owners import (
    PEER_INSTANCE,
    USERS,
    WEBHOOK,
    World,
    body_bytes,
    example_path,
    peer_command,
    peer_headers,
    stream_connections_close,
    url_patterns,
    world_build,
)

PRINCIPALS = ("anonymous", *USERS, "peer")


def owned(ok: int) -> dict[str, int]:
    """The owner's agent or project: owner and staff act; another user is told it is not there."""
    return {"anonymous": 401, "owner": ok, "other": 404, "staff": ok, "peer": 401}


def any_user(status: int) -> dict[str, int]:
    return {"anonymous": 401, "owner": status, "other": status, "staff": status, "peer": 401}


def staff_only(status: int) -> dict[str, int]:
    return {"anonymous": 401, "owner": 403, "other": 403, "staff": status, "peer": 401}


def staff_sees(status: int) -> dict[str, int]:
    """Work a peer hub asked for: only staff see it through the API (the peer uses its inbox)."""
    return {"anonymous": 401, "owner": 404, "other": 404, "staff": status, "peer": 401}


def peer_only(status: int) -> dict[str, int]:
    return {"anonymous": 401, "owner": 401, "other": 401, "staff": 401, "peer": status}


EVERYONE = {"anonymous": 200, "owner": 200, "other": 200, "staff": 200, "peer": 200}
REASON = {"reason": "matrix"}


def _status_of(agent: str) -> Callable[[World], dict]:
    return lambda world: peer_command("agent.status", {"agent_id": world.path(agent)})


def _kill_of(agent: str) -> Callable[[World], dict]:
    return lambda world: peer_command("agent.kill", {"agent_id": world.path(agent)})


def _events_of_an_unknown_agent(world: World) -> dict:
    """Events a peer reports for an agent we never asked it to run."""
    return {
        **peer_command("", {}),
        "agent_id": str(uuid.uuid4()),
        "agent": {},
        "events": [],
    }


def _identity(world: World) -> dict:
    return {
        "instance_id": PEER_INSTANCE,
        "name": world.peer.name,
        "url": world.peer.url,
        "keys": world.peer.keys,
    }


# (method, path, body, expected status per principal). A body that is a
# function is made per request (federation messages need a fresh id).
MATRIX: list[tuple[str, str, Any, dict[str, int]]] = [
    ("GET", "/api/v1/health", None, EVERYONE),
    ("GET", "/api/v1/schema/", None, any_user(200)),
    ("GET", "/api/v1/docs/", None, any_user(200)),
    ("GET", "/api/v1/agents", None, any_user(200)),
    ("POST", "/api/v1/agents", {}, any_user(400)),
    ("GET", "/api/v1/agents/{agent}", None, owned(200)),
    ("GET", "/api/v1/agents/{project_agent}", None, owned(200)),
    ("GET", "/api/v1/agents/{peer_agent}", None, staff_sees(200)),
    ("GET", "/api/v1/agents/{agent}/events", None, owned(200)),
    ("GET", "/api/v1/agents/{project_agent}/events", None, owned(200)),
    ("GET", "/api/v1/agents/{peer_agent}/events", None, staff_sees(200)),
    ("GET", "/api/v1/agents/{project_agent}/patch", None, owned(200)),
    ("GET", "/api/v1/agents/{peer_agent}/patch", None, staff_sees(200)),
    ("POST", "/api/v1/agents/{paused}/resume", {"budget_usd": "500"}, owned(202)),
    # A body that is not valid is refused first, whoever's the id is (so nothing leaks).
    ("POST", "/api/v1/agents/{paused}/resume", {}, any_user(400)),
    # A failed agent starts again as a new one; any other state, or a peer's agent, is 409.
    ("POST", "/api/v1/agents/{project_agent}/retry", None, owned(202)),
    ("POST", "/api/v1/agents/{agent}/retry", None, owned(409)),
    ("POST", "/api/v1/agents/{peer_agent}/retry", None, staff_sees(409)),
    ("POST", "/api/v1/agents/{agent}/kill", REASON, owned(200)),
    ("POST", "/api/v1/agents/{peer_agent}/kill", REASON, staff_sees(200)),
    ("POST", "/api/v1/agents/kill-all", {}, staff_only(400)),
    ("POST", "/api/v1/killswitch/halt", REASON, staff_only(200)),
    ("POST", "/api/v1/killswitch/release", {}, staff_only(200)),
    ("GET", "/api/v1/projects", None, any_user(200)),
    ("POST", "/api/v1/projects", {}, any_user(400)),
    ("POST", "/api/v1/projects/plan", {}, any_user(400)),
    ("GET", "/api/v1/projects/{project}", None, owned(200)),
    ("GET", "/api/v1/projects/{project}/result", None, owned(200)),
    ("GET", "/api/v1/projects/{project}/artifacts", None, owned(200)),
    ("POST", "/api/v1/projects/{project}/cancel", REASON, owned(200)),
    ("POST", "/api/v1/projects/{project}/pause", None, owned(200)),
    ("POST", "/api/v1/projects/{paused_project}/resume", None, owned(200)),
    ("POST", "/api/v1/projects/{project}/tasks/a/retry", None, owned(200)),
    ("POST", "/api/v1/projects/{project}/tasks/nope/retry", None, owned(404)),
    ("GET", "/api/v1/peers", None, staff_only(200)),
    ("POST", "/api/v1/peers/connect", {}, staff_only(400)),
    ("POST", "/api/v1/peers/{peer_id}/agents", {}, any_user(400)),
    ("POST", "/api/v1/peers/{peer_id}/accept", {}, staff_only(409)),
    ("POST", "/api/v1/peers/{peer_id}/reject", {}, staff_only(409)),
    ("POST", "/api/v1/peers/{peer_id}/suspend", {}, staff_only(200)),
    ("POST", "/api/v1/peers/{peer_id}/disconnect", {}, staff_only(200)),
    ("GET", "/federation/v1/identity", None, EVERYONE),
    ("POST", "/federation/v1/connect", _identity, peer_only(202)),
    ("POST", "/federation/v1/commands", _status_of("{peer_agent}"), peer_only(200)),
    ("POST", "/federation/v1/commands", _kill_of("{peer_agent}"), peer_only(200)),
    ("POST", "/federation/v1/commands", _status_of("{agent}"), peer_only(404)),
    ("POST", "/federation/v1/commands", _kill_of("{agent}"), peer_only(404)),
    ("POST", "/federation/v1/events", _events_of_an_unknown_agent, peer_only(404)),
    ("GET", "/metrics", None, staff_only(200)),
]

# Endpoints served by the ASGI application ahead of Django (orchestrator_site/asgi.py),
# which the test client cannot reach: asked in this process through the ASGI interface.
ASGI_MATRIX: list[tuple[str, str, Any, dict[str, int]]] = [
    ("GET", "/api/v1/agents/{agent}/events/stream", None, owned(200)),
    ("GET", "/api/v1/agents/{project_agent}/events/stream", None, owned(200)),
    ("GET", "/api/v1/agents/{peer_agent}/events/stream", None, staff_sees(200)),
]

API_PREFIXES = ("api/v1/", "federation/v1/", "metrics")


def asgi_routes() -> list[Any]:
    """The HTTP routes the ASGI application serves itself, before handing the rest to Django."""
    router = application.application_mapping["http"]
    return [
        route
        for route in getattr(router, "routes", [])
        if str(route.pattern).startswith(API_PREFIXES)
    ]


def test_the_matrix_has_a_row_for_every_api_endpoint():
    rows = {resolve(example_path(path)).route for _, path, _, _ in MATRIX}
    for _, path, _, _ in ASGI_MATRIX:
        (route,) = [r for r in asgi_routes() if r.pattern.match(example_path(path).lstrip("/"))]
        rows.add(str(route.pattern))
    routes = url_patterns(API_PREFIXES) | {str(route.pattern) for route in asgi_routes()}
    assert rows == routes


@pytest.fixture
def world(db) -> World:
    return world_build()


@pytest.fixture
def streamed_world(transactional_db) -> Iterator[World]:
    """The world, committed: the streams read it from threads of their own."""
    yield world_build()
    stream_connections_close()


def request_as(world: World, principal: str, method: str, path: str, body: Any) -> Any:
    data = body_bytes(body(world) if callable(body) else body)
    headers: dict[str, str] = {}
    if principal in USERS:
        headers["Authorization"] = f"Token {world.tokens[principal]}"
    elif principal == "peer":
        headers.update(peer_headers(world, method, path, data))
    return Client().generic(method, path, data, content_type="application/json", headers=headers)


def statuses(world: World, method: str, path: str, body: Any) -> dict[str, int]:
    """What each principal gets, each in a savepoint rolled back after its request."""
    got = {}
    for principal in PRINCIPALS:
        with transaction.atomic():
            got[principal] = request_as(world, principal, method, path, body).status_code
            transaction.set_rollback(True)
    return got


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    MATRIX,
    ids=[f"{method} {path} #{number}" for number, (method, path, _, _) in enumerate(MATRIX)],
)
def test_each_principal_gets_exactly_this_status(world, method, path, body, expected):
    assert statuses(world, method, world.path(path), body) == expected


def asgi_status(world: World, principal: str, method: str, path: str) -> int:
    """The status an ASGI endpoint starts its answer with; a stream is then let go."""
    headers = [(b"host", b"localhost")]
    if principal in USERS:
        headers.append((b"authorization", f"Token {world.tokens[principal]}".encode()))
    elif principal == "peer":
        signed = peer_headers(world, method, path, b"")
        headers += [(name.lower().encode(), value.encode()) for name, value in signed.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("localhost", 80),
    }

    async def ask() -> int:
        communicator = ApplicationCommunicator(application, scope)
        await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await communicator.receive_output(timeout=10)
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(timeout=10)
        return start["status"]

    return async_to_sync(ask)()


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    ASGI_MATRIX,
    ids=[f"{method} {path}" for method, path, _, _ in ASGI_MATRIX],
)
def test_each_principal_gets_exactly_this_status_from_the_streams(
    streamed_world, method, path, body, expected
):
    world = streamed_world
    got = {
        principal: asgi_status(world, principal, method, world.path(path))
        for principal in PRINCIPALS
    }
    assert got == expected


# --- Lists show one's own -------------------------------------------------------------


def _listed(world: World, principal: str, path: str) -> set[str]:
    response = request_as(world, principal, "GET", path, None)
    assert response.status_code == 200
    return {str(row["id"]) for row in response.json()["results"]}


def test_each_user_lists_only_their_own_agents_and_staff_list_all(world):
    mine = {str(world.agent.id), str(world.paused.id), str(world.project_agent.id)}

    assert _listed(world, "owner", "/api/v1/agents") == mine
    assert _listed(world, "other", "/api/v1/agents") == set()
    assert _listed(world, "staff", "/api/v1/agents") == mine | {str(world.peer_agent.id)}
    assert _listed(world, "other", "/api/v1/agents?task_id=ownership") == set()


def test_each_user_lists_only_their_own_projects_and_staff_list_all(world):
    mine = {str(world.project.id), str(world.paused_project.id)}

    assert _listed(world, "owner", "/api/v1/projects") == mine
    assert _listed(world, "other", "/api/v1/projects") == set()
    assert _listed(world, "staff", "/api/v1/projects") == mine


# --- The findings, as reported --------------------------------------------------------


def _as(world: World, principal: str, method: str, path: str, body: Any = None) -> Any:
    return request_as(world, principal, method, world.path(path), body)


def test_another_user_does_not_see_the_owners_agents_in_the_list(world):
    listed = _as(world, "other", "GET", "/api/v1/agents").json()

    assert listed["count"] == 0 and listed["results"] == []


def test_another_user_cannot_read_the_owners_agent_or_its_output(world):
    detail = _as(world, "other", "GET", "/api/v1/agents/{agent}")
    events = _as(world, "other", "GET", "/api/v1/agents/{agent}/events")

    assert (detail.status_code, detail.json()["error"]["code"]) == (404, "not_found")
    assert events.status_code == 404 and b"owner's secret" not in events.content
    assert b"owner's secret" in _as(world, "owner", "GET", "/api/v1/agents/{agent}/events").content


def test_another_user_cannot_kill_the_owners_agent(world):
    refused = _as(world, "other", "POST", "/api/v1/agents/{agent}/kill", REASON)

    assert refused.status_code == 404
    assert Agent.objects.get(id=world.agent.id).state == AgentState.QUEUED
    assert not AuditEvent.objects.filter(action="agent.kill", actor="user:other").exists()


def test_another_user_cannot_resume_the_owners_paused_agent_with_a_budget_of_500(world):
    refused = _as(world, "other", "POST", "/api/v1/agents/{paused}/resume", {"budget_usd": 500})

    assert refused.status_code == 404
    paused = Agent.objects.get(id=world.paused.id)
    assert paused.state == AgentState.PAUSED and paused.options["budget_usd"] == "1"
    assert not AuditEvent.objects.filter(action="agent.resume").exists()

    resumed = _as(world, "owner", "POST", "/api/v1/agents/{paused}/resume", {"budget_usd": 500})
    assert resumed.status_code == 202
    assert Decimal(Agent.objects.get(id=world.paused.id).options["budget_usd"]) == 500


def test_another_user_cannot_read_the_owners_project_or_its_webhook_url(world):
    for path in ["/api/v1/projects/{project}", "/api/v1/projects/{project}/result"]:
        refused = _as(world, "other", "GET", path)
        assert refused.status_code == 404 and WEBHOOK.encode() not in refused.content, path
    assert WEBHOOK.encode() not in _as(world, "other", "GET", "/api/v1/projects").content

    assert _as(world, "owner", "GET", "/api/v1/projects/{project}").json()["webhook_url"] == WEBHOOK


def test_another_user_cannot_download_the_owners_project_artifacts(world):
    refused = _as(world, "other", "GET", "/api/v1/projects/{project}/artifacts")

    assert refused.status_code == 404 and refused["Content-Type"] == "application/json"
    archive = _as(world, "owner", "GET", "/api/v1/projects/{project}/artifacts").content
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        events = tar.extractfile(f"project-{world.project.id}/a/attempt-1/events.jsonl")
        assert b"owner's output" in events.read()


def test_another_user_cannot_control_the_owners_project(world):
    for action in ["cancel", "pause", "tasks/a/retry"]:
        path = f"/api/v1/projects/{{project}}/{action}"
        assert _as(world, "other", "POST", path, REASON).status_code == 404, action
    resume = _as(world, "other", "POST", "/api/v1/projects/{paused_project}/resume")
    assert resume.status_code == 404
    assert not AuditEvent.objects.filter(actor="user:other").exists()


def test_a_peer_sees_and_kills_only_the_agents_it_asked_for(world):
    body = peer_command("agent.status", {"agent_id": str(world.agent.id)})
    refused = request_as(world, "peer", "POST", "/federation/v1/commands", body)

    assert refused.status_code == 404 and b"owner's secret" not in refused.content
    body = peer_command("agent.kill", {"agent_id": str(world.peer_agent.id), "reason": "done"})
    killed = request_as(world, "peer", "POST", "/federation/v1/commands", body)
    assert killed.status_code == 200 and killed.json()["data"]["state"] == AgentState.KILLED
    assert Agent.objects.get(id=world.agent.id).state == AgentState.QUEUED


def test_the_agents_a_project_starts_belong_to_its_creator(world, remote_repo):
    body = {
        "name": "started",
        "tasks": [{"key": "build", "script": "true", "repository": str(remote_repo)}],
    }
    created = _as(world, "owner", "POST", "/api/v1/projects", body)
    assert created.status_code == 201, created.content

    report = project_dispatch(project_id=created.json()["id"])

    assert report.started == ["build"]
    (started,) = Agent.objects.filter(task_id=f"p{created.json()['id']}-build")
    assert started.requested_by == f"project:{created.json()['id']}"
    path = f"/api/v1/agents/{started.id}"
    assert [_as(world, name, "GET", path).status_code for name in USERS] == [200, 404, 200]
    assert str(started.id) in _listed(world, "owner", "/api/v1/agents")
    assert str(started.id) not in _listed(world, "other", "/api/v1/agents")
