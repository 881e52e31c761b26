"""The node supervisor: claims from the database, leases, retries with backoff, and a node
that stops or dies takes nothing with it and leaves nothing behind.

The tests with real worker nodes start ``runhub --role worker`` on a node and
pool of their own, so the session's worker node never claims their agents.
"""

import os
import signal
import subprocess
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from agents import workspace
from agents.leases import agents_claim, agents_heartbeat
from agents.lifecycle import agent_transition
from agents.models import Agent, AgentEvent, AgentState
from agents.reconciler import NODE_LOST, agents_recover_lapsed
from agents.runner import AgentRun, agent_run
from agents.sandboxes.cgroups import AgentCgroup
from agents.sandboxes.local import cgroup_name, labelled_pids
from agents.services import agent_requeue, agent_terminate
from tests.conftest import git, subprocess_env, wait_for_state, wait_until
from tests.launcher import Processes, node_processes
from tests.runs import LONG, script_agent_queue

FINAL = (AgentState.COMPLETED, AgentState.FAILED, AgentState.KILLED)


def queue(repository: Path, count: int = 1, script: str = "true", **fields) -> list[str]:
    """Spawn ``count`` agents that no node takes until a test claims them."""
    return [
        script_agent_queue(repository, task_id=f"claim-{index}", script=script, **fields)
        for index in range(count)
    ]


def spawning_events(agent_id: str) -> int:
    return AgentEvent.objects.filter(agent_id=agent_id, data__to=AgentState.SPAWNING).count()


@pytest.fixture(autouse=True)
def own_pool():
    """Agents of a pool no other node in this test session claims or recovers."""
    with override_settings(FLOTILLA_NODE_POOL=f"claims-{uuid.uuid4().hex[:8]}"):
        yield


