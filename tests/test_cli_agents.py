"""CLI agents end to end: API → django-q2 worker → the real Claude Code and Codex CLIs (npm) in a
bwrap sandbox → the hub's model gateway → streaming Messages / Responses API servers on loopback.

The scripted models call the CLIs' own tools with the input schemas the CLIs send in their
first request (Claude Code: Read, Edit, Bash; Codex: exec_command, apply_patch).
"""

import json
import re
import time
import uuid
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client, override_settings

from agents.gateway.service import gateway_socket_path
from agents.models import Agent, AgentEvent, AgentState
from agents.runtimes.cli import cli_packages
from agents.runtimes.cli.home import cli_home_path
from agents.runtimes.cli.install import clis_install
from agents.sandboxes.bwrap import BwrapSandbox
from orchestrator_site.asgi import application
from tests.conftest import (
    HUB_ANTHROPIC_KEY,
    HUB_OPENAI_KEY,
    events_of,
    git,
    make_remote,
    spawn_body,
    spawn_model_agent,
    transcript,
    wait_for_state,
    wait_until,
)
from tests.launcher import Processes
from tests.messages_server import conversation, text_reply, tool_use_reply, usage
from tests.owners import stream_connections_close
from tests.responses_server import (
    conversation as responses_conversation,
)
from tests.responses_server import (
    function_call_reply,
    response_reply,
)
from tests.responses_server import (
    text_reply as responses_text_reply,
)
from tests.responses_server import (
    usage as responses_usage,
)

# A project whose test fails on the base branch: add() subtracts.
BROKEN = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
    ".flotilla.toml": '[gates]\nlint = "ruff check ."\ntests = "python -m pytest -q"\n',
}
FIXED = "def add(a, b):\n    return a + b\n"
SUMMARY = "Fixed add(): it subtracted."
# The key's middle, written so that no command line holding it matches it.
KEY_FRAGMENT = "flotilla-hub" + "-test-key"
KEY_FRAGMENT_IN_SHELL = "flotilla-hub''-test-key"


@pytest.fixture(scope="module")
def agent_clis():
    """The pinned CLIs, installed with npm (instant when `manage.py agent_clis` ran)."""
    return clis_install(packages=cli_packages()).path


@pytest.fixture
def codex_server(hub, hub_responses_server):
    """The hub's Responses API server, emptied for this test; codex agents spawned now use it."""
    hub_responses_server.reset()
    yield hub_responses_server
    hub_responses_server.reset()


def spawn_cli(api, remote, runtime: str, **options) -> str:
    return spawn_model_agent(
        api,
        remote,
        runtime,
        task_id=options.pop("task_id", "fix-add"),
        work_item="test_calc.py::test_add fails",
        **options,
    )


def tool_calls(api, agent_id: str) -> list[tuple[str, dict]]:
    return [(e["tool"], e["input"]) for e in transcript(api, agent_id) if e["role"] == "tool_call"]


def states(api, agent_id: str) -> list[str]:
    return [e["data"]["to"] for e in events_of(api, agent_id) if e["kind"] == "state"]


def bodies(server) -> list[dict]:
    return [request["body"] for request in server.requests]


def header(request: dict, name: str) -> str | None:
    """A header of a recorded request, whatever the case the client wrote its name in."""
    found = [value for key, value in request["headers"].items() if key.lower() == name]
    return found[0] if found else None


