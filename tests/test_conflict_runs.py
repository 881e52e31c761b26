"""Two agents change the same file: whole runs through the API, the worker node, bwrap and git.

The first agent's branch is merged into main (as a reviewer would) while
the second still works, so the second finds its base moved on when it
delivers. A script agent holds its run open until the test writes ``go``
into its worktree, so the order never depends on timing.
"""

from pathlib import Path

from agents.models import Agent, AgentState
from tests.conftest import git, make_remote, spawn_body, wait_for_state, wait_until
from tests.messages_server import conversation, tool_results, tool_use_reply

NOTES = "alpha\nbeta\ngamma\ndelta\nepsilon\n"
WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.05; done; rm go; "


def spawn(api, remote, script: str, **options) -> str:
    response = api.post("/api/v1/agents", spawn_body(remote, script, **options), format="json")
    assert response.status_code == 202, response.content
    return response.json()["agent_id"]


def merge_into_main(tmp_path: Path, remote: Path, branch: str) -> str:
    """Someone merges ``branch`` into main and pushes; returns main's new commit."""
    clone = tmp_path / "reviewer"
    if not clone.exists():
        git(tmp_path, "clone", "--quiet", str(remote), str(clone))
    git(clone, "fetch", "--quiet", "origin")
    git(clone, "checkout", "--quiet", "main")
    git(clone, "merge", "--quiet", "--no-edit", f"origin/{branch}")
    git(clone, "push", "--quiet", "origin", "main")
    return git(clone, "rev-parse", "HEAD")


def release(agent_id: str, attempt: int = 0) -> None:
    """Let a script waiting for ``go`` go on, once its attempt's worktree is there."""

    def ready() -> bool:
        agent = Agent.objects.get(id=agent_id)
        return (
            agent.attempt == attempt
            and agent.state == AgentState.RUNNING
            and bool(agent.worktree_path)
            and Path(agent.worktree_path).is_dir()
        )

    wait_until(ready, timeout=60, what=f"attempt {attempt} of {agent_id} to run")
    Path(Agent.objects.get(id=agent_id).worktree_path, "go").write_text("")


def log_messages(api, agent_id: str) -> list[str]:
    events = api.get(f"/api/v1/agents/{agent_id}/events?limit=1000").json()["events"]
    return [e["data"].get("message", "") for e in events if e["kind"] == "log"]


def state_reasons(api, agent_id: str) -> list[str]:
    events = api.get(f"/api/v1/agents/{agent_id}/events?limit=1000").json()["events"]
    return [e["data"].get("reason", "") for e in events if e["kind"] == "state"]


def test_the_second_of_two_agents_on_one_file_merges_the_moved_base_cleanly_and_pushes(
    hub, api, tmp_path
):
    remote = make_remote(tmp_path, {"notes.txt": NOTES})
    second = spawn(
        api, remote, WAIT_FOR_GO + "sed -i 's/^epsilon$/epsilon, by two/' notes.txt", task_id="two"
    )
    first = spawn(api, remote, "sed -i 's/^alpha$/alpha, by one/' notes.txt", task_id="one")
    wait_for_state(first, AgentState.COMPLETED, timeout=60)
    main = merge_into_main(tmp_path, remote, f"flotilla/{first}")

    release(second)
    agent = wait_for_state(second, AgentState.COMPLETED, timeout=60)

    branch = f"flotilla/{second}"
    assert git(remote, "rev-parse", branch) == agent.result["pushed_commit"]
    assert (
        git(remote, "show", f"{branch}:notes.txt")
        == "alpha, by one\nbeta\ngamma\ndelta\nepsilon, by two"
    )
    assert git(remote, "merge-base", "--is-ancestor", main, branch) == ""
    assert any("merged cleanly" in message for message in log_messages(api, second))


