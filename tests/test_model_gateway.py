"""The model gateway holds the keys and the budget: real SDKs, real sockets, real local servers.

Each agent's gateway listens on a Unix socket; the clients here reach it the
way a sandbox's CLI does (HTTP over that socket, with the agent's token as
its API key), and it forwards to a local server speaking the Messages API or
the Responses API with the hub's real key.
"""

import json
import logging
import socket
import uuid
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx2
import pytest
from django.conf import settings as django_settings

from agents.gateway.service import (
    gateway_budget_exhausted,
    gateway_close,
    gateway_open,
    gateway_socket_path,
)
from agents.runtimes.claude.accounting import Usage
from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxSpec
from tests import responses_server
from tests.launcher import wait_until
from tests.messages_server import MessagesServer, text_reply, tool_use_reply, usage
from tests.responses_server import ResponsesServer, function_call_reply

HUB_ANTHROPIC_KEY = "sk-ant-api03-hub-real-key-" + "a1b2c3d4" * 4
HUB_OPENAI_KEY = "sk-proj-hub-real-key-" + "e5f6a7b8" * 4
MODEL = "claude-sonnet-4-5"
OPENAI_MODEL = "gpt-5"
PROMPT = [{"role": "user", "content": "fix the failing test"}]


class Gateway:
    """One agent's open gateway, as a runtime would hold it."""

    def __init__(self, provider: str, **account) -> None:
        self.agent_id = str(uuid.uuid4())
        self.provider = provider
        self.socket_path = gateway_socket_path(agent_id=self.agent_id)
        self.usages: list[dict] = []
        self.open(**account)

    def open(self, *, budget_usd: Decimal | None = None, spent_usd: Decimal = Decimal(0)) -> str:
        self.token = gateway_open(
            agent_id=self.agent_id,
            provider=self.provider,
            socket_path=self.socket_path,
            budget_usd=budget_usd,
            spent_usd=spent_usd,
            on_usage=self.usages.append,
        )
        return self.token

    def close(self) -> None:
        gateway_close(agent_id=self.agent_id)

    def reported(self, count: int) -> list[dict]:
        """The usages reported, once ``count`` have been (they arrive on a thread of their own)."""
        wait_until(lambda: len(self.usages) >= count, what="len(self.usages) >= count")
        return self.usages

    def http(self) -> httpx2.Client:
        transport = httpx2.HTTPTransport(uds=str(self.socket_path))
        return httpx2.Client(transport=transport, base_url="http://gateway", timeout=30)

    def anthropic(self, token: str | None = None) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key=token or self.token,
            base_url="http://gateway",
            http_client=self.http(),
            max_retries=0,
        )


@pytest.fixture
def messages_upstream(settings):
    with MessagesServer() as server:
        settings.ANTHROPIC_BASE_URL = server.url
        settings.ANTHROPIC_API_KEY = HUB_ANTHROPIC_KEY
        yield server


@pytest.fixture
def responses_upstream(settings):
    with ResponsesServer() as server:
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_API_KEY = HUB_OPENAI_KEY
        yield server


@pytest.fixture
def open_gateway():
    opened: list[Gateway] = []

    def open_one(provider: str = "anthropic", **account) -> Gateway:
        gateway = Gateway(provider, **account)
        opened.append(gateway)
        return gateway

    yield open_one
    for gateway in opened:
        gateway.close()


def sent_header_values(server) -> list[str]:
    return [value for request in server.requests for value in request["headers"].values()]


def cost(reported: dict, model: str, prices: dict) -> str:
    return str(Usage(**reported).cost_usd(model, prices))


# --- Anthropic: the key, streaming, usage -------------------------------------