def last_user_text(body: dict) -> str:
    """The text of the last user message of a Messages API request."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(
        block.get("text", "") if block.get("type") == "text" else str(block.get("content"))
        for block in content
    )


def by_tool_results(*steps):
    """A Messages API reply for the step a conversation has reached: how many tool results it
    holds. Unlike counting assistant turns, this ignores the note Claude Code adds to a session
    whose CLI was stopped mid-call (the budget pause)."""

    def reply(body: dict):
        done = sum(
            1
            for message in body.get("messages", [])
            if message.get("role") == "user" and isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
        )
        return steps[min(done, len(steps) - 1)]

    return reply


def assert_key_appears_nowhere(api, agent_id: str, key: str) -> None:
    agent_row = json.dumps(list(Agent.objects.filter(id=agent_id).values()), default=str)
    every_event = json.dumps(list(AgentEvent.objects.values("kind", "data")), default=str)
    api_views = api.get(f"/api/v1/agents/{agent_id}").content.decode() + json.dumps(
        events_of(api, agent_id)
    )
    worker_log = (Path(settings.DATA_DIR) / "worker.log").read_text(errors="replace")
    for text in (agent_row, every_event, api_views, worker_log):
        assert key not in text


def dashboard_as_owner(user, agent_id: str) -> tuple[str, list[dict]]:
    """The agent's dashboard page as its owner gets it, and the events its log draws: what
    the page's event stream (its ``data-stream``) sends, from the first event on."""
    client = Client()
    client.force_login(user)
    response = client.get(f"/dashboard/agents/{agent_id}/")
    assert response.status_code == 200
    page = response.content.decode()
    match = re.search(r'<div [^>]*id="agent"[^>]* data-stream="([^"]+)"', page)
    assert match, "the agent page names no event stream"
    headers = [
        (b"origin", b"http://localhost"),
        (b"host", b"localhost"),
        (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
    ]
    last_id = AgentEvent.objects.filter(agent_id=agent_id).latest("id").id

    async def read() -> list[dict]:
        socket = WebsocketCommunicator(application, f"{match[1]}?after=0", headers=headers)
        connected, code = await socket.connect(timeout=10)
        assert connected, f"the page's stream refused the owner ({code})"
        events: list[dict] = []
        while True:
            frame = await socket.receive_json_from(timeout=10)
            events += frame["events"]
            if frame["last_id"] >= last_id:
                await socket.disconnect()
                return events

    try:
        return page, async_to_sync(read)()
    finally:
        stream_connections_close()


# --- claude-code ---------------------------------------------------------------


def claude_code_fixes_add(**final: object):
    """Claude Code's turns: read the file, edit it, run the tests with Bash, then say so."""
    return [
        tool_use_reply(
            [("Read", {"file_path": "/workspace/calc.py"})],
            text="Let me look.",
            usage_data=usage(input_tokens=1200, output_tokens=30),
        ),
        tool_use_reply(
            [
                (
                    "Edit",
                    {
                        "file_path": "/workspace/calc.py",
                        "old_string": "return a - b",
                        "new_string": "return a + b",
                    },
                )
            ],
            usage_data=usage(input_tokens=1300, output_tokens=40),
        ),
        tool_use_reply(
            [("Bash", {"command": "python -m pytest -q", "description": "Run the tests"})],
            usage_data=usage(input_tokens=1400, output_tokens=20),
        ),
        text_reply(SUMMARY, usage_data=usage(input_tokens=1500, output_tokens=10), **final),
    ]


def test_a_claude_code_agent_fixes_a_failing_test_and_the_hub_pushes_the_fix(
    claude_server, api, user, tmp_path, sandbox_toolchain, agent_clis
):
    remote = make_remote(tmp_path, BROKEN)
    claude_server.default = conversation(*claude_code_fixes_add())

    agent_id = spawn_cli(api, remote, "claude-code")
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=180)

    assert git(remote, "show", f"flotilla/{agent_id}:calc.py") == FIXED.strip()
    assert agent.result["pushed_commit"] == git(remote, "rev-parse", f"flotilla/{agent_id}")
    assert agent.result["summary"] == SUMMARY
    assert SUMMARY in git(remote, "log", "-1", "--format=%B", f"flotilla/{agent_id}")
    # The CLI called the tools it declared, with the schemas it declared them with.
    first = bodies(claude_server)[0]
    declared = {tool["name"]: tool["input_schema"] for tool in first["tools"]}
    assert {"file_path"} <= set(declared["Read"]["properties"])
    assert {"file_path", "old_string", "new_string"} <= set(declared["Edit"]["required"])
    assert "command" in declared["Bash"]["required"]
    assert first["model"] == settings.FLOTILLA_CLAUDE_MODEL
    assert "test_calc.py::test_add fails" in last_user_text(first)
    # Each tool call is a transcript event, and so is what it returned.
    assert [name for name, _ in tool_calls(api, agent_id)] == ["Read", "Edit", "Bash"]
    results = [e for e in transcript(api, agent_id) if e["role"] == "tool_result"]
    assert [e["tool"] for e in results] == ["Read", "Edit", "Bash"]
    assert "1 passed" in results[2]["output"]
    assert transcript(api, agent_id)[-1]["role"] in ("result", "model")
    # Usage is what the server reported, counted by the gateway from the streams.
    body = api.get(f"/api/v1/agents/{agent_id}").json()
    assert body["usage"]["input_tokens"] == 1200 + 1300 + 1400 + 1500
    assert body["usage"]["output_tokens"] == 30 + 40 + 20 + 10
    assert float(body["usage"]["cost_usd"]) > 0
    # The server got the hub's real key; the sandbox only ever had the agent's token.
    assert {header(request, "x-api-key") for request in claude_server.requests} == {
        HUB_ANTHROPIC_KEY
    }
    assert_key_appears_nowhere(api, agent_id, HUB_ANTHROPIC_KEY)
    assert states(api, agent_id)[-3:] == ["gating", "pushing", "completed"]
    assert not cli_home_path(agent_id=agent_id).exists()
    # The dashboard shows it as it shows a claude agent: the usage panel, a chart of the
    # tokens of each model call, and in the page's log each tool call and its result.
    page, streamed = dashboard_as_owner(user, agent_id)
    assert 'data-usage="input_tokens">5400<' in page
    assert 'data-usage="output_tokens">100<' in page
    assert 'data-usage-turns="4"' in page and "No model usage" not in page
    tokens_chart = page[page.index('data-chart="usage-tokens"') :].split("</figure>")[0]
    for tokens_in, tokens_out in ((1200, 30), (1300, 40), (1400, 20), (1500, 10)):
        assert f"{tokens_in:,} in, {tokens_out:,} out" in tokens_chart
    drawn = [event["data"] for event in streamed if event["kind"] == "transcript"]
    calls = [data["text"] for data in drawn if data["role"] == "tool_call"]
    assert [text.split(":")[0] for text in calls] == ["Read", "Edit", "Bash"]
    assert "/workspace/calc.py" in calls[0] and "python -m pytest -q" in calls[2]
    assert "1 passed" in [data for data in drawn if data["role"] == "tool_result"][2]["text"]


