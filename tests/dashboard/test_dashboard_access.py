"""Who may see and do what on the dashboard, over HTTP and over WebSockets."""

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import Client
from django.urls import resolve
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from agents.models import AgentState
from agents.selectors import agent_event_last_id, agent_get
from agents.services import agent_event_append
from audit.models import AuditEvent
from dashboard.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from killswitch.selectors import hub_halt_get
from orchestrator_site.asgi import application
from tests.owners import (
    USERS,
    World,
    agent_stored,
    example_path,
    stream_connections_close,
    url_patterns,
    world_build,
)


def _agent(remote_repo, requested_by="user:operator"):
    """A queued agent that no worker runs: a worker cluster another test left
    running in this session must not move it while these tests look at it."""
    return agent_stored(requested_by)


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_anonymous_request_is_redirected_to_the_login_page(db, remote_repo):
    agent = _agent(remote_repo)
    anonymous = Client()

    for path in ["/dashboard/", f"/dashboard/agents/{agent.id}/"]:
        response = anonymous.get(path)
        assert response.status_code == 302
        assert response["Location"] == f"/accounts/login/?next={path}"
    response = anonymous.post(f"/dashboard/agents/{agent.id}/kill", {"reason": "x"})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert agent_get(agent_id=agent.id).state == AgentState.QUEUED


def test_the_login_page_signs_an_operator_in_and_lands_on_the_dashboard(db, user):
    client = Client()
    assert b'name="password"' in client.get("/accounts/login/").content

    response = client.post(
        "/accounts/login/", {"username": "operator", "password": "operator-password"}
    )

    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    assert client.get("/dashboard/").status_code == 200


def test_a_non_staff_user_sees_no_hub_controls_and_the_server_refuses_them(db, user):
    client = _client(user)
    page = client.get("/dashboard/").content.decode()
    assert 'data-action="kill-all"' not in page and 'data-action="halt"' not in page

    for path in ["/dashboard/kill-all", "/dashboard/halt", "/dashboard/release"]:
        assert client.post(path, {"reason": "trying"}).status_code == 403, path

    assert not hub_halt_get().halted
    assert not AuditEvent.objects.filter(action__in=["agent.kill_all", "hub.halt"]).exists()


def test_staff_halt_and_release_the_hub_and_the_banner_says_so(db, staff_user):
    client = _client(staff_user)
    assert 'data-action="kill-all"' in client.get("/dashboard/").content.decode()

    response = client.post("/dashboard/halt", {"reason": "deploying"})

    assert response.status_code == 302 and hub_halt_get().halted
    page = client.get("/dashboard/").content.decode()
    assert 'data-banner="halted"' in page and "deploying" in page
    client.post("/dashboard/release", {})
    assert not hub_halt_get().halted
    assert 'data-banner="halted"' not in client.get("/dashboard/").content.decode()


def test_staff_kill_all_needs_a_reason_and_kills_every_live_agent(
    transactional_db, staff_user, remote_repo
):
    agents = [_agent(remote_repo), _agent(remote_repo)]
    client = _client(staff_user)
    assert client.post("/dashboard/kill-all", {"reason": " "}).status_code == 302
    assert agent_get(agent_id=agents[0].id).state == AgentState.QUEUED

    response = client.post(
        "/dashboard/kill-all", {"reason": "stop everything"}, HTTP_ACCEPT="application/json"
    )

    assert response.json()["killed"] == 2
    assert {agent_get(agent_id=agent.id).state for agent in agents} == {AgentState.KILLED}


def test_the_yolo_banner_shows_while_yolo_mode_is_on(db, user, settings):
    client = _client(user)
    assert 'data-banner="yolo"' not in client.get("/dashboard/").content.decode()
    settings.YOLO_MODE = True
    assert 'data-banner="yolo"' in client.get("/dashboard/").content.decode()


def test_an_operator_kills_one_agent_with_a_reason_and_csrf_is_enforced(db, user, remote_repo):
    agent = _agent(remote_repo)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.post(f"/dashboard/agents/{agent.id}/kill", {"reason": "x"}).status_code == 403
    client = _client(user)
    assert client.post(f"/dashboard/agents/{agent.id}/kill", {"reason": ""}).status_code == 400

    response = client.post(f"/dashboard/agents/{agent.id}/kill", {"reason": "wrong repository"})

    assert response.status_code == 200 and response.json()["state"] == "killed"
    assert agent_get(agent_id=agent.id).error == "killed by user:operator: wrong repository"
    assert client.post("/dashboard/agents/nope/kill", {"reason": "x"}).status_code == 404


