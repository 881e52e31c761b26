"""Faults on a multi-node hub: a worker SIGKILLed, PostgreSQL restarted, a web process SIGKILLed.

Afterwards every agent is final or running, none is lost, no branch is
pushed twice, and (once the reconciler ran) no sandbox is left behind.
"""

import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.reliability.cluster import (
    Cluster,
    PostgresServer,
    agent_cgroups,
    sandbox_processes,
    wait_until,
)
from tests.reliability.conftest import remote_branch_commits

FINAL = {"completed", "failed", "killed"}
WORK = "sleep {seconds}; echo done > done.txt"


def assert_nothing_lost_or_pushed_twice(cluster, repository, ids: list[str]) -> dict:
    agents = cluster.agents()
    assert set(ids) <= set(agents), "an accepted spawn has no agent row"
    for agent_id in ids:  # each test pushes to a repository of its own
        agent = agents[agent_id]
        assert agent["state"] in FINAL | {"running"}, (agent_id, agent)
        commits = remote_branch_commits(repository, agent_id)
        if agent["state"] == "completed":
            # One push of one commit: a second delivery would have added another.
            assert commits == 1, (agent_id, commits)
            head = subprocess.run(
                ["git", "rev-parse", f"flotilla/{agent_id}"],
                cwd=repository,
                capture_output=True,
                text=True,
            ).stdout.strip()
            assert agent["result"]["pushed_commit"] == head
        else:
            assert commits == 0, (agent_id, agent)
    return agents


def assert_no_orphan_sandbox(cluster, ids: list[str]) -> None:
    for worker in cluster.workers:
        cluster.manage(worker, "reconcile", "--no-schedule")
    live = [agent_id for agent_id, agent in cluster.agents().items() if agent["state"] == "running"]
    finished = [agent_id for agent_id in ids if agent_id not in live]
    assert not sandbox_processes(finished)
    assert not agent_cgroups(finished)


def test_a_worker_sigkilled_mid_run_loses_nothing_and_leaves_no_sandbox(cluster, repository):
    web_1, web_2 = cluster.webs
    ids = [
        cluster.spawn(
            web_1 if index % 2 else web_2,
            repository,
            WORK.format(seconds=6),
            task_id=f"crash{index}",
            max_retries=index % 2,
        )
        for index in range(10)
    ]
    wait_until(lambda: set(cluster.states(ids).values()) == {"running"}, 60, "running agents")
    on_b = [
        agent_id
        for agent_id, agent in cluster.agents().items()
        if agent["node"] == "node-b" and agent_id in ids
    ]
    assert on_b, "node-b runs some of the agents"

    node_b = cluster.workers[1]
    cluster.kill(node_b)  # SIGKILL of the process group: runhub and everything it started
    wait_until(lambda: not sandbox_processes(on_b), 10, "node-b's sandboxes dying with it")
    cluster.start_worker(node_b)  # reconciles node-b first, as runhub --role worker does
    cluster.wait_listening(node_b)

    wait_until(lambda: set(cluster.states(ids).values()) <= FINAL, 90, "every agent final")
    agents = assert_nothing_lost_or_pushed_twice(cluster, repository, ids)
    for agent_id in ids:
        agent = agents[agent_id]
        if agent_id in on_b and agent["state"] == "failed":
            assert "hub restarted" in agent["error"]
        else:
            assert agent["state"] == "completed", (agent_id, agent)
    retried = cluster.query("SELECT count(*) FROM audit_auditevent WHERE action = 'agent.retry'")
    assert retried[0][0] == sum(1 for agent_id in on_b if ids.index(agent_id) % 2)
    assert_no_orphan_sandbox(cluster, ids)


@pytest.fixture(scope="module")
def cluster():
    """The conftest's cluster, on a PostgreSQL server of its own: this module restarts it."""
    server = PostgresServer.private()
    running = Cluster(workers=2, webs=2, capacity=22, server=server)
    try:
        yield running.start()
    finally:
        running.stop()
        server.stop()


def test_a_postgresql_restart_mid_run_loses_nothing_and_kills_still_reach_the_nodes(
    cluster, repository
):
    web_1, web_2 = cluster.webs
    ids = [
        cluster.spawn(web_1, repository, WORK.format(seconds=4), task_id=f"pg{index}")
        for index in range(6)
    ]
    wait_until(lambda: set(cluster.states(ids).values()) == {"running"}, 60, "running agents")

    cluster.server.restart()

    wait_until(lambda: set(cluster.states(ids).values()) <= FINAL, 90, "every agent final")
    agents = assert_nothing_lost_or_pushed_twice(cluster, repository, ids)
    assert {agents[agent_id]["state"] for agent_id in ids} == {"completed"}, agents
    # The kill listeners reconnected: a kill from a web process still reaches its node at once.
    sleeper = cluster.spawn(web_2, repository, "sleep 300", task_id="after-restart")
    wait_until(lambda: cluster.states([sleeper]) == {sleeper: "running"}, 60, "a new agent")
    wait_until(lambda: sandbox_processes([sleeper]), 30, "its sandbox")
    killed = cluster.api(web_1, "POST", f"agents/{sleeper}/kill", json={"reason": "after"})
    assert killed.status_code == 200, killed.text
    wait_until(lambda: not sandbox_processes([sleeper]), 5, "its processes gone", every=0.005)
    assert_no_orphan_sandbox(cluster, [*ids, sleeper])


def test_a_web_process_sigkilled_during_a_spawn_burst_loses_no_accepted_agent(cluster, repository):
    web_1, web_2 = cluster.webs
    before = set(cluster.states())
    accepted: list[str] = []
    lock = threading.Lock()

    def spawn(index: int) -> None:
        try:
            agent_id = cluster.spawn(
                web_2, repository, "echo burst > burst.txt", task_id=f"burst{index}"
            )
        except (requests.RequestException, AssertionError):
            return  # the web process died under this request: the client saw no answer
        with lock:
            accepted.append(agent_id)

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(spawn, index) for index in range(40)]
        wait_until(lambda: len(accepted) >= 8, 60, "the burst under way")
        cluster.kill(web_2)
        for future in futures:
            future.result()
    assert 8 <= len(accepted) < 40
    cluster.start_web(web_2)

    ids = sorted(set(cluster.states()) - before)
    assert set(accepted) <= set(ids)
    # A spawn committed just before the SIGKILL woke no node: a poll finds it.
    wait_until(
        lambda: set(cluster.states(ids).values()) == {"completed"},
        90,
        "every agent of the burst completed",
    )
    assert_nothing_lost_or_pushed_twice(cluster, repository, ids)
    assert_no_orphan_sandbox(cluster, ids)