# What the scripted model runs to commit on its own, and to take the hub's git from it: each
# attempt prints its exit status.
COMMIT_ITSELF = "; ".join(
    [
        "git config core.hooksPath /workspace/hooks",
        'echo "config exit=$?"',
        "git add -A",
        'echo "add exit=$?"',
        "git -c user.name=Agent -c user.email=agent@example.com commit -qm 'agent commit'",
        'echo "commit exit=$?"',
        "echo 'gitdir: /workspace/mine' > .git",
        'echo "write exit=$?"',
        "rm -f .git",
        'echo "rm exit=$?"',
        "mv .git moved",
        'echo "mv exit=$?"',
        "cat .git",
    ]
)


def git_metadata(worktree: Path) -> dict[str, bytes]:
    """Every file of the agent's git metadata on the hub: the worktree's ``.git`` file, the
    directory it names, and the mirror's config, hooks and refs."""
    gitdir = Path((worktree / ".git").read_text().removeprefix("gitdir:").strip())
    mirror = gitdir.parent.parent
    files = [worktree / ".git", mirror / "config", *gitdir.rglob("*"), *mirror.glob("hooks/*")]
    files += [*(mirror / "refs").rglob("*"), mirror / "packed-refs"]
    found = {str(path): path.read_bytes() for path in files if path.is_file()}
    found["refs"] = git(mirror, "for-each-ref").encode()
    return found


def test_a_claude_code_agent_cannot_commit_and_the_hub_commits_and_pushes(
    claude_server, api, tmp_path, sandbox_toolchain, agent_clis
):
    remote = make_remote(tmp_path, BROKEN)
    seen: dict[str, dict[str, bytes]] = {}

    def look(when: str, reply):
        def step(body: dict):
            (worktree,) = Agent.objects.values_list("worktree_path", flat=True)
            seen[when] = git_metadata(Path(worktree))
            return reply

        return step

    turns = claude_code_fixes_add()
    claude_server.default = conversation(
        turns[0],
        turns[1],
        # Once the fix is made, before and after the model's git commands run.
        look(
            "before",
            tool_use_reply([("Bash", {"command": COMMIT_ITSELF, "description": "Commit"})]),
        ),
        look("after", turns[3]),
    )

    agent_id = spawn_cli(api, remote, "claude-code")
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=180)

    # Inside the sandbox every attempt failed: git finds no repository, .git cannot be changed.
    said = [e for e in transcript(api, agent_id) if e["role"] == "tool_result"][-1]["output"]
    exits = dict(re.findall(r"^(\w+) exit=(\d+)$", said, re.MULTILINE))
    assert set(exits) == {"config", "add", "commit", "write", "rm", "mv"}, said
    assert all(status != "0" for status in exits.values()), said
    assert "not a git repository" in said and "Read-only file system" in said
    gitdir = Path(said.splitlines()[-1].removeprefix("gitdir: "))  # .git names it still
    # On the hub nothing of the agent's git metadata changed while those commands ran.
    assert str(gitdir / "HEAD") in seen["before"] and str(gitdir / "index") in seen["before"]
    assert seen["after"] == seen["before"]
    assert "hooksPath = /workspace" not in (gitdir.parent.parent / "config").read_text()
    # The hub made the one commit on the branch, and pushed it.
    branch = f"flotilla/{agent_id}"
    assert git(remote, "rev-list", "--count", f"main..{branch}") == "1"
    assert git(remote, "log", "-1", "--format=%an", branch) == settings.FLOTILLA_GIT_AUTHOR_NAME
    assert SUMMARY in git(remote, "log", "-1", "--format=%B", branch)
    assert git(remote, "show", f"{branch}:calc.py") == FIXED.strip()
    assert agent.result["pushed_commit"] == git(remote, "rev-parse", branch)


# --- codex ---------------------------------------------------------------------

PATCH = (
    "*** Begin Patch\n*** Update File: calc.py\n@@\n-    return a - b\n+    return a + b\n"
    "*** End Patch\n"
)


