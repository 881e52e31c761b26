"""Killing agents: one or all, at once, leaving nothing behind but unpushed work."""

import os
import threading
import time
from pathlib import Path

from agents import workspace
from agents.leases import agents_claim
from agents.lifecycle import agent_transition
from agents.models import Agent, AgentEvent, AgentState
from agents.sandboxes.cgroups import AgentCgroup
from agents.sandboxes.local import labelled_pids
from audit.models import AuditEvent
from tests.conftest import git, spawn_body, wait_for_state, wait_until

LONG = "echo started; sleep 120"


def spawn(api, repo, script=LONG, **options) -> str:
    response = api.post("/api/v1/agents", spawn_body(repo, script, **options), format="json")
    assert response.status_code == 202, response.content
    return response.json()["agent_id"]


def running_pids(agent: Agent) -> list[int]:
    pids = AgentCgroup(agent.sandbox_handle["cgroup"]).pids()
    assert pids, "the agent should have processes while it runs"
    return pids


def alive(pid: int) -> bool:
    """Whether a process still runs; a zombie has finished and only awaits its parent's reaping."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until_output(agent_id: str, text: str, timeout: float = 20) -> None:
    def printed() -> bool:
        events = AgentEvent.objects.filter(agent_id=agent_id, kind="output")
        return any(text in line for event in events for line in event.data["lines"])

    wait_until(printed, timeout, f"agent {agent_id} to print {text!r}")


def test_killing_a_running_agent_stops_every_process_and_removes_its_worktree(
    hub, api, remote_repo
):
    agent_id = spawn(api, remote_repo, "sleep 300 & sleep 300 & echo started; wait")
    wait_until_output(agent_id, "started")
    agent = Agent.objects.get(id=agent_id)
    pids = running_pids(agent)

    response = api.post(f"/api/v1/agents/{agent_id}/kill", {"reason": "runaway"}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["killed"] is True and body["state"] == "killed"
    assert body["previous_state"] == "running"
    # The latency is a measured figure (bench/killall.py reports it); the
    # kill is synchronous: nothing of the agent runs once the API answers.
    assert body["latency_ms"] >= 0
    assert not [pid for pid in pids if alive(pid)]
    assert agent_id not in labelled_pids().values()
    assert not Path(agent.worktree_path).exists()
    audit = AuditEvent.objects.get(action="agent.kill", target=f"agent:{agent_id}")
    assert audit.actor == "user:operator" and audit.reason == "runaway"
    assert audit.data["state_at_kill"] == "running"


def test_a_killed_agents_unpushed_commits_stay_on_its_branch(hub, api, remote_repo):
    agent_id = spawn(api, remote_repo)
    wait_until_output(agent_id, "started")
    agent = Agent.objects.get(id=agent_id)
    # The orchestrator commits mid-run (as the Claude runtime's commit tool does).
    Path(agent.worktree_path, "work.txt").write_text("precious\n")
    workspace.worktree_commit(path=Path(agent.worktree_path), message="work in progress")

    api.post(f"/api/v1/agents/{agent_id}/kill", {"reason": "stop"}, format="json")

    assert not Path(agent.worktree_path).exists()
    mirror = workspace.mirror_path(agent.repository)
    assert git(mirror, "show", f"flotilla/{agent_id}:work.txt") == "precious"
    assert (
        workspace.branch_unpushed_commits(
            repository=agent.repository, work_branch=agent.work_branch
        )
        == 1
    )
    assert AuditEvent.objects.get(action="agent.kill").data["branch_kept"] is True


def test_kill_all_stops_ten_running_agents(hub, api, staff_api, remote_repo):
    ids = [spawn(api, remote_repo, task_id=f"task-{index}") for index in range(10)]
    for agent_id in ids:
        wait_until_output(agent_id, "started", timeout=60)
    pids = [pid for agent_id in ids for pid in running_pids(Agent.objects.get(id=agent_id))]

    response = staff_api.post("/api/v1/agents/kill-all", {"reason": "incident"}, format="json")

    assert response.status_code == 200, response.content
    assert response.json() == {"total": 10, "killed": 10, "failed": 0, "errors": []}
    assert set(Agent.objects.values_list("state", flat=True)) == {"killed"}
    assert not [pid for pid in pids if alive(pid)]
    assert not set(ids) & set(labelled_pids().values())
    assert AuditEvent.objects.filter(action="agent.kill").count() == 10
    assert AuditEvent.objects.get(action="agent.kill_all").reason == "incident"


def test_killing_a_queued_agent_means_it_never_runs(transactional_db, api, remote_repo, settings):
    # A pool no worker node of the session serves: nothing claims it before the kill.
    settings.FLOTILLA_NODE_POOL = "unserved"
    agent_id = spawn(api, remote_repo, "echo ran > ran.txt")
    # No worker node runs here: the kill lands before any claim, deterministically.
    agent_transition(agent_id=agent_id, to=AgentState.KILLED, reason="test")

    assert agents_claim(node="node-a", limit=10, pool="unserved") == []

    agent = Agent.objects.get(id=agent_id)
    assert agent.state == "killed"
    assert not AgentEvent.objects.filter(agent_id=agent_id, data__to="spawning").exists()


def test_killing_a_finished_agent_is_refused_with_409(hub, api, remote_repo):
    agent_id = spawn(api, remote_repo, "true")
    wait_for_state(agent_id, AgentState.COMPLETED)

    response = api.post(f"/api/v1/agents/{agent_id}/kill", {"reason": "late"}, format="json")

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "already_final"
    assert error["message"] == f"agent {agent_id} is already completed: nothing was killed"
    assert Agent.objects.get(id=agent_id).state == "completed"


def test_a_kill_racing_completion_has_exactly_one_winner(transactional_db, remote_repo):
    from agents.services import SpawnRequest, agent_spawn

    for attempt in range(20):
        agent = agent_spawn(
            request=SpawnRequest(
                task_id=f"race-{attempt}",
                agent_type="worker",
                runtime="script",
                script="true",
                repository=str(remote_repo),
                base_branch="main",
            ),
            requested_by="test",
        )
        Agent.objects.filter(id=agent.id).update(state=AgentState.PUSHING)
        barrier = threading.Barrier(2)
        results = {}

        def move(to: AgentState, barrier=barrier, results=results, agent=agent) -> None:
            barrier.wait()
            results[to] = agent_transition(agent_id=agent.id, to=to, reason="race")

        threads = [
            threading.Thread(target=move, args=(to,))
            for to in (AgentState.COMPLETED, AgentState.KILLED)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert sorted(results.values()) == [False, True]
        final = Agent.objects.get(id=agent.id).state
        winner = next(to for to, won in results.items() if won)
        assert final == winner
        finals = AgentEvent.objects.filter(agent=agent, data__to__in=["completed", "killed"])
        assert finals.count() == 1


def test_kills_racing_real_runs_end_each_agent_in_exactly_one_final_state(hub, api, remote_repo):
    ids = [spawn(api, remote_repo, "echo x > x.txt", task_id=f"r{index}") for index in range(6)]
    for index, agent_id in enumerate(ids):
        time.sleep(0.05 * index)
        api.post(f"/api/v1/agents/{agent_id}/kill", {"reason": "race"}, format="json")

    for agent_id in ids:
        agent = wait_for_state(agent_id, {"killed", "completed"})
        finals = AgentEvent.objects.filter(
            agent_id=agent_id, kind="state", data__to__in=["completed", "failed", "killed"]
        )
        assert [event.data["to"] for event in finals] == [agent.state]


def test_a_finished_agent_is_never_claimed_again(hub, api, remote_repo):
    agent_id = spawn(api, remote_repo, "echo once >> once.txt")
    agent = wait_for_state(agent_id, AgentState.COMPLETED)
    events_before = AgentEvent.objects.filter(agent_id=agent_id).count()

    assert agents_claim(node="another-node", limit=10) == []

    assert AgentEvent.objects.filter(agent_id=agent_id).count() == events_before
    assert Agent.objects.get(id=agent_id).result == agent.result
    assert git(remote_repo, "show", f"flotilla/{agent_id}:once.txt") == "once"


def test_halt_refuses_new_spawns_with_409_until_released(hub, api, staff_api, remote_repo):
    halted = staff_api.post("/api/v1/killswitch/halt", {"reason": "maintenance"}, format="json")
    assert halted.status_code == 200 and halted.json()["halted"] is True

    refused = api.post("/api/v1/agents", spawn_body(remote_repo, "true"), format="json")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "spawn_refused"
    assert "maintenance" in refused.json()["error"]["message"]
    assert api.get("/api/v1/health").json()["halted"] is True

    assert staff_api.post("/api/v1/killswitch/release", {}, format="json").status_code == 200
    assert (
        api.post("/api/v1/agents", spawn_body(remote_repo, "true"), format="json").status_code
        == 202
    )
    assert list(
        AuditEvent.objects.filter(action__startswith="hub.")
        .values_list("action", flat=True)
        .order_by("id")
    ) == ["hub.halt", "hub.release"]


def test_the_kill_command_kills_an_agent_from_the_shell(hub, api, remote_repo):
    import subprocess
    import sys

    from tests.conftest import ROOT, subprocess_env

    agent_id = spawn(api, remote_repo)
    wait_until_output(agent_id, "started")

    result = subprocess.run(
        [sys.executable, "manage.py", "kill", agent_id, "--reason", "cli test"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stderr
    assert "killed" in result.stdout
    assert Agent.objects.get(id=agent_id).state == "killed"
    assert AuditEvent.objects.get(action="agent.kill").actor == "cli"
    assert os.path.exists(ROOT / "manage.py")