def test_a_streamed_call_reaches_the_model_with_the_hubs_key_and_reports_the_streamed_usage(
    messages_upstream, open_gateway
):
    gateway = open_gateway()
    messages_upstream.script(
        tool_use_reply(
            [("Bash", {"command": "pytest -q"})],
            text="Running the tests.",
            usage_data=usage(1200, 87, 300, 4000),
        )
    )

    with gateway.anthropic().messages.stream(
        model=MODEL, max_tokens=1024, messages=PROMPT
    ) as stream:
        message = stream.get_final_message()

    assert message.content[1].input == {"command": "pytest -q"}
    assert (message.usage.input_tokens, message.usage.output_tokens) == (1200, 87)
    (request,) = messages_upstream.requests
    assert request["headers"]["x-api-key"] == HUB_ANTHROPIC_KEY
    assert request["body"]["stream"] is True
    assert not any(gateway.token in value for value in sent_header_values(messages_upstream))
    reported = {
        "input_tokens": 1200,
        "output_tokens": 87,
        "cache_write_tokens": 300,
        "cache_read_tokens": 4000,
    }
    assert gateway.reported(1) == [
        {
            **reported,
            "cost_usd": cost(reported, MODEL, django_settings.FLOTILLA_CLAUDE_PRICES),
            "model": "claude-test",
        }
    ]


def test_a_plain_call_is_answered_and_counted_like_a_streamed_one(messages_upstream, open_gateway):
    gateway = open_gateway()
    messages_upstream.script(text_reply("All green.", usage_data=usage(50, 8)))

    message = gateway.anthropic().messages.create(model=MODEL, max_tokens=64, messages=PROMPT)

    assert message.content[0].text == "All green."
    assert messages_upstream.requests[0]["headers"]["x-api-key"] == HUB_ANTHROPIC_KEY
    assert [(use["input_tokens"], use["output_tokens"]) for use in gateway.reported(1)] == [(50, 8)]


def test_a_streamed_reply_passes_through_byte_for_byte(messages_upstream, open_gateway):
    gateway = open_gateway()
    reply = text_reply("The fix is in place; " * 20, usage_data=usage(30, 60))
    messages_upstream.script(reply, reply)
    body = {"model": MODEL, "max_tokens": 64, "messages": PROMPT, "stream": True}

    direct = httpx2.post(f"{messages_upstream.url}/v1/messages", json=body)
    through = gateway.http().post("/v1/messages", json=body, headers={"x-api-key": gateway.token})

    assert through.headers["content-type"].startswith("text/event-stream")
    assert through.content == direct.content
    assert through.content.count(b"event: content_block_delta") > 10


def test_a_wrong_token_is_refused_and_nothing_reaches_the_model(messages_upstream, open_gateway):
    gateway = open_gateway()

    with pytest.raises(anthropic.AuthenticationError) as refused:
        gateway.anthropic(token="sk-ant-guessed").messages.create(
            model=MODEL, max_tokens=64, messages=PROMPT
        )

    assert refused.value.status_code == 401
    assert messages_upstream.requests == []


def test_closing_the_gateway_cuts_an_open_stream_at_once(messages_upstream, open_gateway):
    gateway = open_gateway()
    # Long enough that the client could read for many seconds if the stream were not cut.
    messages_upstream.script(text_reply("word " * 400, event_delay_s=0.05))

    received = []
    stream = gateway.anthropic().messages.stream(model=MODEL, max_tokens=64, messages=PROMPT)
    with pytest.raises((anthropic.APIConnectionError, httpx2.HTTPError)), stream as events:
        for event in events:
            received.append(event.type)
            if event.type == "content_block_delta":
                gateway.close()

    assert "content_block_delta" in received and "message_stop" not in received
    # The server never finished sending, and the gateway hung up on it too.
    assert "replied_at" not in messages_upstream.requests[0]
    wait_until(lambda: messages_upstream.disconnects, what="messages_upstream.disconnects")
    # What the provider counted before the cut is still the agent's.
    assert [use["input_tokens"] for use in gateway.reported(1)] == [10]


def test_a_closed_agents_token_is_refused_and_a_reopened_gateway_has_a_new_one(
    messages_upstream, open_gateway
):
    gateway = open_gateway()
    old_token = gateway.token
    gateway.close()

    with pytest.raises(anthropic.APIConnectionError):
        gateway.anthropic().messages.create(model=MODEL, max_tokens=64, messages=PROMPT)

    new_token = gateway.open()  # the agent resumed
    with pytest.raises(anthropic.AuthenticationError):
        gateway.anthropic(token=old_token).messages.create(
            model=MODEL, max_tokens=64, messages=PROMPT
        )
    messages_upstream.script(text_reply("resumed"))
    message = gateway.anthropic(token=new_token).messages.create(
        model=MODEL, max_tokens=64, messages=PROMPT
    )

    assert new_token != old_token
    assert message.content[0].text == "resumed"
    assert len(messages_upstream.requests) == 1