def apply_patch_reply(patch: str, **options) -> object:
    """A response whose one output item is Codex's freeform apply_patch tool call."""
    item = {
        "type": "custom_tool_call",
        "id": f"ctc_{abs(hash(patch)) % 10**8}",
        "call_id": f"call_patch_{abs(hash(patch)) % 10**8}",
        "name": "apply_patch",
        "input": patch,
        "status": "completed",
    }
    return response_reply([item], **options)


def codex_fixes_add():
    """Codex's turns: look at the file, patch it, run the tests, then say so."""
    return [
        function_call_reply(
            [("exec_command", {"cmd": "cat calc.py"})],
            usage_data=responses_usage(input_tokens=2000, output_tokens=30, cached_tokens=500),
        ),
        apply_patch_reply(PATCH, usage_data=responses_usage(input_tokens=2100, output_tokens=60)),
        function_call_reply(
            [("exec_command", {"cmd": "python -m pytest -q"})],
            usage_data=responses_usage(input_tokens=2200, output_tokens=20),
        ),
        responses_text_reply(
            SUMMARY, usage_data=responses_usage(input_tokens=2300, output_tokens=10)
        ),
    ]


def test_a_codex_agent_fixes_a_failing_test_and_the_hub_pushes_the_fix(
    codex_server, api, tmp_path, sandbox_toolchain, agent_clis
):
    remote = make_remote(tmp_path, BROKEN)
    codex_server.default = responses_conversation(*codex_fixes_add())

    agent_id = spawn_cli(api, remote, "codex")
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=180)

    assert git(remote, "show", f"flotilla/{agent_id}:calc.py") == FIXED.strip()
    assert agent.result["pushed_commit"] == git(remote, "rev-parse", f"flotilla/{agent_id}")
    assert agent.result["summary"] == SUMMARY
    # The CLI called the tools it declared: exec_command (a function) and apply_patch (freeform).
    first = bodies(codex_server)[0]
    declared = {tool.get("name"): tool for tool in first["tools"]}
    assert "cmd" in declared["exec_command"]["parameters"]["required"]
    assert declared["apply_patch"]["type"] == "custom"
    assert first["model"] == settings.FLOTILLA_CODEX_MODEL
    assert "test_calc.py::test_add fails" in json.dumps(first["input"])
    calls = tool_calls(api, agent_id)
    assert [name for name, _ in calls] == ["exec_command", "apply_patch", "exec_command"]
    assert "cat calc.py" in calls[0][1]["command"]
    assert "python -m pytest -q" in calls[2][1]["command"]
    results = [e for e in transcript(api, agent_id) if e["role"] == "tool_result"]
    assert "return a - b" in results[0]["output"]
    assert "1 passed" in results[2]["output"] and results[2]["exit_code"] == 0
    # Usage as the server reported it; input tokens do not count cache reads twice.
    body = api.get(f"/api/v1/agents/{agent_id}").json()
    assert body["usage"]["input_tokens"] + body["usage"]["cache_read_input_tokens"] == (
        2000 + 2100 + 2200 + 2300
    )
    assert body["usage"]["cache_read_input_tokens"] == 500
    assert body["usage"]["output_tokens"] == 30 + 60 + 20 + 10
    assert {header(request, "authorization") for request in codex_server.requests} == {
        f"Bearer {HUB_OPENAI_KEY}"
    }
    assert_key_appears_nowhere(api, agent_id, HUB_OPENAI_KEY)
    assert states(api, agent_id)[-3:] == ["gating", "pushing", "completed"]


# --- the key, the token and the network --------------------------------------

_PROBE_PORTS = (
    "import socket, sys\n"
    "for port in map(int, sys.argv[1:]):\n"
    "    shut = socket.socket().connect_ex(('127.0.0.1', port))\n"
    "    print('port', port, 'refused' if shut else 'answers')\n"
)


def look_for_the_key(ports: list[int]) -> str:
    """What the scripted model runs in the sandbox: everything the CLI's processes can see
    (the environment, /proc/self/environ, every file of the CLI's home) searched for the key,
    the API key variables it holds, and which loopback ports answer."""
    return (
        '{ env; tr "\\0" "\\n" < /proc/self/environ; find "$HOME" -type f -exec cat {} + ; } '
        "> /tmp/seen 2>&1; "
        f'echo "key found: $(grep -c {KEY_FRAGMENT_IN_SHELL} /tmp/seen)"; '
        "grep -o 'API_KEY=[A-Za-z0-9_-]*' /tmp/seen | sort -u; "
        f'python3 -c "{_PROBE_PORTS}" {" ".join(map(str, ports))}'
    )


