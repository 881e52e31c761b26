"""The event stream for API clients: Server-Sent Events from a real daphne process.

The agents' events are written here through the lifecycle and event services,
as a worker writes them; a real HTTP client reads the stream from a separate
daphne process, so every event crosses the database and the web process's
relay as in production.
"""

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from agents.lifecycle import agent_transition
from agents.models import Agent, AgentEvent, AgentState
from agents.services import agent_event_append
from tests.dashboard.conftest import WebProcess
from tests.launcher import free_port

HEARTBEAT_S = "0.2"
# A safety net for a broken stream, not a measurement: nothing asserts on time.
GIVE_UP_S = 30.0


@pytest.fixture(scope="module")
def web(django_db_setup) -> Iterator[WebProcess]:
    """A daphne process that sends heartbeats often, so an idle stream shows one quickly."""
    previous = os.environ.get("FLOTILLA_EVENT_STREAM_HEARTBEAT_S")
    os.environ["FLOTILLA_EVENT_STREAM_HEARTBEAT_S"] = HEARTBEAT_S
    server = WebProcess(free_port())
    try:
        server.start()
    finally:
        if previous is None:
            os.environ.pop("FLOTILLA_EVENT_STREAM_HEARTBEAT_S")
        else:
            os.environ["FLOTILLA_EVENT_STREAM_HEARTBEAT_S"] = previous
    yield server
    server.stop()


@pytest.fixture
def tokens(transactional_db) -> dict[str, str]:
    User = get_user_model()
    users = {
        "owner": User.objects.create_user("owner"),
        "other": User.objects.create_user("other"),
        "staff": User.objects.create_user("staff", is_staff=True),
    }
    return {name: Token.objects.create(user=user).key for name, user in users.items()}


def owned_agent(owner: str = "owner") -> Agent:
    """A queued agent of ``owner`` that no worker picks up: its events come from the test."""
    agent = Agent.objects.create(
        task_id="stream",
        agent_type="worker",
        runtime="script",
        script="true",
        repository="https://git.example/owner/app.git",
        base_branch="main",
        work_branch="flotilla/stream",
        sandbox_backend="process",
        timeout_s=60,
        requested_by=f"user:{owner}",
        # A pool no worker node serves: the row is the queue, and nobody claims it.
        pool="unserved",
    )
    agent_event_append(agent_id=agent.id, kind="state", data={"from": None, "to": "queued"})
    return agent


def run_to(agent: Agent, *states: AgentState) -> None:
    for state in states:
        assert agent_transition(agent_id=agent.id, to=state)


def output(agent: Agent, *lines: str) -> None:
    for line in lines:
        agent_event_append(agent_id=agent.id, kind="output", data={"lines": [line]})


def stored(agent: Agent, after: int = 0) -> list[tuple[int, str, dict]]:
    events = AgentEvent.objects.filter(agent=agent, id__gt=after).order_by("id")
    return [(event.id, event.kind, event.data) for event in events]


class Stream:
    """An SSE client: messages as dicts of their fields, comments under ``comment``."""

    def __init__(self, web: WebProcess, agent_id, token: str | None, **headers: str) -> None:
        if token:
            headers["Authorization"] = f"Token {token}"
        path = headers.pop("path", f"/api/v1/agents/{agent_id}/events/stream")
        self.response = requests.get(
            f"{web.url}{path}", headers=headers, stream=True, timeout=(5, GIVE_UP_S)
        )
        self._chunks = self.response.iter_content(chunk_size=None)
        self._buffer = b""

    def message(self) -> dict | None:
        """The next message, or None when the server ended the stream."""
        while b"\n\n" not in self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                assert not self._buffer.strip(), self._buffer
                return None
            self._buffer += chunk
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        fields: dict = {}
        for line in block.decode().split("\n"):
            name, _, value = line.partition(":")
            fields["comment" if name == "" else name] = value.removeprefix(" ")
        return fields

    def event(self) -> tuple[int, str, dict] | None:
        """The next event (comments and the retry hint skipped), or None at the end."""
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            message = self.message()
            if message is None:
                return None
            if "data" in message:
                assert message["id"] == str(json.loads(message["data"])["id"])
                payload = json.loads(message["data"])
                assert message["event"] == payload["kind"]
                return payload["id"], payload["kind"], payload["data"]
        raise AssertionError("no event came")

    def events(self, count: int | None = None) -> list[tuple[int, str, dict]]:
        received = []
        while count is None or len(received) < count:
            event = self.event()
            if event is None:
                break
            received.append(event)
        return received

    def close(self) -> None:
        self.response.close()


