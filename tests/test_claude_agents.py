"""Claude agents end to end: API → django-q2 worker → the real anthropic client → a Messages
API server on loopback, with tools acting on a real worktree and a bwrap sandbox."""

import json
from pathlib import Path

from django.conf import settings

from agents.models import Agent, AgentEvent, AgentState
from tests.conftest import (
    HUB_ANTHROPIC_KEY,
    events_of,
    git,
    make_remote,
    spawn_model_agent,
    transcript,
    wait_for_state,
    wait_until,
)
from tests.messages_server import (
    conversation,
    error_reply,
    message_reply,
    text_reply,
    tool_results,
    tool_use_reply,
    usage,
)

# A sample project whose test fails on the base branch: mean() divides by one too many.
BROKEN = {
    "stats.py": "def mean(values):\n    return sum(values) / (len(values) + 1)\n",
    "test_stats.py": (
        "from stats import mean\n\n\ndef test_mean():\n    assert mean([1, 2, 3]) == 2\n"
    ),
    ".flotilla.toml": '[gates]\nlint = "ruff check ."\ntests = "python -m pytest -q"\n',
}
FIXED_LINE = "    return sum(values) / len(values)\n"
FIXED_SOURCE = "def mean(values):\n" + FIXED_LINE
SUMMARY = "Fixed mean(): it divided by len(values) + 1."


def spawn_claude(api, remote, *, agent_type: str = "worker", **options) -> str:
    return spawn_model_agent(
        api,
        remote,
        "claude",
        task_id=options.pop("task_id", "fix-mean"),
        work_item="test_stats.py::test_mean fails",
        agent_type=agent_type,
        **options,
    )


def states(api, agent_id: str) -> list[str]:
    return [e["data"]["to"] for e in events_of(api, agent_id) if e["kind"] == "state"]


def bodies(server) -> list[dict]:
    return [request["body"] for request in server.requests]


def assert_key_appears_nowhere(api, agent_id: str) -> None:
    agent_row = json.dumps(list(Agent.objects.filter(id=agent_id).values()), default=str)
    every_event = json.dumps(list(AgentEvent.objects.values("kind", "data")), default=str)
    api_views = api.get(f"/api/v1/agents/{agent_id}").content.decode() + json.dumps(
        events_of(api, agent_id)
    )
    worker_log = (Path(settings.DATA_DIR) / "worker.log").read_text(errors="replace")
    for text in (agent_row, every_event, api_views, worker_log):
        assert HUB_ANTHROPIC_KEY not in text


def test_a_scripted_conversation_fixes_a_failing_test_and_pushes_the_fix(
    claude_server, api, tmp_path, sandbox_toolchain
):
    remote = make_remote(tmp_path, BROKEN)
    claude_server.default = conversation(
        tool_use_reply([("read_file", {"path": "stats.py"})], text="Let me look."),
        tool_use_reply(
            [
                (
                    "edit_file",
                    {
                        "path": "stats.py",
                        "old_text": "sum(values) / (len(values) + 1)",
                        "new_text": "sum(values) / len(values)",
                    },
                )
            ]
        ),
        tool_use_reply([("run_command", {"command": "python -m pytest -q", "timeout_s": 60})]),
        tool_use_reply([("commit", {"message": "Fix the off-by-one in mean()"})]),
        tool_use_reply([("finish", {"summary": SUMMARY})]),
    )

    agent_id = spawn_claude(api, remote)
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=90)

    assert agent.result["summary"] == SUMMARY
    assert agent.result["pushed_commit"] == git(remote, "rev-parse", f"flotilla/{agent_id}")
    assert git(remote, "show", f"flotilla/{agent_id}:stats.py").endswith(FIXED_LINE.strip())
    assert "Fix the off-by-one in mean()" in git(remote, "log", "-1", f"flotilla/{agent_id}")
    # What the model was sent back at each turn, through the real client.
    sent = bodies(claude_server)
    assert len(sent) == 5
    assert "(len(values) + 1)" in tool_results(sent[1])[0]["content"]
    assert tool_results(sent[2])[0]["content"] == "replaced 1 occurrence in stats.py"
    pytest_result = tool_results(sent[3])[0]
    assert (
        pytest_result["content"].startswith("exit code 0")
        and "1 passed" in pytest_result["content"]
    )
    assert tool_results(sent[4])[0]["content"].startswith("committed ")
    assert "is_error" not in tool_results(sent[4])[0]
    # The system prompt and the tools are cached; the task reaches the system prompt.
    first = sent[0]
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "Make the test suite pass." in first["system"][0]["text"]
    assert "test_stats.py::test_mean fails" in first["system"][0]["text"]
    assert first["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert [tool["name"] for tool in first["tools"]] == [
        "read_file",
        "write_file",
        "edit_file",
        "list_files",
        "search",
        "run_command",
        "commit",
        "finish",
    ]
    assert first["model"] == settings.FLOTILLA_CLAUDE_MODEL
    # The lifecycle is truthful: the commit and the finish each went through the gates.
    assert states(api, agent_id) == [
        "queued",
        "spawning",
        "running",
        "gating",
        "running",
        "gating",
        "pushing",
        "completed",
    ]
    # Every assistant turn and tool call is in the transcript, readable through the API.
    entries = transcript(api, agent_id)
    assert [(e["role"], e.get("name")) for e in entries] == [
        ("user", None),
        ("assistant", None),
        ("tool", "read_file"),
        ("assistant", None),
        ("tool", "edit_file"),
        ("assistant", None),
        ("tool", "run_command"),
        ("assistant", None),
        ("tool", "commit"),
        ("assistant", None),
        ("tool", "finish"),
    ]
    assert entries[1]["content"][0] == {"type": "text", "text": "Let me look."}
    body = api.get(f"/api/v1/agents/{agent_id}").json()
    assert body["usage"]["input_tokens"] == 50 and body["usage"]["output_tokens"] == 25
    assert body["usage"]["cost_usd"] == "0.000525"  # 50 × $3 + 25 × $15 per million
    assert_key_appears_nowhere(api, agent_id)