# --- claims -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@override_settings(MAX_CONCURRENT_AGENTS=100)
def test_nodes_claiming_at_once_take_every_agent_exactly_once(remote_repo):
    ids = queue(remote_repo, 30)
    claims: dict[str, list[str]] = {}
    start = threading.Barrier(3)

    def claim(node: str) -> None:
        start.wait()
        taken: list[str] = []
        try:
            while batch := agents_claim(node=node, limit=4):
                taken += [str(agent.id) for agent in batch]
        finally:
            connections.close_all()
        claims[node] = taken

    threads = [threading.Thread(target=claim, args=(f"node-{n}",)) for n in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    everything = [agent_id for taken in claims.values() for agent_id in taken]
    assert sorted(everything) == sorted(ids)
    for node, taken in claims.items():
        assert set(Agent.objects.filter(id__in=taken).values_list("node", flat=True)) <= {node}
    assert {spawning_events(agent_id) for agent_id in ids} == {1}


@pytest.mark.django_db(transaction=True)
def test_claims_take_the_highest_priority_first_then_the_oldest(remote_repo):
    (normal,) = queue(remote_repo, priority=5)
    (urgent,) = queue(remote_repo, priority=9)
    (low,) = queue(remote_repo, priority=1)
    (urgent_later,) = queue(remote_repo, priority=9)

    order = [str(agents_claim(node="node-a", limit=1)[0].id) for _ in range(4)]

    assert order == [urgent, urgent_later, normal, low]


@pytest.mark.django_db(transaction=True)
def test_a_node_claims_only_agents_of_its_own_pool(remote_repo, settings):
    with override_settings(FLOTILLA_NODE_POOL=f"{settings.FLOTILLA_NODE_POOL}-gpu"):
        (gpu,) = queue(remote_repo)
    (ours,) = queue(remote_repo)

    assert [str(a.id) for a in agents_claim(node="node-a", limit=5)] == [ours]
    gpu_pool = f"{settings.FLOTILLA_NODE_POOL}-gpu"
    assert [str(a.id) for a in agents_claim(node="node-g", limit=5, pool=gpu_pool)] == [gpu]


@pytest.mark.django_db(transaction=True)
def test_a_retry_waits_for_its_backoff_before_any_node_claims_it(remote_repo):
    (agent_id,) = queue(remote_repo, max_retries=2)
    (agent,) = agents_claim(node="node-a", limit=1)

    assert agent_requeue(agent=agent, reason="test: retry 1 of 2", attempt=1, delay_s=600)
    assert agents_claim(node="node-b", limit=1) == []

    # Once the backoff has passed, any node takes it.
    Agent.objects.filter(id=agent_id).update(run_after=timezone.now() - timedelta(seconds=1))
    (again,) = agents_claim(node="node-b", limit=1)
    assert str(again.id) == agent_id and again.attempt == 1 and again.node == "node-b"


# --- leases -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_names_the_agents_the_node_no_longer_holds(remote_repo):
    queue(remote_repo, 2)
    first, second = agents_claim(node="node-a", limit=2)
    agent_transition(agent_id=first.id, to=AgentState.KILLED, reason="operator")
    Agent.objects.filter(id=second.id).update(heartbeat_at=timezone.now() - timedelta(hours=1))

    lost = agents_heartbeat(node="node-a", agent_ids=[first.id, second.id])

    assert lost == {str(first.id)}
    renewed = Agent.objects.get(id=second.id).heartbeat_at
    assert renewed > timezone.now() - timedelta(minutes=5)


@pytest.mark.django_db(transaction=True)
def test_agents_of_a_node_whose_lease_lapsed_are_retried_or_failed_as_node_lost(
    remote_repo, settings
):
    (retried,) = queue(remote_repo, max_retries=1)
    (failed,) = queue(remote_repo)
    agents_claim(node="node-gone", limit=2)
    (alive,) = queue(remote_repo)
    agents_claim(node="node-alive", limit=1)
    # node-gone went silent a minute ago; node-alive renewed its lease just now.
    silent = timezone.now() - timedelta(minutes=1)
    Agent.objects.filter(node="node-gone").update(heartbeat_at=silent)

    report = agents_recover_lapsed(lease_s=15, pool=settings.FLOTILLA_NODE_POOL)

    assert report.retried == [retried] and report.failed == [failed]
    again = Agent.objects.get(id=retried)
    assert again.state == AgentState.QUEUED and again.attempt == 1 and again.node == ""
    assert AgentEvent.objects.filter(
        agent_id=retried, data__reason=f"{NODE_LOST}: retry 1 of 1"
    ).exists()
    lost = Agent.objects.get(id=failed)
    assert lost.state == AgentState.FAILED and lost.error == NODE_LOST
    assert Agent.objects.get(id=alive).state == AgentState.SPAWNING


@pytest.mark.django_db(transaction=True)
def test_a_sandbox_that_cannot_start_is_retried_with_backoff_then_fails_naming_it(remote_repo):
    (agent_id,) = queue(remote_repo, max_retries=1)
    broken = override_settings(
        FLOTILLA_SANDBOX_RO_BINDS=["/nonexistent-flotilla-bind"], FLOTILLA_RETRY_BACKOFF_S=0
    )

    with broken:
        (claimed,) = agents_claim(node="node-a", limit=1)
        agent_run(run=AgentRun(agent=claimed))

    retried = Agent.objects.get(id=agent_id)
    assert retried.state == AgentState.QUEUED and retried.attempt == 1
    event = AgentEvent.objects.filter(agent_id=agent_id, data__to=AgentState.QUEUED).last()
    assert "could not start" in event.data["reason"]
    assert "retry 1 of 1" in event.data["reason"]

    with broken:
        (claimed,) = agents_claim(node="node-a", limit=1)
        agent_run(run=AgentRun(agent=claimed))

    failed = Agent.objects.get(id=agent_id)
    assert failed.state == AgentState.FAILED
    assert "/nonexistent-flotilla-bind" in failed.error
    assert not [path for path in workspace.worktree_dirs() if agent_id in path.name]


# --- retries of the remote's refusals ------------------------------------------


def lock_branch(remote: Path, agent_id: str) -> Path:
    """What a push in progress at the remote leaves: the branch's lock file."""
    lock = remote / "refs" / "heads" / "flotilla" / f"{agent_id}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    return lock


def test_a_push_the_remote_refuses_for_a_while_is_retried_and_the_agent_completes(hub, remote_repo):
    with override_settings(FLOTILLA_NODE_POOL="default"):
        (agent_id,) = queue(remote_repo, script="echo work > work.txt; sleep 2", max_retries=2)
    wait_for_state(agent_id, AgentState.RUNNING, timeout=60)
    lock = lock_branch(remote_repo, agent_id)
    retried = AgentEvent.objects.filter(agent_id=agent_id, data__retry=1)

    wait_until(retried.exists, timeout=60, what="the push to be retried")
    lock.unlink()
    agent = wait_for_state(agent_id, FINAL, timeout=60)

    assert agent.state == AgentState.COMPLETED, agent.error
    assert "push failed" in retried.get().data["message"]
    assert "retry 1 of 2" in retried.get().data["message"]
    assert git(remote_repo, "show", f"flotilla/{agent_id}:work.txt") == "work"


def test_a_push_that_keeps_failing_fails_the_agent_and_keeps_its_work(hub, remote_repo):
    with override_settings(FLOTILLA_NODE_POOL="default"):
        (agent_id,) = queue(remote_repo, script="echo work > work.txt; sleep 2")
    wait_for_state(agent_id, AgentState.RUNNING, timeout=60)
    lock_branch(remote_repo, agent_id)

    agent = wait_for_state(agent_id, FINAL, timeout=60)

    assert agent.state == AgentState.FAILED
    assert "lock" in agent.error
    assert not AgentEvent.objects.filter(agent_id=agent_id, data__has_key="retry").exists()
    mirror = workspace.mirror_path(agent.repository)
    assert git(mirror, "show", f"refs/heads/flotilla/{agent_id}:work.txt") == "work"


# --- real worker nodes ----------------------------------------------------------


class WorkerNode(Processes):
    """``runhub --role worker`` on a node and pool of its own, in a session of its own."""

    def __init__(self, log_dir: Path) -> None:
        self.node = f"sup-{uuid.uuid4().hex[:8]}"
        env = {
            **subprocess_env(),
            "FLOTILLA_NODE_NAME": self.node,
            "FLOTILLA_NODE_POOL": self.node,
            "Q_CLUSTER_NAME": self.node,
            "FLOTILLA_WORKERS": "1",
            "FLOTILLA_DEFAULT_TIMEOUT_S": "600",
            # A loaded test machine may need more than the default 3 s to
            # clean up; the test checks the hand-back, not its time.
            "FLOTILLA_NODE_STOP_S": "30",
        }
        super().__init__(env=env, log_dir=log_dir, prefix=f"{self.node}-")
        self.process: subprocess.Popen | None = None

    def start_node(self) -> None:
        self.process = self.start_worker()

    def spawn(self, repository: Path, count: int, script: str = LONG, **fields) -> list[str]:
        with override_settings(FLOTILLA_NODE_POOL=self.node):
            return queue(repository, count, script=script, **fields)

    def node_pids(self) -> list[int]:
        return node_processes(self.env)


@pytest.fixture
def worker_node(transactional_db, tmp_path):
    node = WorkerNode(tmp_path)
    yield node
    node.kill()
    for agent in Agent.objects.filter(pool=node.node).exclude(state__in=["completed", "failed"]):
        agent_terminate(agent_id=agent.id, reason="test teardown")


def commands(pids: list[int]) -> list[str]:
    """Each process's state, parent, pending signals and command line, to explain a survivor."""
    found = []
    for pid in pids:
        try:
            status = dict(
                line.split(":\t", 1)
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line
            )
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        shown = {key: status.get(key, "?").strip() for key in ("State", "PPid", "SigPnd", "ShdPnd")}
        found.append(f"{pid} {shown} {command[:200]}")
    return found


def sandbox_left(agent_id: str) -> list[int]:
    return [*labelled_pids(agent_id), *AgentCgroup(cgroup_name(agent_id)).pids()]


# Process mechanics, the same on both databases; on PostgreSQL the reliability
# suite kills and restarts whole nodes.
@pytest.mark.one_database
def test_a_node_stopped_with_sigterm_hands_its_running_agents_back(worker_node, remote_repo):
    worker_node.start_node()
    ids = worker_node.spawn(remote_repo, 3)
    for agent_id in ids:
        wait_for_state(agent_id, AgentState.RUNNING, timeout=60)

    worker_node.process.send_signal(signal.SIGTERM)
    worker_node.process.wait(timeout=60)

    for agent_id in ids:
        agent = Agent.objects.get(id=agent_id)
        assert agent.state == AgentState.QUEUED and agent.attempt == 0, agent.error
        handed_back = AgentEvent.objects.filter(agent_id=agent_id, data__to=AgentState.QUEUED)
        assert "handed back" in handed_back.last().data["reason"]
        assert sandbox_left(agent_id) == []
    assert not [path for path in workspace.worktree_dirs() if any(i in path.name for i in ids)]
    assert worker_node.node_pids() == []

    # Handed back, not abandoned: the node's next start runs them again.
    worker_node.start_node()
    for agent_id in ids:
        wait_for_state(agent_id, AgentState.RUNNING, timeout=60)


# Process mechanics, the same on both databases; on PostgreSQL the reliability
# suite kills and restarts whole nodes.
@pytest.mark.one_database
def test_killing_a_worker_nodes_process_group_leaves_no_process_of_it(worker_node, remote_repo):
    worker_node.start_node()
    ids = worker_node.spawn(remote_repo, 3, max_retries=1)
    for agent_id in ids:
        wait_for_state(agent_id, AgentState.RUNNING, timeout=60)
    assert all(sandbox_left(agent_id) for agent_id in ids)

    os.killpg(worker_node.process.pid, signal.SIGKILL)
    worker_node.process.wait()

    def left() -> list[int]:
        return [*worker_node.node_pids(), *[pid for i in ids for pid in sandbox_left(i)]]

    try:
        wait_until(lambda: left() == [], timeout=30, what="every process of the killed node gone")
    except AssertionError:
        raise AssertionError(f"still running: {commands(left())}") from None

    # Restarted, the node recovers its agents (they may be retried) and runs them again.
    worker_node.start_node()
    for agent_id in ids:
        wait_until(
            lambda agent_id=agent_id: (
                Agent.objects.get(id=agent_id).attempt == 1
                and Agent.objects.get(id=agent_id).state == AgentState.RUNNING
            ),
            timeout=60,
            what="the agent running again as its retry",
        )


def test_with_default_settings_one_node_runs_max_concurrent_agents_at_once(
    hub, remote_repo, settings
):
    # The session's worker node runs with default settings, in the default pool.
    with override_settings(FLOTILLA_NODE_POOL="default"):
        ids = queue(remote_repo, settings.MAX_CONCURRENT_AGENTS, script=LONG)

    wait_until(
        lambda: Agent.objects.filter(id__in=ids, state=AgentState.RUNNING).count() == len(ids),
        timeout=120,
        what=f"all {len(ids)} agents running at once",
    )