def test_a_coordinator_receives_each_event_in_order_until_the_final_state(web, tokens):
    agent = owned_agent()
    stream = Stream(web, agent.id, tokens["owner"])
    assert stream.response.status_code == 200
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    assert stream.message() == {"retry": "1000"}
    assert stream.events(1) == stored(agent)

    run_to(agent, AgentState.SPAWNING, AgentState.RUNNING)
    output(agent, "one", "two", "three")
    run_to(agent, AgentState.GATING, AgentState.PUSHING, AgentState.COMPLETED)
    live = stream.events()

    assert [event[0] for event in live] == sorted(event[0] for event in live)
    assert live == stored(agent)[1:]
    assert live[-1][1:] == ("state", {"from": "pushing", "to": "completed"})
    assert stream.message() is None


def test_a_client_that_reconnects_with_last_event_id_gets_exactly_the_rest(web, tokens):
    agent = owned_agent()
    run_to(agent, AgentState.SPAWNING, AgentState.RUNNING)
    first = Stream(web, agent.id, tokens["owner"])
    seen = first.events(2)
    first.close()
    output(agent, "written while the client was away", "and another line")

    again = Stream(web, agent.id, tokens["owner"], **{"Last-Event-ID": str(seen[-1][0])})
    replayed = again.events(len(stored(agent, after=seen[-1][0])))
    run_to(agent, AgentState.FAILED)
    rest = again.events()

    assert seen + replayed + rest == stored(agent)
    assert again.message() is None


def test_last_event_id_wins_over_after_as_an_event_source_reconnect_sends_both(web, tokens):
    agent = owned_agent()
    output(agent, "a", "b", "c")
    run_to(agent, AgentState.KILLED)
    events = stored(agent)

    by_query = Stream(
        web,
        agent.id,
        tokens["owner"],
        path=f"/api/v1/agents/{agent.id}/events/stream?after={events[1][0]}",
    )
    by_header = Stream(
        web,
        agent.id,
        tokens["owner"],
        path=f"/api/v1/agents/{agent.id}/events/stream?after=0",
        **{"Last-Event-ID": str(events[2][0])},
    )

    assert by_query.events() == events[2:]
    assert by_header.events() == events[3:]


def test_an_ended_agent_is_replayed_to_its_final_state_and_then_answered_204(web, tokens):
    agent = owned_agent()
    run_to(agent, AgentState.SPAWNING, AgentState.FAILED)
    final_id = stored(agent)[-1][0]

    assert Stream(web, agent.id, tokens["owner"]).events() == stored(agent)
    done = Stream(web, agent.id, tokens["owner"], **{"Last-Event-ID": str(final_id)})
    assert done.response.status_code == 204


def test_another_user_gets_404_and_staff_may_follow_any_agent(web, tokens):
    agent = owned_agent()
    run_to(agent, AgentState.KILLED)

    other = Stream(web, agent.id, tokens["other"])
    staff = Stream(web, agent.id, tokens["staff"])

    assert other.response.status_code == 404
    assert other.response.json()["error"]["code"] == "not_found"
    assert staff.response.status_code == 200 and staff.events() == stored(agent)


@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_a_client_without_a_valid_token_gets_401_as_json(web, tokens, token):
    agent = owned_agent()

    response = Stream(web, agent.id, token).response

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Token"
    assert set(response.json()["error"]) == {"code", "message"}


@pytest.mark.parametrize("value", ["-1", "abc", "1" * 40, "99999999999"])
def test_a_malformed_or_future_last_event_id_gets_400(web, tokens, value):
    agent = owned_agent()

    response = Stream(web, agent.id, tokens["owner"], **{"Last-Event-ID": value}).response

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_an_unknown_agent_gets_404(web, tokens):
    response = Stream(web, "not-an-agent", tokens["owner"]).response

    assert response.status_code == 404


def test_an_idle_stream_sends_heartbeat_comments(web, tokens):
    agent = owned_agent()
    stream = Stream(web, agent.id, tokens["owner"])
    stream.events(1)

    assert stream.message() == {"comment": "keep-alive"}
    stream.close()


def test_open_streams_hold_no_thread_each(web, tokens):
    agent = owned_agent()
    warm = Stream(web, agent.id, tokens["owner"])
    warm.events(1)
    before = threads_of(web)

    streams = [Stream(web, agent.id, tokens["owner"]) for _ in range(20)]
    for stream in streams:
        stream.events(1)
    during = threads_of(web)

    assert during - before < 5, (before, during)
    for stream in [warm, *streams]:
        stream.close()


def threads_of(web: WebProcess) -> int:
    return len(list(Path(f"/proc/{web.process.pid}/task").iterdir()))
