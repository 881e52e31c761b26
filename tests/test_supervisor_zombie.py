"""The node supervisor: a node whose lease lapsed (a zombie) must not touch the agent.

A lease lapses while its holder is still alive: a long GC pause, a frozen
process, a network partition from the database. Another node then recovers
the agent and may run it again. When the old holder wakes, its run and its
supervisor still hold the ``AgentRun``; nothing it does may change the agent
row, the new owner's sandbox or the new owner's worktree.
"""

import os
import signal
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from agents import workspace
from agents.leases import agents_claim
from agents.models import Agent, AgentState
from agents.reconciler import agents_recover_lapsed
from agents.runner import AgentRun
from agents.sandboxes.cgroups import GROUP_PARENT, AgentCgroup
from agents.sandboxes.local import cgroup_name, labelled_pids
from agents.services import agent_terminate
from tests.conftest import subprocess_env, wait_for_state, wait_until
from tests.launcher import Processes
from tests.runs import run_in_thread, script_agent_queue


def queue(repository: Path, pool: str, **fields) -> str:
    with override_settings(FLOTILLA_NODE_POOL=pool):
        return script_agent_queue(repository, task_id="zombie", **fields)


def sandbox_left(agent_id: str) -> list[int]:
    return [*labelled_pids(agent_id), *AgentCgroup(cgroup_name(agent_id)).pids()]


def worktree_started(agent_id: str) -> bool:
    agent = Agent.objects.get(id=agent_id)
    path = workspace.worktree_path(agent_id=agent_id, task_id=agent.task_id)
    return (path / "started.txt").exists()


@pytest.fixture
def pool():
    return f"zombie-{uuid.uuid4().hex[:8]}"


@pytest.mark.django_db(transaction=True)
@override_settings(FLOTILLA_RETRY_BACKOFF_S=600)
def test_a_run_whose_lease_was_recovered_does_not_end_the_requeued_agent(remote_repo, pool):
    agent_id = queue(remote_repo, pool, max_retries=2)
    (claimed,) = agents_claim(node="node-zombie", limit=1, pool=pool)
    zombie = run_in_thread(AgentRun(agent=claimed))
    wait_for_state(agent_id, AgentState.RUNNING, timeout=60)
    wait_until(lambda: worktree_started(agent_id), timeout=60, what="the sandbox to work")

    # node-zombie goes silent (a pause); any other node of the pool recovers the agent.
    Agent.objects.filter(id=agent_id).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    report = agents_recover_lapsed(lease_s=15, pool=pool)
    assert report.retried == [agent_id]
    # The old run wakes up and sees its sandbox gone.
    zombie.join(timeout=60)
    assert not zombie.is_alive()

    agent = Agent.objects.get(id=agent_id)
    # The retry recovery decided on stands: queued for attempt 1, not ended by the old run.
    assert (agent.state, agent.attempt) == (AgentState.QUEUED, 1), agent.error


class PoolNode(Processes):
    """``runhub --role worker`` under a node name and DATA_DIR of its own, in a pool the test names.

    Each node has its own DATA_DIR, as each machine of a hub does (docs/scaling.md):
    sandboxes and worktrees are named per DATA_DIR.
    """

    def __init__(self, log_dir: Path, pool: str) -> None:
        self.node = f"zmb-{uuid.uuid4().hex[:8]}"
        self.data_dir = log_dir / self.node
        self.data_dir.mkdir(mode=0o700)
        env = {
            **subprocess_env(),
            "DATA_DIR": str(self.data_dir),
            "FLOTILLA_NODE_NAME": self.node,
            "FLOTILLA_NODE_POOL": pool,
            "Q_CLUSTER_NAME": self.node,
            "FLOTILLA_WORKERS": "1",
            "FLOTILLA_DEFAULT_TIMEOUT_S": "600",
            "FLOTILLA_NODE_LEASE_S": "3",
            "FLOTILLA_NODE_HEARTBEAT_S": "0.5",
            "FLOTILLA_RETRY_BACKOFF_S": "0",
        }
        super().__init__(env=env, log_dir=log_dir, prefix=f"{self.node}-")


@pytest.fixture
def two_nodes(transactional_db, tmp_path, pool):
    nodes = [PoolNode(tmp_path, pool), PoolNode(tmp_path, pool)]
    yield nodes
    for node in nodes:
        for process in node.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGCONT)
        node.kill()
    for agent in Agent.objects.filter(pool=pool).exclude(state__in=["completed", "failed"]):
        agent_terminate(agent_id=agent.id, reason="test teardown")


def node_worktree(node: PoolNode, agent_id: str) -> Path:
    return node.data_dir / "worktrees" / f"agent-{agent_id}-zombie"


def node_sandbox(agent_id: str) -> list[int]:
    """Processes in the agent's cgroup, under any hub's branch (each node is a hub id)."""
    root = Path(settings.FLOTILLA_CGROUP_ROOT) / "freezer" / GROUP_PARENT
    return [
        int(pid)
        for procs in root.glob(f"*/{cgroup_name(agent_id)}/cgroup.procs")
        for pid in procs.read_text().split()
    ]


def test_a_frozen_node_that_wakes_leaves_the_new_owners_run_alone(two_nodes, remote_repo, pool):
    first, second = two_nodes
    first.start_worker()
    agent_id = queue(remote_repo, pool, max_retries=2)
    wait_for_state(agent_id, AgentState.RUNNING, timeout=60)
    wait_until(
        lambda: (node_worktree(first, agent_id) / "started.txt").exists(),
        timeout=60,
        what="the sandbox to work",
    )
    assert Agent.objects.get(id=agent_id).node == first.node
    second.start_worker()

    # The first node's supervisor freezes (a GC pause, SIGSTOP); its lease lapses and
    # the second node recovers the agent and runs it again, in a worktree at the same path.
    frozen = Agent.objects.get(id=agent_id).supervisor_pid
    os.kill(frozen, signal.SIGSTOP)
    try:
        wait_until(
            lambda: Agent.objects.filter(
                id=agent_id, node=second.node, state=AgentState.RUNNING, attempt=1
            ).exists(),
            timeout=60,
            what="the second node to run the agent's retry",
        )
        wait_until(
            lambda: (node_worktree(second, agent_id) / "started.txt").exists(),
            timeout=60,
            what="the retry to work",
        )
    finally:
        os.kill(frozen, signal.SIGCONT)

    # The first node wakes: its next heartbeat finds the lease gone, it lets go
    # of the agent and its run ends. Whatever it did by then is done.
    wait_until(
        lambda: f"let go of agent {agent_id}" in first.log("worker", tail=1_000_000),
        timeout=60,
        what="the woken node to let go of the agent",
    )
    wait_until(
        lambda: f"the run of agent {agent_id} ended" in first.log("worker", tail=1_000_000),
        timeout=60,
        what="the woken node's run to end",
    )
    agent = Agent.objects.get(id=agent_id)
    assert (agent.state, agent.node) == (AgentState.RUNNING, second.node), agent.error
    assert node_sandbox(agent_id), "the new owner's sandbox was killed"
    assert (node_worktree(second, agent_id) / "started.txt").exists(), "the worktree was removed"