# --- Anthropic: budget, endpoints, prices --------------------------------------


def test_at_the_budget_the_next_call_is_refused_with_429_and_the_agent_is_marked(
    messages_upstream, open_gateway
):
    gateway = open_gateway(budget_usd=Decimal("0.001"))
    messages_upstream.default = text_reply("working", usage_data=usage(1000, 100))  # $0.0045
    client = gateway.anthropic()

    client.messages.create(model=MODEL, max_tokens=64, messages=PROMPT)
    assert not gateway_budget_exhausted(agent_id=gateway.agent_id)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model=MODEL, max_tokens=64, messages=PROMPT)

    assert "budget" in refused.value.body["error"]["message"]
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert len(messages_upstream.requests) == 1
    assert gateway_budget_exhausted(agent_id=gateway.agent_id)
    gateway.close()
    assert gateway_budget_exhausted(agent_id=gateway.agent_id)


def test_a_resumed_agent_with_a_larger_budget_continues_from_what_it_spent(
    messages_upstream, open_gateway
):
    gateway = open_gateway(budget_usd=Decimal("1"), spent_usd=Decimal("1"))
    with pytest.raises(anthropic.RateLimitError):
        gateway.anthropic().messages.create(model=MODEL, max_tokens=64, messages=PROMPT)

    gateway.open(budget_usd=Decimal("2"), spent_usd=Decimal("1"))
    messages_upstream.script(text_reply("continuing"))
    message = gateway.anthropic().messages.create(model=MODEL, max_tokens=64, messages=PROMPT)

    assert message.content[0].text == "continuing"
    assert not gateway_budget_exhausted(agent_id=gateway.agent_id)


def test_only_the_model_endpoints_are_forwarded(messages_upstream, open_gateway):
    gateway = open_gateway()
    client = gateway.http()
    auth = {"x-api-key": gateway.token}

    answers = [
        client.get("/v1/models", headers=auth),
        client.post("/v1/complete", headers=auth, json={"model": MODEL}),
        client.post("/v1/messages/batches", headers=auth, json={"requests": []}),
        client.get("/v1/messages", headers=auth),
        client.post("/../etc/passwd", headers=auth, json={}),
    ]
    counted = gateway.anthropic().messages.count_tokens(model=MODEL, messages=PROMPT)

    assert [answer.status_code for answer in answers] == [404] * 5
    assert answers[0].json()["error"]["type"] == "not_found_error"
    assert counted.input_tokens == 10
    assert [request["path"] for request in messages_upstream.requests] == [
        "/v1/messages/count_tokens"
    ]
    gateway.close()  # every usage has been delivered once this returns
    assert gateway.usages == []


def test_a_model_without_a_price_is_refused_so_a_budget_can_always_be_kept(
    messages_upstream, open_gateway
):
    gateway = open_gateway()

    with pytest.raises(anthropic.BadRequestError) as refused:
        gateway.anthropic().messages.create(
            model="claude-unreleased-9", max_tokens=64, messages=PROMPT
        )

    assert "no price" in refused.value.body["error"]["message"]
    assert messages_upstream.requests == []


def test_a_request_body_over_the_limit_is_refused(messages_upstream, open_gateway, settings):
    settings.FLOTILLA_GATEWAY_MAX_REQUEST_BYTES = 65536
    gateway = open_gateway()
    huge = [{"role": "user", "content": "x" * 70000}]

    with pytest.raises(anthropic.APIStatusError) as refused:
        gateway.anthropic().messages.create(model=MODEL, max_tokens=64, messages=huge)

    assert refused.value.status_code == 413
    assert messages_upstream.requests == []