def test_the_key_never_enters_a_claude_code_sandbox_and_the_token_dies_with_the_agent(
    claude_server, api, tmp_path, sandbox_toolchain, agent_clis
):
    remote = make_remote(tmp_path, BROKEN)
    host_port = claude_server.server.server_address[1]
    look = look_for_the_key([host_port, 3128, 3129])
    claude_server.default = conversation(
        tool_use_reply([("Bash", {"command": look, "description": "Look around"})]),
        text_reply("Looked around."),
    )

    agent_id = spawn_cli(api, remote, "claude-code", gate_profile="minimal")
    wait_for_state(agent_id, AgentState.COMPLETED, timeout=180)

    seen = [e for e in transcript(api, agent_id) if e["role"] == "tool_result"][0]["output"]
    assert "key found: 0" in seen
    # The only key there is the agent's token (the command's own text, saved in the CLI's
    # session file, matches with nothing after the "=").
    tokens = {line.split("=", 1)[1] for line in seen.splitlines() if "API_KEY=" in line} - {""}
    assert len(tokens) == 1 and tokens.pop().startswith("flotilla-")
    # Network off: the model through the gateway (3129), and nothing else at all.
    assert f"port {host_port} refused" in seen
    assert "port 3128 refused" in seen and "port 3129 answers" in seen
    assert_key_appears_nowhere(api, agent_id, HUB_ANTHROPIC_KEY)
    assert {header(request, "x-api-key") for request in claude_server.requests} == {
        HUB_ANTHROPIC_KEY
    }
    # The agent has ended: its gateway, and so its token, are gone.
    assert not gateway_socket_path(agent_id=agent_id).exists()


def test_the_key_never_enters_a_codex_sandbox(
    codex_server, api, tmp_path, sandbox_toolchain, agent_clis
):
    remote = make_remote(tmp_path, BROKEN)
    host_port = codex_server.server.server_address[1]
    look = look_for_the_key([host_port, 3128, 3129])
    codex_server.default = responses_conversation(
        function_call_reply([("exec_command", {"cmd": look})]),
        responses_text_reply("Looked around."),
    )

    agent_id = spawn_cli(api, remote, "codex", gate_profile="minimal")
    wait_for_state(agent_id, AgentState.COMPLETED, timeout=180)

    seen = [e for e in transcript(api, agent_id) if e["role"] == "tool_result"][0]["output"]
    assert "key found: 0" in seen
    assert f"port {host_port} refused" in seen
    assert "port 3128 refused" in seen and "port 3129 answers" in seen
    assert_key_appears_nowhere(api, agent_id, HUB_OPENAI_KEY)
    assert not gateway_socket_path(agent_id=agent_id).exists()


# What the scripted model runs to forge transcript lines. The framer's output pipe is the
# hub's (root's, mode 0600) and closed to it, but the CLI's is the sandbox user's: it writes
# lines straight into that, and the framer passes them on as the CLI's own.
FORGE_TRANSCRIPT = """python3 - <<'EOF'
import json, os
def parent(pid):
    status = open(f'/proc/{pid}/status').read()
    return status.split('PPid:')[1].split()[0]
framer = next(
    pid for pid in os.listdir('/proc') if pid.isdigit()
    and b'flotilla-cli=' in open(f'/proc/{pid}/cmdline', 'rb').read()
    and open(f'/proc/{pid}/cmdline', 'rb').read().startswith(b'/usr/bin/python3')
)
cli = next(
    pid for pid in os.listdir('/proc') if pid.isdigit() and parent(pid) == framer
    and b'codex' in open(f'/proc/{pid}/cmdline', 'rb').read()
)
out = open(f'/proc/{cli}/fd/1', 'w')
out.write(json.dumps({'type': 'forged', 'pad': ['x' * 1000] * 100}) + '\\n')
for number in range(160):
    out.write(json.dumps({'type': 'forged', 'number': number, 'pad': ['y' * 1000] * 55}) + '\\n')
out.flush()
print('forged')
EOF"""


def test_what_the_agent_forges_into_the_transcript_stays_within_the_output_bound(
    codex_server, api, tmp_path, sandbox_toolchain, agent_clis
):
    remote = make_remote(tmp_path, BROKEN)
    codex_server.default = responses_conversation(
        function_call_reply([("exec_command", {"cmd": FORGE_TRANSCRIPT})]),
        responses_text_reply("Done."),
    )

    agent_id = spawn_cli(api, remote, "codex", gate_profile="minimal")
    wait_for_state(agent_id, AgentState.COMPLETED, timeout=180)

    events = AgentEvent.objects.filter(agent_id=agent_id)
    stored = [e.data for e in events if e.kind == "transcript"]
    forged = [data for data in stored if data["role"] == "event"]
    # One event too large on its own keeps only its summary.
    assert forged[0]["cut_from_bytes"] > 100_000 and "pad" not in forged[0]
    # The rest count against the bound: what was stored stays within it, and it is said.
    assert sum(len(json.dumps(data)) for data in stored) <= settings.FLOTILLA_MAX_OUTPUT_BYTES
    assert len(forged) < 161
    logs = [e.data["message"] for e in events if e.kind == "log"]
    assert any("the transcript reached" in message for message in logs)
    assert any(message.endswith("transcript events were not stored") for message in logs)


