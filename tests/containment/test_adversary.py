"""Attacks found by trying the containment as a hostile agent would, after issue 12 was built.

Each test is one attack through the API, on a real worker and a real
sandbox: a Claude agent (its model scripted by the hub's Messages server)
or a script agent. Each asserts what a user would see: the agent goes on
or ends with a reason, and what it stored stays small.
"""

import json
import shlex

import pytest

from agents.models import AgentState
from tests.conftest import wait_for_state
from tests.containment.conftest import (
    BACKENDS,
    events_of,
    finished,
    network_events,
    output_lines,
    spawn,
)
from tests.messages_server import conversation, message_reply, tool_results, tool_use_reply

FINAL = {AgentState.COMPLETED, AgentState.FAILED, AgentState.KILLED}


def claude_agent(api, task_id: str, remote_repo, backend: str = "bwrap") -> str:
    body = {
        "task_id": task_id,
        "agent_type": "worker",
        "runtime": "claude",
        "context": {"repository": str(remote_repo), "branch": "main", "instructions": "Work."},
        "options": {"sandbox": backend},
    }
    response = api.post("/api/v1/agents", body, format="json")
    assert response.status_code == 202, response.content
    return response.json()["agent_id"]


def result_of_turn(claude_server, turn: int) -> dict:
    """The tool result the model received at ``turn`` (its request number ``turn``)."""
    bodies = [request["body"] for request in claude_server.requests]
    answering = [
        body
        for body in bodies
        if sum(message.get("role") == "assistant" for message in body["messages"]) == turn
    ]
    assert answering, f"the model was never asked for turn {turn}"
    return tool_results(answering[-1])[0]


# --- The Claude file tools run in the worker, as root ------------------------------


def test_a_named_pipe_in_the_worktree_is_refused_by_the_file_tools_not_waited_on(
    claude_server, api, remote_repo
):
    # Opening a FIFO for reading waits for a writer that never comes: the
    # worker's read_file (and the search that opens every file) hung for ever.
    claude_server.default = conversation(
        tool_use_reply([("run_command", {"command": "mkfifo pipe && echo hello > note.txt"})]),
        tool_use_reply([("read_file", {"path": "pipe"})]),
        tool_use_reply([("write_file", {"path": "pipe", "content": "x"})]),
        tool_use_reply([("search", {"pattern": "hello", "path": "."})]),
        tool_use_reply([("finish", {"summary": "Left a pipe behind."})]),
    )
    agent_id = claude_agent(api, "named-pipe", remote_repo)

    agent = wait_for_state(agent_id, FINAL, timeout=90)

    assert agent.state == AgentState.COMPLETED, agent.error
    read = result_of_turn(claude_server, 2)
    assert read.get("is_error") is True and "not a regular file" in read["content"], read
    written = result_of_turn(claude_server, 3)
    assert written.get("is_error") is True and "not a regular file" in written["content"]
    assert "note.txt:1: hello" in result_of_turn(claude_server, 4)["content"]


def test_a_search_pattern_that_backtracks_for_ever_is_cut_off_and_the_agent_goes_on(
    claude_server, api, remote_repo
):
    # Python's re cannot be interrupted: (a+)+$ on a run of a's and a '!'
    # spun the worker at 100% CPU for ever, and no kill could stop it.
    hostile = "a" * 64 + "!"
    claude_server.default = conversation(
        tool_use_reply([("write_file", {"path": "bait.txt", "content": hostile})]),
        tool_use_reply([("search", {"pattern": "(a+)+$", "path": "."})]),
        tool_use_reply([("search", {"pattern": "a!", "path": "."})]),
        tool_use_reply([("finish", {"summary": "Searched."})]),
    )
    agent_id = claude_agent(api, "backtracking-search", remote_repo)

    agent = wait_for_state(agent_id, FINAL, timeout=120)

    assert agent.state == AgentState.COMPLETED, agent.error
    cut = result_of_turn(claude_server, 2)
    assert cut.get("is_error") is True and "took longer than" in cut["content"], cut
    assert "bait.txt:1:" in result_of_turn(claude_server, 3)["content"]