def test_an_unreachable_provider_is_a_502_and_the_key_appears_in_no_log_or_reply(
    messages_upstream, open_gateway, settings, caplog
):
    caplog.set_level(logging.DEBUG)
    gateway = open_gateway()
    messages_upstream.script(text_reply("reached"))
    client = gateway.anthropic()
    client.messages.create(model=MODEL, max_tokens=64, messages=PROMPT)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    settings.ANTHROPIC_BASE_URL = f"http://127.0.0.1:{closed.getsockname()[1]}"

    with closed, pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.create(model=MODEL, max_tokens=64, messages=PROMPT)

    assert refused.value.status_code == 502
    assert HUB_ANTHROPIC_KEY not in refused.value.response.text
    assert HUB_ANTHROPIC_KEY not in caplog.text


def raw_exchange(gateway: Gateway, *sends: bytes) -> list[bytes]:
    """What the gateway answers after each of ``sends``, on one raw connection."""
    answers = []
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(30)
        connection.connect(str(gateway.socket_path))
        for data in sends:
            connection.sendall(data)
            answers.append(connection.recv(65536))
    return answers


def test_a_client_waiting_for_100_continue_is_told_to_send_its_body(
    messages_upstream, open_gateway
):
    gateway = open_gateway()
    messages_upstream.script(text_reply("got it"))
    body = json.dumps({"model": MODEL, "max_tokens": 64, "messages": PROMPT}).encode()
    head = (
        "POST /v1/messages HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        f"x-api-key: {gateway.token}\r\ncontent-length: {len(body)}\r\n"
        "expect: 100-continue\r\nconnection: close\r\n\r\n"
    ).encode()

    go_on, answer = raw_exchange(gateway, head, body)

    assert go_on.startswith(b"HTTP/1.1 100 ")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert "expect" not in {name.lower() for name in messages_upstream.requests[0]["headers"]}


def test_a_request_head_that_does_not_arrive_in_time_is_refused(
    messages_upstream, open_gateway, settings
):
    settings.FLOTILLA_GATEWAY_HEAD_TIMEOUT_S = 0.2
    gateway = open_gateway()

    (answer,) = raw_exchange(gateway, b"POST /v1/messages HTTP/1.1\r\nhost: gat")

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert messages_upstream.requests == []


# --- OpenAI Responses API --------------------------------------------------------


def responses_call(
    gateway: Gateway, *, stream: bool, token: str | None = None, path: str = "/v1/responses"
):
    body = {"model": OPENAI_MODEL, "input": "fix the failing test", "stream": stream}
    headers = {"authorization": f"Bearer {token or gateway.token}"}
    return gateway.http().post(path, json=body, headers=headers)


def server_sent_events(raw: bytes) -> list[dict]:
    return [
        json.loads(line.removeprefix(b"data: "))
        for line in raw.splitlines()
        if line.startswith(b"data: ")
    ]