def test_a_commit_the_gates_reject_reaches_the_model_which_then_fixes_it(
    claude_server, api, tmp_path, sandbox_toolchain
):
    remote = make_remote(tmp_path, BROKEN)
    unused_import = "import os\n\n\ndef mean(values):\n    return sum(values) / len(values)\n"
    claude_server.default = conversation(
        tool_use_reply([("write_file", {"path": "stats.py", "content": unused_import})]),
        tool_use_reply([("commit", {"message": "Fix mean"})]),
        tool_use_reply(
            [("edit_file", {"path": "stats.py", "old_text": "import os\n\n\n", "new_text": ""})]
        ),
        tool_use_reply([("commit", {"message": "Fix mean"})]),
        tool_use_reply([("finish", {"summary": SUMMARY})]),
    )

    agent_id = spawn_claude(api, remote)
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=90)

    rejected = tool_results(bodies(claude_server)[2])[0]
    assert rejected["is_error"] is True
    assert rejected["content"].startswith("not committed: the pre-commit gates rejected the change")
    assert "F401" in rejected["content"]  # ruff names the unused import
    accepted = tool_results(bodies(claude_server)[4])[0]
    assert accepted["content"].startswith("committed ") and "is_error" not in accepted
    assert git(remote, "show", f"flotilla/{agent_id}:stats.py") == FIXED_SOURCE.strip()
    assert git(remote, "rev-list", "--count", f"main..flotilla/{agent_id}") == "1"
    assert agent.result["summary"] == SUMMARY