# --- the gate feedback loop ----------------------------------------------------

UNUSED_IMPORT = "import os\n\n\ndef add(a, b):\n    return a + b\n"


def test_a_gate_rejection_goes_back_to_the_same_claude_code_session_which_fixes_it(
    claude_server, api, tmp_path, sandbox_toolchain, agent_clis
):
    remote = make_remote(tmp_path, BROKEN)
    claude_server.default = conversation(
        # Round 1: the fix, with an unused import that the lint gate rejects.
        tool_use_reply([("Read", {"file_path": "/workspace/calc.py"})]),
        tool_use_reply([("Write", {"file_path": "/workspace/calc.py", "content": UNUSED_IMPORT})]),
        text_reply("Fixed add()."),
        # Round 2, in the same session: the gate report arrives as the next prompt.
        tool_use_reply([("Read", {"file_path": "/workspace/calc.py"})]),
        tool_use_reply(
            [
                (
                    "Edit",
                    {
                        "file_path": "/workspace/calc.py",
                        "old_string": "import os\n\n\ndef add",
                        "new_string": "def add",
                    },
                )
            ]
        ),
        text_reply(SUMMARY),
    )

    agent_id = spawn_cli(api, remote, "claude-code")
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=240)

    assert git(remote, "show", f"flotilla/{agent_id}:calc.py") == FIXED.strip()
    assert git(remote, "rev-list", "--count", f"main..flotilla/{agent_id}") == "1"
    # Round 2 began with the report, in the conversation of round 1 (a resumed session).
    round_two = bodies(claude_server)[3]
    assert [m["role"] for m in round_two["messages"]].count("assistant") == 3
    report = last_user_text(round_two)
    assert "pre-commit gates rejected" in report and "F401" in report
    sessions = {e["session_id"] for e in transcript(api, agent_id) if e["role"] == "system"}
    assert len(sessions) == 1 and agent.result["cli"]["session_id"] in sessions
    assert agent.result["cli"]["gate_rounds"] == 1
    assert agent.result["summary"] == SUMMARY
    assert states(api, agent_id)[2:] == [
        "running",
        "gating",
        "running",
        "gating",
        "pushing",
        "completed",
    ]


def test_a_merge_conflict_found_before_push_goes_back_to_the_session_to_resolve(
    claude_server, api, tmp_path, sandbox_toolchain, agent_clis
):
    remote = make_remote(tmp_path, BROKEN)
    theirs = "def add(a, b):\n    return b + a\n"

    def main_moves_on(body: dict):
        """While the agent reads, someone fixes add() on main their own way."""
        clone = tmp_path / "someone"
        if not clone.exists():
            git(tmp_path, "clone", "--quiet", str(remote), str(clone))
            (clone / "calc.py").write_text(theirs)
            git(clone, "commit", "--quiet", "-am", "Fix add() on main")
            git(clone, "push", "--quiet", "origin", "main")
        return tool_use_reply([("Read", {"file_path": "/workspace/calc.py"})])

    def edit(old: str, new: str):
        change = {"file_path": "/workspace/calc.py", "old_string": old, "new_string": new}
        return tool_use_reply([("Edit", change)])

    seen: list[str] = []

    def resolve(body: dict):
        """Round 2: the hub merged main into /workspace; the agent keeps main's version."""
        (worktree,) = Agent.objects.values_list("worktree_path", flat=True)
        seen.append((Path(worktree) / "calc.py").read_text())
        return tool_use_reply([("Write", {"file_path": "/workspace/calc.py", "content": theirs})])

    claude_server.default = conversation(
        main_moves_on,
        edit("return a - b", "return a + b"),
        text_reply("Fixed add()."),
        # Round 2: the report named calc.py; the worktree holds both versions between markers.
        tool_use_reply([("Read", {"file_path": "/workspace/calc.py"})]),
        resolve,
        text_reply(SUMMARY),
    )

    agent_id = spawn_cli(api, remote, "claude-code")
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=240)

    report = last_user_text(bodies(claude_server)[3])
    assert "conflicts in: calc.py" in report and "conflict markers" in report
    assert "<<<<<<< refs/heads/flotilla/" in seen[0] and "return b + a" in seen[0]
    assert git(remote, "show", f"flotilla/{agent_id}:calc.py") == theirs.strip()
    # The pushed branch holds main: it merges into main as a fast-forward.
    assert git(remote, "merge-base", "--is-ancestor", "main", f"flotilla/{agent_id}") == ""
    assert agent.result["cli"]["gate_rounds"] == 1