def test_a_streamed_responses_call_uses_the_hubs_key_and_counts_cached_tokens_apart(
    responses_upstream, open_gateway
):
    gateway = open_gateway("openai")
    responses_upstream.script(
        function_call_reply(
            [("shell", {"command": ["pytest", "-q"]})],
            text="Running the tests.",
            usage_data=responses_server.usage(1500, 90, cached_tokens=1000),
        )
    )

    answer = responses_call(gateway, stream=True)

    events = server_sent_events(answer.content)
    kinds = [event["type"] for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert {
        "response.output_item.added",
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.output_item.done",
    } <= set(kinds)
    (request,) = responses_upstream.requests
    assert request["path"] == "/v1/responses"
    assert request["headers"]["authorization"] == f"Bearer {HUB_OPENAI_KEY}"
    assert not any(gateway.token in value for value in sent_header_values(responses_upstream))
    reported = {
        "input_tokens": 500,
        "output_tokens": 90,
        "cache_read_tokens": 1000,
        "cache_write_tokens": 0,
    }
    assert gateway.reported(1) == [
        {
            **reported,
            "cost_usd": cost(reported, OPENAI_MODEL, django_settings.FLOTILLA_OPENAI_PRICES),
            "model": OPENAI_MODEL,
        }
    ]


def test_a_plain_responses_call_is_answered_and_counted(responses_upstream, open_gateway):
    gateway = open_gateway("openai")
    responses_upstream.script(
        responses_server.text_reply("All green.", usage_data=responses_server.usage(40, 6))
    )

    answer = responses_call(gateway, stream=False)

    assert answer.json()["output"][0]["content"][0]["text"] == "All green."
    assert [(use["input_tokens"], use["output_tokens"]) for use in gateway.reported(1)] == [(40, 6)]


def test_the_openai_gateway_refuses_as_openai_would(responses_upstream, open_gateway):
    gateway = open_gateway("openai", budget_usd=Decimal("0.0001"))
    responses_upstream.default = responses_server.text_reply(
        "ok", usage_data=responses_server.usage(1000, 100)
    )

    wrong_token = responses_call(gateway, stream=True, token="sk-proj-guessed")
    other_path = responses_call(gateway, stream=False, path="/v1/chat/completions")
    first = responses_call(gateway, stream=True)
    over_budget = responses_call(gateway, stream=True)

    assert wrong_token.status_code == 401
    assert wrong_token.json()["error"]["code"] == "invalid_api_key"
    assert other_path.status_code == 404
    assert first.status_code == 200
    assert over_budget.status_code == 429
    assert over_budget.json()["error"]["code"] == "insufficient_quota"
    assert "budget" in over_budget.json()["error"]["message"]
    assert len(responses_upstream.requests) == 1
    assert gateway_budget_exhausted(agent_id=gateway.agent_id)


# --- Inside a sandbox --------------------------------------------------------------


def test_a_sandbox_with_network_off_reaches_its_model_through_the_gateway_and_nothing_else(
    messages_upstream, open_gateway
):
    gateway = open_gateway()
    messages_upstream.script(text_reply("hello, curl"), text_reply("hello, python"))
    workspace = Path(django_settings.DATA_DIR) / "sandbox-tests" / uuid.uuid4().hex
    workspace.mkdir(parents=True)
    body = json.dumps({"model": MODEL, "max_tokens": 64, "messages": PROMPT})
    (workspace / "body.json").write_text(body)
    (workspace / "ask.py").write_text(ASK_IN_PYTHON)
    upstream_port = int(messages_upstream.url.rsplit(":", 1)[1])
    script = (
        'curl -sS -H "x-api-key: $ANTHROPIC_API_KEY" -H "content-type: application/json" '
        "--data-binary @body.json http://127.0.0.1:3129/v1/messages; echo; "
        f"python3 ask.py http://127.0.0.1:3129/v1/messages 127.0.0.1:{upstream_port} "
        "127.0.0.1:3128; exit 0"
    )
    backend = sandbox_backend("bwrap")
    handle = backend.start(
        SandboxSpec(
            agent_id=gateway.agent_id,
            workspace=workspace,
            network="off",
            env={"ANTHROPIC_API_KEY": gateway.token},
            model_socket=str(gateway.socket_path),
        )
    )
    try:
        result = backend.exec(handle, script, timeout_s=60)
    finally:
        backend.kill(handle)
        backend.remove(handle)

    lines = result.output_tail.splitlines()
    assert json.loads(lines[0])["content"][0]["text"] == "hello, curl", result.output_tail
    assert lines[1:] == [
        "GATEWAY hello, python",
        f"127.0.0.1:{upstream_port} unreachable",
        "127.0.0.1:3128 unreachable",
    ]
    sent_keys = [request["headers"]["x-api-key"] for request in messages_upstream.requests]
    assert sent_keys == [HUB_ANTHROPIC_KEY, HUB_ANTHROPIC_KEY]


# Asks the gateway for a reply, then tries to connect to each other address.
ASK_IN_PYTHON = """
import json, os, socket, sys, urllib.request

request = urllib.request.Request(
    sys.argv[1],
    data=open("body.json", "rb").read(),
    headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"},
)
print("GATEWAY", json.load(urllib.request.urlopen(request))["content"][0]["text"])
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), 5).close()
        print(target, "REACHED")
    except OSError:
        print(target, "unreachable")
"""