def test_the_agents_and_agent_pages_show_the_agent_with_a_kill_button(db, user, remote_repo):
    agent = _agent(remote_repo)
    client = _client(user)

    board = client.get("/dashboard/").content.decode()
    detail = client.get(f"/dashboard/agents/{agent.id}/").content.decode()

    assert f'data-agent-id="{agent.id}" data-state="queued"' in board
    assert f'data-stream="/ws/dashboard/agents/{agent.id}/"' in detail
    assert 'data-action="kill"' in board and 'data-action="kill"' in detail


def test_the_agent_page_of_an_unknown_agent_is_a_404(db, user):
    assert _client(user).get("/dashboard/agents/no-such-agent/").status_code == 404


# --- WebSockets against the real daphne process --------------------------------------------


def _session_cookie(user) -> str:
    return f"sessionid={_client(user).cookies['sessionid'].value}"


def _ws_url(web, path: str) -> str:
    return web.url.replace("http://", "ws://") + path


def test_a_websocket_from_a_foreign_origin_is_refused(transactional_db, user, web):
    cookie = _session_cookie(user)
    url = _ws_url(web, "/ws/dashboard/agents/")

    with pytest.raises(InvalidStatus) as refused:
        connect(url, origin="http://evil.example", additional_headers={"Cookie": cookie})
    assert refused.value.response.status_code == 403

    with connect(url, origin=web.url, additional_headers={"Cookie": cookie}) as socket:
        assert json.loads(socket.recv(timeout=5))["type"] == "batch"


def test_a_websocket_without_a_session_is_refused(transactional_db, web):
    with pytest.raises(InvalidStatus) as refused:
        connect(_ws_url(web, "/ws/dashboard/agents/"), origin=web.url)
    assert refused.value.response.status_code == 403


def test_a_stream_resumed_after_an_event_id_sends_exactly_the_later_events(
    transactional_db, user, web, remote_repo
):
    agent = _agent(remote_repo)
    for number in range(5):
        agent_event_append(agent_id=agent.id, kind="output", data={"lines": [f"line {number}"]})
    ids = sorted(agent.events.values_list("id", flat=True))
    url = _ws_url(web, f"/ws/dashboard/agents/{agent.id}/?after={ids[2]}")

    received: list[int] = []
    with connect(url, origin=web.url, additional_headers={"Cookie": _session_cookie(user)}) as ws:
        while not received or received[-1] < ids[-1]:
            received += [event["id"] for event in json.loads(ws.recv(timeout=5))["events"]]
        agent_event_append(agent_id=agent.id, kind="log", data={"message": "live"})
        live = json.loads(ws.recv(timeout=5))

    assert received == ids[3:]
    assert [event["data"] for event in live["events"]] == [{"message": "live"}]


# --- Ownership: pages and streams × {anonymous, owner, other user, staff} ------------------

LOGIN = "login"  # a 302 to the login page


def _page_status(response) -> int | str:
    if response.status_code == 302 and response["Location"].startswith("/accounts/login/"):
        return LOGIN
    return response.status_code


def owned(ok: int) -> dict[str, int | str]:
    """The owner's agent or project: another user is told it is not there."""
    return {"anonymous": LOGIN, "owner": ok, "other": 404, "staff": ok}


def any_user(ok: int) -> dict[str, int | str]:
    return {"anonymous": LOGIN, "owner": ok, "other": ok, "staff": ok}


def staff_only(ok: int) -> dict[str, int | str]:
    return {"anonymous": LOGIN, "owner": 403, "other": 403, "staff": ok}


REASON = {"reason": "matrix"}