def test_a_script_agent_that_conflicts_is_retried_on_the_new_base_and_its_first_try_kept(
    hub, api, tmp_path
):
    remote = make_remote(tmp_path, {"notes.txt": NOTES})
    # On the old base the first expression applies; on the new one, the second.
    script = (
        WAIT_FOR_GO + "sed -i 's/^alpha$/alpha, by two/;s/^alpha, by one$/alpha, by two/' notes.txt"
    )
    second = spawn(api, remote, script, task_id="two", max_retries=1)
    first = spawn(api, remote, "sed -i 's/^alpha$/alpha, by one/' notes.txt", task_id="one")
    wait_for_state(first, AgentState.COMPLETED, timeout=60)
    main = merge_into_main(tmp_path, remote, f"flotilla/{first}")

    release(second, attempt=0)
    release(second, attempt=1)
    agent = wait_for_state(second, AgentState.COMPLETED, timeout=60)

    assert agent.attempt == 1
    retried = [reason for reason in state_reasons(api, second) if "retry 1 of 1" in reason]
    assert len(retried) == 1 and "conflicts in: notes.txt" in retried[0]
    branch = f"flotilla/{second}"
    assert git(remote, "show", f"{branch}:notes.txt").startswith("alpha, by two\nbeta")
    assert git(remote, "merge-base", "--is-ancestor", main, branch) == ""
    assert git(remote, "rev-list", "--count", f"main..{branch}") == "1"
    # The first attempt's work (against the old base) stays downloadable.
    kept = api.get(f"/api/v1/agents/{second}/patch?attempt=0")
    assert kept.status_code == 200
    assert "-alpha\n+alpha, by two" in kept.content.decode()
    assert "conflicts in: notes.txt" in kept.content.decode()
    pushed = api.get(f"/api/v1/agents/{second}/patch").content.decode()
    assert "-alpha, by one\n+alpha, by two" in pushed


def test_a_claude_agent_resolves_a_conflict_with_the_moved_base_in_one_more_turn_and_pushes(
    claude_server, api, tmp_path
):
    remote = make_remote(tmp_path, {"notes.txt": NOTES})
    first = spawn(api, remote, "sed -i 's/^alpha$/alpha, by one/' notes.txt", task_id="one")
    wait_for_state(first, AgentState.COMPLETED, timeout=60)
    resolved = NOTES.replace("alpha\n", "alpha, by one and by claude\n")

    def edit_while_main_moves_on(body: dict):
        """As the agent starts, the first agent's work lands on main."""
        merge_into_main(tmp_path, remote, f"flotilla/{first}")
        edit = {
            "path": "notes.txt",
            "old_text": "alpha\nbeta",
            "new_text": "alpha, by claude\nbeta",
        }
        return tool_use_reply([("edit_file", edit), ("finish", {"summary": "Signed alpha."})])

    claude_server.default = conversation(
        edit_while_main_moves_on,
        tool_use_reply(
            [
                ("write_file", {"path": "notes.txt", "content": resolved}),
                ("finish", {"summary": "Signed alpha, keeping main's change."}),
            ]
        ),
    )
    body = {
        "task_id": "sign",
        "agent_type": "worker",
        "runtime": "claude",
        "context": {"repository": str(remote), "branch": "main", "instructions": "Sign alpha."},
    }
    response = api.post("/api/v1/agents", body, format="json")
    assert response.status_code == 202, response.content
    second = response.json()["agent_id"]

    agent = wait_for_state(second, AgentState.COMPLETED, timeout=90)

    requests = [request["body"] for request in claude_server.requests]
    assert len(requests) == 2
    edited, finished = tool_results(requests[1])
    assert not edited.get("is_error")
    assert finished["is_error"] and "conflicts in: notes.txt" in finished["content"]
    assert f"<<<<<<< refs/heads/flotilla/{second}" in finished["content"]
    branch = f"flotilla/{second}"
    assert git(remote, "rev-parse", branch) == agent.result["pushed_commit"]
    assert git(remote, "show", f"{branch}:notes.txt") == resolved.strip()
    assert git(remote, "merge-base", "--is-ancestor", "main", branch) == ""
    assert "<<<<<<<" not in git(remote, "log", "-p", f"main..{branch}")
