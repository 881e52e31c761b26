"""The node supervisor: hand-back on SIGTERM, and kills that land while an agent spawns.

A node stopped with SIGTERM hands its agents back "without spending a
retry"; the next claim must be able to run them, also when the agent had
already committed (a Claude agent's commit tool, a script agent stopped in
its gates). A kill is "marked final first, then every process killed": an
agent killed between its claim and its sandbox's start must leave nothing
behind once its run has stopped.
"""

import threading
import uuid

import pytest
from django.test import override_settings

from agents import workspace
from agents.leases import agents_claim
from agents.models import Agent, AgentState
from agents.runner import AgentRun, agent_run
from agents.sandboxes.cgroups import AgentCgroup, agent_cgroup_names
from agents.sandboxes.local import cgroup_name
from agents.services import agent_terminate
from agents.supervisor import NodeSupervisor, SupervisorConfig
from tests.conftest import wait_for_state, wait_until
from tests.runs import run_in_thread, script_agent_queue

FINAL = (AgentState.COMPLETED, AgentState.FAILED, AgentState.KILLED)


@pytest.fixture
def pool():
    name = f"handback-{uuid.uuid4().hex[:8]}"
    with override_settings(FLOTILLA_NODE_POOL=name):
        yield name


@pytest.mark.django_db(transaction=True)
def test_an_agent_handed_back_after_a_commit_runs_again(remote_repo, pool):
    agent_id = script_agent_queue(remote_repo, task_id="handback")
    config = SupervisorConfig(
        node=f"node-{pool}", pool=pool, capacity=2, lease_s=60, heartbeat_s=5, poll_s=0.2
    )
    supervisor = NodeSupervisor(config)
    serving = threading.Thread(target=supervisor.serve, daemon=True)
    serving.start()
    try:
        wait_for_state(agent_id, AgentState.RUNNING, timeout=60)
        path = workspace.worktree_path(agent_id=agent_id, task_id="handback")
        wait_until(lambda: (path / "started.txt").exists(), timeout=60, what="the sandbox")
        # What the commit tool of a Claude agent does mid-run (or delivery, in the gates).
        assert workspace.worktree_commit(path=path, message="work in progress")
    finally:
        supervisor.stop()  # SIGTERM
        serving.join(timeout=60)
    handed_back = Agent.objects.get(id=agent_id)
    assert handed_back.state == AgentState.QUEUED, handed_back.error

    # Any node claims the agent again, and it runs.
    (again,) = agents_claim(node="node-next", limit=1, pool=pool)
    thread = run_in_thread(AgentRun(agent=again))
    try:
        agent = wait_until(
            lambda: (
                a
                if (a := Agent.objects.get(id=agent_id)).state in (AgentState.RUNNING, *FINAL)
                else None
            ),
            timeout=60,
            what="the agent's next run to start or end",
        )
    finally:
        agent_terminate(agent_id=agent_id, reason="test teardown")
        thread.join(timeout=60)
    assert agent.state == AgentState.RUNNING, agent.error


@pytest.mark.django_db(transaction=True)
def test_a_kill_while_the_agent_spawns_leaves_no_worktree_or_cgroup(remote_repo, pool):
    agent_id = script_agent_queue(remote_repo, task_id="handback")
    (claimed,) = agents_claim(node="node-a", limit=1, pool=pool)
    # The operator's kill lands after the claim, before the run has started its sandbox.
    assert agent_terminate(agent_id=agent_id, reason="operator").terminated

    agent_run(run=AgentRun(agent=claimed))

    assert Agent.objects.get(id=agent_id).state == AgentState.KILLED
    worktrees = [path for path in workspace.worktree_dirs() if agent_id in path.name]
    group = AgentCgroup(cgroup_name(agent_id))
    left = {
        "worktrees": [path.name for path in worktrees],
        "cgroup": group.name in agent_cgroup_names(),
        "processes": group.pids(),
    }
    # What the reconciler would remove later; this test leaves nothing on the host.
    for path in worktrees:
        workspace.worktree_discard(path)
    if left["cgroup"]:
        group.remove()
    assert left == {"worktrees": [], "cgroup": False, "processes": []}