# (method, path, form data, expected per principal); POSTs ask for JSON answers.
PAGES = [
    ("GET", "/dashboard/", None, any_user(200)),
    ("GET", "/dashboard/agents/new/", None, any_user(200)),
    ("GET", "/dashboard/agents/{agent}/", None, owned(200)),
    ("GET", "/dashboard/agents/{agent}/diff/", None, owned(200)),
    ("GET", "/dashboard/agents/{peer_agent}/diff/", None, {**owned(200), "owner": 404}),
    ("GET", "/dashboard/activity/", None, any_user(200)),
    ("GET", "/dashboard/agents/{project_agent}/", None, owned(200)),
    ("GET", "/dashboard/agents/{peer_agent}/", None, {**owned(200), "owner": 404}),
    ("POST", "/dashboard/agents/{agent}/kill", REASON, owned(200)),
    ("POST", "/dashboard/agents/{peer_agent}/kill", REASON, {**owned(200), "owner": 404}),
    ("POST", "/dashboard/kill-all", {"reason": ""}, staff_only(400)),
    ("POST", "/dashboard/halt", REASON, staff_only(200)),
    ("POST", "/dashboard/release", {}, staff_only(200)),
    ("GET", "/dashboard/peers/", None, any_user(200)),
    ("POST", "/dashboard/peers/{peer_id}/suspend", {}, staff_only(302)),
    ("GET", "/dashboard/projects/", None, any_user(200)),
    ("GET", "/dashboard/projects/new/", None, any_user(200)),
    ("POST", "/dashboard/projects/new/yaml", {"text": "- key: a"}, any_user(200)),
    ("GET", "/dashboard/projects/{project}/", None, owned(200)),
    ("POST", "/dashboard/projects/{project}/pause", {}, owned(200)),
    ("POST", "/dashboard/projects/{project}/cancel", REASON, owned(200)),
    ("POST", "/dashboard/projects/{paused_project}/resume", {}, owned(200)),
]
BROWSERS = ("anonymous", *USERS)


def test_the_pages_matrix_has_a_row_for_every_dashboard_page():
    rows = {resolve(example_path(path)).route for _, path, _, _ in PAGES}
    assert rows == url_patterns(("dashboard/",))


@pytest.fixture
def world(db) -> World:
    return world_build()


@pytest.fixture
def streamed_world(transactional_db) -> Iterator[World]:
    """The world, committed: the streams read it from threads of their own."""
    yield world_build()
    stream_connections_close()


@pytest.mark.parametrize(
    ("method", "path", "data", "expected"),
    PAGES,
    ids=[f"{method} {path}" for method, path, _, _ in PAGES],
)
def test_each_principal_gets_exactly_this_page_status(world, method, path, data, expected):
    got = {}
    for principal in BROWSERS:
        with transaction.atomic():
            client = world.session(principal)
            if method == "GET":
                response = client.get(world.path(path))
            else:
                response = client.post(world.path(path), data, HTTP_ACCEPT="application/json")
            got[principal] = _page_status(response)
            transaction.set_rollback(True)
    assert got == expected


def test_the_agents_page_lists_only_the_users_own_agents_and_staff_see_all(world):
    def listed(principal: str) -> set[str]:
        page = world.session(principal).get("/dashboard/").content.decode()
        return set(re.findall(r'data-agent-id="([0-9a-f-]{36})"', page))

    mine = {str(world.agent.id), str(world.paused.id), str(world.project_agent.id)}
    assert listed("owner") == mine
    assert listed("other") == set()
    assert listed("staff") == mine | {str(world.peer_agent.id)}


def test_the_projects_page_lists_only_the_users_own_projects_and_staff_see_all(world):
    def listed(principal: str) -> set[str]:
        page = world.session(principal).get("/dashboard/projects/").content.decode()
        return set(re.findall(r'data-project-id="(\d+)"', page))

    mine = {str(world.project.id), str(world.paused_project.id)}
    assert listed("owner") == mine and listed("staff") == mine
    assert listed("other") == set()


def test_another_user_cannot_kill_the_owners_agent_from_the_dashboard(world):
    client = world.session("other")

    refused = client.post(world.path("/dashboard/agents/{agent}/kill"), REASON)

    assert refused.status_code == 404
    assert agent_get(agent_id=world.agent.id).state == AgentState.QUEUED
    assert not AuditEvent.objects.filter(action="agent.kill").exists()


# --- The same for WebSockets, in this process (channels' WebsocketCommunicator) ------------

OPEN = "open"
STREAMS = [
    ("/ws/dashboard/agents/", any_user(OPEN)),
    ("/ws/dashboard/agents/{agent}/", owned(OPEN)),
    ("/ws/dashboard/agents/{project_agent}/", owned(OPEN)),
    ("/ws/dashboard/agents/{peer_agent}/", {**owned(OPEN), "owner": 404}),
    ("/ws/dashboard/projects/", any_user(OPEN)),
    ("/ws/dashboard/projects/{project}/", owned(OPEN)),
    ("/ws/dashboard/hub/", any_user(OPEN)),
]
# How a stream that does not open says why, in the terms of the pages' matrix.
_REFUSALS = {CLOSE_UNAUTHENTICATED: LOGIN, CLOSE_NOT_FOUND: 404}