# --- The egress proxy's events ------------------------------------------------------

_LONG_REQUESTS = r"""
import socket
def ask(head):
    with socket.create_connection(("127.0.0.1", 3128), timeout=10) as proxy:
        proxy.sendall(head)
        return proxy.recv(100).split(b"\r\n")[0].decode()
print("LONG-HOST", ask(b"CONNECT " + b"a" * 60000 + b".example:443 HTTP/1.1\r\n\r\n"))
print("LONG-METHOD", ask(b"M" * 60000 + b" http://example.com/ HTTP/1.1\r\nHost: x\r\n\r\n"))
for _ in range(40):
    ask(b"CONNECT " + b"b" * 60000 + b".example:443 HTTP/1.1\r\n\r\n")
print("SENT")
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_network_event_stays_one_line_however_long_the_request_it_records(
    hub, api, remote_repo, backend
):
    # A refusal quoted the whole request target (and an event kept the whole
    # method): 64 KiB per event, hundreds per run, counted by no output bound.
    script = f"python3 -c {shlex.quote(_LONG_REQUESTS)}"
    agent_id = spawn(api, remote_repo, script, backend=backend, network="allowlist")

    agent = finished(api, agent_id)
    events = events_of(api, agent_id)

    assert "SENT" in output_lines(events), output_lines(events)
    assert agent["state"] == AgentState.COMPLETED, agent["error"]
    recorded = network_events(events)
    assert len(recorded) >= 42
    assert all(data.get("allowed") is False for data in recorded if "allowed" in data)
    assert max(len(json.dumps(data)) for data in recorded) < 2048


# --- The disk bound ----------------------------------------------------------------

_EMPTY_FILES = """
import os
os.mkdir("many")
for number in range(40000):
    os.close(os.open(f"many/{number}", os.O_CREAT | os.O_WRONLY))
print("CREATED", flush=True)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_files_count_against_the_worktree_maximum(hub, api, remote_repo, backend):
    # An empty file takes no block but an inode: the watch counted blocks
    # only, so an agent could use up the filesystem's inodes under any bound.
    script = f"python3 -c {shlex.quote(_EMPTY_FILES)} && sleep 30"
    agent_id = spawn(api, remote_repo, script, backend=backend)

    agent = finished(api, agent_id, timeout=120)

    assert agent["state"] == AgentState.FAILED, agent
    assert "FLOTILLA_MAX_WORKTREE_MB" in agent["error"], agent["error"]


# --- Output the database cannot store -----------------------------------------------


def test_output_holding_nul_characters_is_stored_and_the_agent_completes(hub, api, remote_repo):
    # PostgreSQL's jsonb refuses \u0000: one NUL in a line killed the output
    # thread (nothing after it was stored) and the agent's final update.
    script = "printf 'before\\0after\\n'; echo the-end"
    agent_id = spawn(api, remote_repo, script, backend="bwrap")

    agent = finished(api, agent_id)
    lines = output_lines(events_of(api, agent_id))

    assert agent["state"] == AgentState.COMPLETED, agent["error"]
    assert "the-end" in lines, lines
    assert any(line.startswith("before") and line.endswith("after") for line in lines), lines


def test_a_model_reply_holding_a_nul_and_half_a_surrogate_pair_is_stored(
    claude_server, api, remote_repo
):
    # The model's JSON may carry \u0000 and a lone \ud800; the transcript
    # event that records the reply failed to store, and the agent crashed.
    hostile = {"type": "text", "text": "a NUL \x00 and half a pair \ud800"}
    finish = {"type": "tool_use", "id": "toolu_hostile", "name": "finish"}
    claude_server.default = conversation(
        message_reply([hostile, {**finish, "input": {"summary": "Done."}}], stop_reason="tool_use")
    )
    agent_id = claude_agent(api, "hostile-text", remote_repo)

    agent = wait_for_state(agent_id, FINAL, timeout=90)

    assert agent.state == AgentState.COMPLETED, agent.error
    stored = json.dumps([event["data"] for event in events_of(api, agent_id)])
    assert "a NUL " in stored and "half a pair" in stored