def test_after_gate_retries_rounds_a_codex_agent_fails_with_the_last_report(
    codex_server, api, tmp_path, sandbox_toolchain, agent_clis
):
    remote = make_remote(tmp_path, BROKEN)
    patch = (
        "*** Begin Patch\n*** Update File: calc.py\n@@\n+import os\n+\n+\n def add(a, b):\n"
        "-    return a - b\n+    return a + b\n*** End Patch\n"
    )
    codex_server.default = responses_conversation(
        apply_patch_reply(patch),
        responses_text_reply("Fixed add()."),
        # Round 2 (resumed): the model claims a fix it did not make.
        responses_text_reply("It is fine now."),
    )

    agent_id = spawn_cli(api, remote, "codex", gate_retries=1)
    agent = wait_for_state(agent_id, AgentState.FAILED, timeout=240)

    assert "pre-commit gates rejected" in agent.error and "F401" in agent.error
    assert agent.result["gates"]["approved"] is False
    assert agent.result["pushed_commit"] is None
    assert agent.result["cli"]["gate_rounds"] == 1
    # Two rounds, the second in the same Codex session with the report as its prompt.
    assert len(codex_server.requests) == 3
    assert "F401" in json.dumps(bodies(codex_server)[2]["input"][-1])
    sessions = {e["session_id"] for e in transcript(api, agent_id) if e["role"] == "system"}
    assert len(sessions) == 1
    assert git(remote, "branch", "--list", f"flotilla/{agent_id}") == ""


# --- budget and kill -------------------------------------------------------------


@pytest.fixture
def one_slot_node(hub, worker_env):
    """A worker node of its own, as the session's but with one agent slot, serving a pool of its
    own; its name, which is its pool's. Agents spawned in that pool run only on it."""
    name = f"one-slot-{uuid.uuid4().hex[:8]}"
    env = {
        **worker_env,
        "FLOTILLA_NODE_NAME": name,
        "FLOTILLA_NODE_POOL": name,
        "Q_CLUSTER_NAME": name,
        "FLOTILLA_NODE_CAPACITY": "1",
        "FLOTILLA_WORKERS": "1",
    }
    node = Processes(env=env, log_dir=Path(settings.DATA_DIR), prefix=f"{name}-")
    node.start_worker()
    yield name
    node.stop()


def state_event_id(agent_id: str, state: str) -> int:
    """The id of the event of the agent's first transition to ``state`` (ids only grow)."""
    return AgentEvent.objects.filter(agent_id=agent_id, kind="state", data__to=state).first().id


def test_a_spent_budget_pauses_a_claude_code_agent_and_resume_continues_its_session(
    claude_server, api, tmp_path, sandbox_toolchain, agent_clis, one_slot_node
):
    remote = make_remote(tmp_path, BROKEN)
    # 2000 input and 400 output tokens on Sonnet cost $0.012: over a $0.01 budget.
    turns = claude_code_fixes_add()
    turns[0] = tool_use_reply(
        [("Read", {"file_path": "/workspace/calc.py"})],
        usage_data=usage(input_tokens=2000, output_tokens=400),
    )
    claude_server.default = by_tool_results(*turns)

    other_remote = make_remote(tmp_path, name="other")
    # Both on a node with one slot: the second waits for the slot the first runs in.
    with override_settings(FLOTILLA_NODE_POOL=one_slot_node):
        agent_id = spawn_cli(api, remote, "claude-code", budget_usd="0.01")
        other = api.post(
            "/api/v1/agents",
            spawn_body(other_remote, "echo done > done.txt", gate_profile="minimal"),
            format="json",
        )
    assert other.status_code == 202, other.content
    other_id = other.json()["agent_id"]
    paused = wait_for_state(agent_id, AgentState.PAUSED, timeout=120)

    assert paused.error == "budget exhausted: spent $0.012000 of $0.01"
    assert paused.sandbox_handle == {}
    # The gateway refused the second call: it never reached the server.
    assert len(claude_server.requests) == 1
    assert paused.result["cli"]["session_id"]
    assert cli_home_path(agent_id=agent_id).is_dir()
    # The pause holds no worker slot: the node's one slot, freed by the pause, runs the other
    # agent to its end while this one stays paused.
    finished = wait_for_state(other_id, AgentState.COMPLETED, timeout=120)
    assert state_event_id(other_id, "spawning") > state_event_id(agent_id, "paused")
    assert finished.node == paused.node == one_slot_node
    assert git(other_remote, "show", f"flotilla/{other_id}:done.txt") == "done"
    assert Agent.objects.get(id=agent_id).state == AgentState.PAUSED

    resumed = api.post(f"/api/v1/agents/{agent_id}/resume", {"budget_usd": "1.00"}, format="json")
    assert resumed.status_code == 202, resumed.content
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=180)
    assert agent.node == one_slot_node

    # The resumed run continued the session: its first request holds the first turn.
    after = bodies(claude_server)[1]
    assert ("Read", "toolu") in [
        (block["name"], block["id"][:5])
        for message in after["messages"]
        if message["role"] == "assistant" and isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_use"
    ]
    assert "model budget ran out" in last_user_text(after)
    sessions = {e["session_id"] for e in transcript(api, agent_id) if e["role"] == "system"}
    assert sessions == {paused.result["cli"]["session_id"]}
    assert git(remote, "show", f"flotilla/{agent_id}:calc.py") == FIXED.strip()
    assert agent.error == "" and agent.result["summary"] == SUMMARY
    assert agent.input_tokens == 2000 + 1300 + 1400 + 1500


