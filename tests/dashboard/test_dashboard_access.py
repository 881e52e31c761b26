"""Who may see and do what on the dashboard, over HTTP and over WebSockets."""

import json

import pytest
from django.test import Client
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from agents.models import AgentState
from agents.selectors import agent_get
from agents.services import SpawnRequest, agent_event_append, agent_spawn
from audit.models import AuditEvent
from killswitch.selectors import hub_halt_get


def _agent(remote_repo, requested_by="user:operator"):
    request = SpawnRequest(
        task_id="task-1",
        agent_type="worker",
        runtime="script",
        repository=str(remote_repo),
        base_branch="main",
        script="true",
    )
    return agent_spawn(request=request, requested_by=requested_by)


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