def test_an_exhausted_budget_pauses_the_agent_and_a_raised_budget_resumes_it(
    claude_server, api, tmp_path, sandbox_toolchain
):
    remote = make_remote(tmp_path, BROKEN)
    # 2000 input and 400 output tokens on Sonnet cost $0.012: over a $0.01 budget.
    expensive = usage(input_tokens=2000, output_tokens=400)
    claude_server.default = conversation(
        tool_use_reply(
            [("write_file", {"path": "stats.py", "content": FIXED_SOURCE})], usage_data=expensive
        ),
        tool_use_reply([("commit", {"message": "Fix mean"})]),
        tool_use_reply([("finish", {"summary": SUMMARY})]),
    )

    agent_id = spawn_claude(api, remote, budget_usd="0.01")
    paused = wait_for_state(agent_id, AgentState.PAUSED, timeout=60)

    assert paused.error == "budget exhausted: spent $0.012000 of $0.01"
    assert paused.sandbox_handle == {}
    assert (Path(paused.worktree_path) / "stats.py").read_text() == FIXED_SOURCE
    assert len(claude_server.requests) == 1
    body = api.get(f"/api/v1/agents/{agent_id}").json()
    assert body["usage"]["cost_usd"] == "0.012000" and body["usage"]["budget_usd"] == "0.01"

    too_low = api.post(f"/api/v1/agents/{agent_id}/resume", {"budget_usd": "0.01"}, format="json")
    assert too_low.status_code == 400
    assert too_low.json()["error"]["code"] == "invalid_budget"
    resumed = api.post(f"/api/v1/agents/{agent_id}/resume", {"budget_usd": "1.00"}, format="json")
    assert resumed.status_code == 202, resumed.content
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=60)

    # The resumed run continued the same conversation rather than starting over.
    second = bodies(claude_server)[1]
    assert [message["role"] for message in second["messages"]] == ["user", "assistant", "user"]
    assert tool_results(second)[0]["content"].startswith("wrote ")
    assert git(remote, "show", f"flotilla/{agent_id}:stats.py") == FIXED_SOURCE.strip()
    assert agent.result["summary"] == SUMMARY and agent.error == ""
    assert states(api, agent_id)[2:] == [
        "running",
        "paused",
        "running",
        "gating",
        "running",
        "gating",
        "pushing",
        "completed",
    ]
    assert agent.started_at == paused.started_at
    again = api.post(f"/api/v1/agents/{agent_id}/resume", {"budget_usd": "2"}, format="json")
    assert again.status_code == 409


def test_killing_an_agent_during_a_slow_model_reply_cancels_the_request(
    claude_server, api, remote_repo
):
    # The reply takes 30 s; the server records the request as it reads it, so
    # once it is recorded the request is in flight.
    claude_server.default = conversation(text_reply("thinking very slowly", delay_s=30))
    agent_id = spawn_claude(api, remote_repo)
    wait_until(lambda: claude_server.requests, 30, "the agent to ask the model")

    response = api.post(f"/api/v1/agents/{agent_id}/kill", {"reason": "too slow"}, format="json")

    assert response.status_code == 200 and response.json()["state"] == "killed"
    # A disconnect, not a finished reply: the worker dropped the request on the
    # kill (how fast is a figure of bench/claude_overhead.py, not a bound here).
    wait_until(lambda: claude_server.disconnects, 20, "the worker to drop the request")
    assert len(claude_server.requests) == 1
    assert Agent.objects.get(id=agent_id).state == AgentState.KILLED


def test_escaping_paths_and_malformed_calls_become_error_results_the_model_reads(
    claude_server, api, tmp_path
):
    seed_files = {"README.md": "# sample\n", "big.txt": "x" * 50_000 + "\nTHE END\n"}
    remote = make_remote(tmp_path, seed_files)
    seed = tmp_path / "remote-seed"
    (seed / "etc-link").symlink_to("/etc")
    (seed / "passwd-link").symlink_to("/etc/passwd")
    git(seed, "add", "--all")
    git(seed, "commit", "--quiet", "-m", "links out")
    git(seed, "push", "--quiet", str(remote), "main")
    claude_server.default = conversation(
        tool_use_reply(
            [
                ("read_file", {"path": "../../../../etc/passwd"}),
                ("read_file", {"path": "/etc/passwd"}),
                ("read_file", {"path": "passwd-link"}),
                ("write_file", {"path": "etc-link/flotilla-escape", "content": "pwned"}),
                ("list_files", {"path": "etc-link"}),
                ("read_file", {}),
                ("delete_everything", {"path": "."}),
                ("read_file", {"path": "big.txt"}),
                ("run_command", {"command": "env"}),
            ]
        ),
        tool_use_reply([("write_file", {"path": "half.py"})], stop_reason="max_tokens"),
        message_reply([{"type": "text", "text": "All done, I think."}]),
        tool_use_reply([("finish", {"summary": "nothing to change"})]),
    )

    agent_id = spawn_claude(api, remote, agent_type="tester")
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=60)

    results = tool_results(bodies(claude_server)[1])
    errors = [result.get("is_error", False) for result in results]
    assert errors == [True, True, True, True, True, True, True, False, False]
    texts = [result["content"] for result in results]
    assert "contains '..'" in texts[0]
    assert "absolute path" in texts[1]
    assert "outside the repository" in texts[2] and "outside the repository" in texts[3]
    assert "outside the repository" in texts[4]
    assert texts[5].startswith("read_file needs path")
    assert texts[6].startswith("unknown tool 'delete_everything'")
    assert "truncated" in texts[7] and texts[7].rstrip().endswith("THE END")
    assert texts[8].startswith("exit code 0") and "ANTHROPIC" not in texts[8]
    assert not Path("/etc/flotilla-escape").exists()
    # A reply cut at max_tokens: its tool calls are not run, the model is told why.
    cut = tool_results(bodies(claude_server)[2])[0]
    assert cut["is_error"] is True and "max_tokens" in cut["content"]
    assert not (Path(agent.worktree_path) / "half.py").exists()
    # A reply with no tool call is answered with a nudge to go on or finish.
    assert "finish" in bodies(claude_server)[3]["messages"][-1]["content"][0]["text"]
    assert agent.result["summary"] == "nothing to change"
    assert agent.result["pushed_commit"] is None
    assert_key_appears_nowhere(api, agent_id)