# A reply that would take a minute to stream, one event every half second.
SLOW = {
    "claude-code": ("claude_server", lambda: text_reply("slow " * 400, event_delay_s=0.5)),
    "codex": ("codex_server", lambda: responses_text_reply("slow " * 400, event_delay_s=0.5)),
}


@pytest.mark.parametrize("runtime", SLOW)
def test_killing_a_cli_agent_mid_stream_ends_the_cli_and_cuts_the_stream(
    runtime, request, hub, api, remote_repo, agent_clis
):
    server_fixture, slow_reply = SLOW[runtime]
    server = request.getfixturevalue(server_fixture)
    server.default = slow_reply()
    agent_id = spawn_cli(api, remote_repo, runtime)
    wait_until(lambda: server.requests, 60, "the CLI to ask the model", every=0.01)
    time.sleep(1.0)  # the reply is streaming

    killed_at = time.monotonic()
    response = api.post(f"/api/v1/agents/{agent_id}/kill", {"reason": "too slow"}, format="json")

    assert response.status_code == 200 and response.json()["state"] == "killed"
    wait_until(lambda: server.disconnects, 30, "the stream to be cut", every=0.005)
    print(f"kill → stream cut: {(server.disconnects[0][0] - killed_at) * 1000:.0f} ms")
    # The stream was cut, not finished: the server never completed the reply.
    assert "replied_at" not in server.requests[0]
    assert Agent.objects.get(id=agent_id).state == AgentState.KILLED
    # Nothing of the CLI runs on.
    assert agent_id not in BwrapSandbox().live_agent_ids()


# --- installation -----------------------------------------------------------------


def test_a_spawn_of_a_cli_runtime_whose_cli_is_not_installed_is_refused_naming_it(
    api, remote_repo, settings, tmp_path
):
    settings.FLOTILLA_AGENT_CLIS_DIR = tmp_path / "no-clis-here"

    response = api.post(
        "/api/v1/agents",
        {"task_id": "t", "runtime": "claude-code", "context": {"repository": str(remote_repo)}},
        format="json",
    )

    assert response.status_code == 400
    message = json.dumps(response.json())
    assert "Claude Code CLI" in message and "@anthropic-ai/claude-code@2.1.332" in message
    assert "manage.py agent_clis" in message
    assert Agent.objects.count() == 0


def test_a_codex_spawn_refuses_a_model_without_an_openai_price(api, remote_repo, agent_clis):
    body = {
        "task_id": "t",
        "runtime": "codex",
        "context": {"repository": str(remote_repo)},
        "options": {"model": "claude-sonnet-4-5"},
    }

    response = api.post("/api/v1/agents", body, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert "FLOTILLA_OPENAI_PRICES" in json.dumps(error["fields"]["options.model"])


def test_agent_clis_is_instant_when_the_pinned_clis_are_installed(agent_clis, capsys):
    from django.core.management import call_command

    call_command("agent_clis")

    said = capsys.readouterr().out
    assert "already installed" in said
    assert "@anthropic-ai/claude-code@2.1.332" in said and "@openai/codex@0.171.0" in said
    assert (agent_clis / "node_modules" / ".bin" / "claude").exists()


@pytest.mark.docker
def test_a_claude_code_agent_runs_in_a_docker_sandbox_too(
    claude_server, api, tmp_path, sandbox_toolchain, agent_clis
):
    remote = make_remote(tmp_path, BROKEN)
    turns = claude_code_fixes_add()
    turns[2] = tool_use_reply(
        [("Bash", {"command": "python -m pytest -q; echo home=$HOME", "description": "Test"})],
        usage_data=usage(input_tokens=1400, output_tokens=20),
    )
    claude_server.default = conversation(*turns)

    agent_id = spawn_cli(api, remote, "claude-code", sandbox="docker")
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=180)

    assert agent.sandbox_backend == "docker"
    # Its home is the hub's directory for it, which outlives the container (a pause).
    bash = [e for e in transcript(api, agent_id) if e["role"] == "tool_result"][-1]
    assert "1 passed" in bash["output"] and "home=/home/agent" in bash["output"]
    assert git(remote, "show", f"flotilla/{agent_id}:calc.py") == FIXED.strip()
    assert [name for name, _ in tool_calls(api, agent_id)] == ["Read", "Edit", "Bash"]
    assert agent.input_tokens == 1200 + 1300 + 1400 + 1500