def _ws_headers(world: World, principal: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if principal != "anonymous":
        session = world.session(principal).cookies["sessionid"].value
        headers.append((b"cookie", f"sessionid={session}".encode()))
    return headers


async def _open(world: World, principal: str, path: str) -> tuple[WebsocketCommunicator, Any]:
    """A stream to ``path`` as ``principal``, and OPEN or what its refusal means."""
    headers = await sync_to_async(_ws_headers)(world, principal)
    socket = WebsocketCommunicator(application, world.path(path), headers=headers)
    connected, code = await socket.connect(timeout=10)
    return socket, OPEN if connected else _REFUSALS.get(code, code)


async def _events_until(socket: WebsocketCommunicator, last_id: int) -> list[dict]:
    """Every event the stream sends until its frames reach ``last_id``."""
    events: list[dict] = []
    while True:
        frame = await socket.receive_json_from(timeout=10)
        events += frame["events"]
        if frame["last_id"] >= last_id:
            return events


def websocket_routes() -> list[Any]:
    """The routes of the ASGI application's WebSocket router, under its middleware."""
    layer = application.application_mapping["websocket"]
    while not hasattr(layer, "routes"):
        layer = getattr(layer, "application", None) or layer.inner
    return list(layer.routes)


def test_the_streams_matrix_has_a_row_for_every_websocket_route():
    def route(path: str) -> str:
        (match,) = [
            str(entry.pattern)
            for entry in websocket_routes()
            if entry.pattern.match(example_path(path).lstrip("/"))
        ]
        return match

    assert {route(path) for path, _ in STREAMS} == {
        str(entry.pattern) for entry in websocket_routes()
    }


@pytest.mark.parametrize(("path", "expected"), STREAMS, ids=[path for path, _ in STREAMS])
def test_each_principal_may_open_exactly_these_streams(streamed_world, path, expected):
    world = streamed_world

    async def outcomes() -> dict[str, Any]:
        got = {}
        for principal in BROWSERS:
            socket, got[principal] = await _open(world, principal, path)
            if got[principal] == OPEN:
                await socket.disconnect()
        return got

    assert async_to_sync(outcomes)() == expected


def test_the_agents_stream_sends_a_user_only_their_own_agents_events(streamed_world):
    world = streamed_world
    theirs = agent_stored("user:other")
    owners = {str(agent.id) for agent in (world.agent, world.paused, world.project_agent)}

    def change_both() -> int:
        agent_event_append(agent_id=world.agent.id, kind="state", data={"to": "gating"})
        return agent_event_append(agent_id=theirs.id, kind="state", data={"to": "gating"}).id

    async def watch(principal: str) -> tuple[list[dict], list[dict]]:
        socket, outcome = await _open(world, principal, "/ws/dashboard/agents/?after=0")
        assert outcome == OPEN
        replayed = await _events_until(socket, await sync_to_async(agent_event_last_id)())
        live = await _events_until(socket, await sync_to_async(change_both)())
        await socket.disconnect()
        return replayed, live

    replayed, live = async_to_sync(watch)("other")

    assert {event["agent_id"] for event in replayed + live} == {str(theirs.id)}
    assert {"to": "gating"} in [event["data"] for event in live]
    replayed, live = async_to_sync(watch)("staff")
    assert owners | {str(world.peer_agent.id)} <= {event["agent_id"] for event in replayed}
    assert {str(world.agent.id), str(theirs.id)} <= {event["agent_id"] for event in live}


def test_the_projects_stream_shows_a_user_only_their_own_projects(streamed_world):
    world = streamed_world

    async def snapshot(principal: str) -> set[str]:
        socket, outcome = await _open(world, principal, "/ws/dashboard/projects/")
        assert outcome == OPEN
        frame = await socket.receive_json_from(timeout=10)
        await socket.disconnect()
        return set(frame["sections"]["projects"])

    mine = {str(world.project.id), str(world.paused_project.id)}
    assert async_to_sync(snapshot)("owner") == mine
    assert async_to_sync(snapshot)("staff") == mine
    assert async_to_sync(snapshot)("other") == set()