def test_a_reviewer_gets_read_only_tools_and_rides_out_server_errors(
    claude_server, api, remote_repo
):
    claude_server.script(error_reply(529), error_reply(429))  # retried by the SDK
    claude_server.default = conversation(
        tool_use_reply([("read_file", {"path": "README.md"})]),
        tool_use_reply([("finish", {"summary": "Verdict: fine. No findings."})]),
    )

    agent_id = spawn_claude(
        api,
        remote_repo,
        agent_type="reviewer",
        model="claude-haiku-4-5",
        max_turns=5,
        max_tokens=1024,
    )
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=60)

    assert agent.result["summary"] == "Verdict: fine. No findings."
    assert agent.result["pushed_commit"] is None
    sent = bodies(claude_server)
    assert len(sent) == 4
    assert [tool["name"] for tool in sent[0]["tools"]] == [
        "read_file",
        "list_files",
        "search",
        "run_command",
        "finish",
    ]
    assert sent[0]["model"] == "claude-haiku-4-5" and sent[0]["max_tokens"] == 1024
    assert "no tools to write, edit or commit" in sent[0]["system"][0]["text"]


def test_when_the_sdks_retries_run_out_the_agent_fails_with_a_readable_reason(
    claude_server, api, remote_repo
):
    claude_server.script(error_reply(500), error_reply(500), error_reply(500))

    agent_id = spawn_claude(api, remote_repo)
    agent = wait_for_state(agent_id, AgentState.FAILED, timeout=60)

    assert agent.error == (
        "the model could not be asked: the Messages API answered 500: api_error: scripted 500"
    )
    assert len(claude_server.requests) == 3  # the first try and ANTHROPIC_MAX_RETRIES=2
    assert_key_appears_nowhere(api, agent_id)


def test_a_turn_limit_ends_the_run_as_failed(claude_server, api, remote_repo):
    claude_server.default = conversation(
        *[tool_use_reply([("list_files", {"path": "."})]) for _ in range(3)]
    )

    agent_id = spawn_claude(api, remote_repo, max_turns=2)
    agent = wait_for_state(agent_id, AgentState.FAILED, timeout=60)

    assert agent.error == "reached the limit of 2 turns without finishing"
    assert agent.result["turns"] == 2


def test_spawn_refuses_a_model_without_a_price(api, remote_repo):
    body = {
        "task_id": "t",
        "runtime": "claude",
        "context": {"repository": str(remote_repo)},
        "options": {"model": "gpt-4o"},
    }
    response = api.post("/api/v1/agents", body, format="json")
    assert response.status_code == 400
    assert "options.model" in response.json()["error"]["fields"]


def test_only_a_paused_agent_resumes(api, remote_repo):
    from agents.services import SpawnRequest, agent_spawn

    agent = agent_spawn(
        request=SpawnRequest(
            task_id="t",
            agent_type="worker",
            runtime="claude",
            repository=str(remote_repo),
            base_branch="main",
        ),
        requested_by="user:operator",
    )
    response = api.post(f"/api/v1/agents/{agent.id}/resume", {"budget_usd": "5"}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_transition"
    missing = api.post("/api/v1/agents/nope/resume", {"budget_usd": "5"}, format="json")
    assert missing.status_code == 404
