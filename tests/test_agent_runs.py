"""Script agents run end to end: API → django-q2 worker → bwrap sandbox → git push."""

from pathlib import Path

from agents.models import AgentEvent, AgentState
from tests.conftest import git, spawn_body, wait_for_state


def test_script_agent_that_writes_a_file_completes_and_pushes_its_branch(hub, api, remote_repo):
    response = api.post(
        "/api/v1/agents", spawn_body(remote_repo, "echo 'hello' > hello.txt"), format="json"
    )
    assert response.status_code == 202, response.content
    agent_id = response.json()["agent_id"]
    assert response.json()["state"] == "queued"

    agent = wait_for_state(agent_id, AgentState.COMPLETED)

    branch = f"flotilla/{agent_id}"
    assert agent.work_branch == branch
    assert git(remote_repo, "show", f"{branch}:hello.txt") == "hello"
    assert git(remote_repo, "rev-parse", branch) == agent.result["pushed_commit"]
    assert not Path(agent.worktree_path).exists()
    body = api.get(f"/api/v1/agents/{agent_id}").json()
    assert body["state"] == "completed" and body["progress"] == 100
    assert body["finished_at"] and body["started_at"]


def test_every_transition_is_recorded_as_an_event_in_order(hub, api, remote_repo):
    agent_id = api.post(
        "/api/v1/agents", spawn_body(remote_repo, "echo out"), format="json"
    ).json()["agent_id"]
    wait_for_state(agent_id, AgentState.COMPLETED)

    events = api.get(f"/api/v1/agents/{agent_id}/events").json()["events"]
    transitions = [event["data"]["to"] for event in events if event["kind"] == "state"]
    assert transitions == ["queued", "spawning", "running", "gating", "pushing", "completed"]
    ids = [event["id"] for event in events]
    assert ids == sorted(ids)
    assert any(event["kind"] == "output" and "out" in event["data"]["lines"] for event in events)


def test_events_after_an_id_return_only_newer_events(hub, api, remote_repo):
    agent_id = api.post("/api/v1/agents", spawn_body(remote_repo, "true"), format="json").json()[
        "agent_id"
    ]
    wait_for_state(agent_id, AgentState.COMPLETED)
    all_events = api.get(f"/api/v1/agents/{agent_id}/events").json()
    middle = all_events["events"][2]["id"]

    later = api.get(f"/api/v1/agents/{agent_id}/events?after={middle}").json()

    assert [event["id"] for event in later["events"]] == [
        event["id"] for event in all_events["events"] if event["id"] > middle
    ]
    assert later["last_id"] == all_events["last_id"]


def test_script_that_changes_nothing_completes_without_pushing(hub, api, remote_repo):
    agent_id = api.post("/api/v1/agents", spawn_body(remote_repo, "ls"), format="json").json()[
        "agent_id"
    ]

    agent = wait_for_state(agent_id, AgentState.COMPLETED)

    assert agent.result["pushed_commit"] is None
    assert f"flotilla/{agent_id}" not in git(remote_repo, "branch", "--list")


def test_failing_script_ends_failed_with_exit_code_and_output_tail(hub, api, remote_repo):
    script = "echo 'about to fail'; echo 'broken' > partial.txt; exit 3"
    agent_id = api.post("/api/v1/agents", spawn_body(remote_repo, script), format="json").json()[
        "agent_id"
    ]

    agent = wait_for_state(agent_id, AgentState.FAILED)

    assert agent.error == "script exited with status 3"
    assert agent.result["exit_code"] == 3
    assert "about to fail" in agent.result["output_tail"]
    assert f"flotilla/{agent_id}" not in git(remote_repo, "branch", "--list")
    assert not Path(agent.worktree_path).exists()


def test_script_past_its_timeout_ends_failed_with_a_timeout_reason(hub, api, remote_repo):
    agent_id = api.post(
        "/api/v1/agents", spawn_body(remote_repo, "sleep 30", timeout_s=1), format="json"
    ).json()["agent_id"]

    agent = wait_for_state(agent_id, AgentState.FAILED, timeout=15)

    assert agent.error == "timed out after 1 s"
    assert agent.result["exit_code"] is None


def test_unknown_base_branch_fails_the_agent_with_a_readable_reason(hub, api, remote_repo):
    agent_id = api.post(
        "/api/v1/agents", spawn_body(remote_repo, "true", branch="nope"), format="json"
    ).json()["agent_id"]

    agent = wait_for_state(agent_id, AgentState.FAILED)

    assert "branch 'nope' does not exist" in agent.error
    assert AgentEvent.objects.filter(agent_id=agent_id, kind="state", data__to="failed").exists()
