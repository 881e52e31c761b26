"""Kills on a hub of two web processes and two worker nodes: routed to the agent's node.

How fast is a benchmark figure, not a test: bench/cross_node_kill.py (one
agent at a time through either web process) and bench/killall.py.
"""

import threading

from tests.reliability.cluster import agent_cgroups, sandbox_processes, wait_until

SLEEPER = "echo started; sleep 300"


def test_forty_agents_spread_over_two_workers_all_stop_on_one_kill_all(cluster, repository):
    web_1, web_2 = cluster.webs
    ids = [
        cluster.spawn(web_1 if index % 2 else web_2, repository, SLEEPER, task_id=f"k{index}")
        for index in range(40)
    ]
    wait_until(lambda: set(cluster.states(ids).values()) == {"running"}, 90, "40 running agents")
    wait_until(lambda: len(sandbox_processes(ids)) == 40, 30, "a sandbox process per agent")
    nodes = {agent["node"] for agent in cluster.agents().values()}
    assert nodes == {"node-a", "node-b"}, "both worker nodes must run agents"

    answer: dict = {}

    def kill_all() -> None:
        answer["response"] = cluster.api(
            web_1, "POST", "agents/kill-all", json={"reason": "reliability"}
        )

    request = threading.Thread(target=kill_all)
    request.start()
    # Each look scans /proc: looking more often than every 20 ms would take
    # a core of this 2-core machine away from the kill being measured.
    try:
        wait_until(lambda: not sandbox_processes(ids), 10, "no sandbox process", every=0.02)
    except AssertionError as error:
        request.join(60)
        states = sorted(cluster.states(ids).values())
        raise AssertionError(
            f"processes left: {sandbox_processes(ids)}; states {states}; "
            f"kill-all answered: {answer.get('response') and answer['response'].text[:500]}"
        ) from error
    request.join(30)

    response = answer["response"]
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 40 and response.json()["killed"] == 40
    assert set(cluster.states(ids).values()) == {"killed"}
    # The web process ran none of them: every kill went the routed path, to the agent's node.
    routed = cluster.query(
        "SELECT target, data->>'routed_to' FROM audit_auditevent "
        "WHERE action = 'agent.kill' AND target = ANY(%s)",
        [f"agent:{agent_id}" for agent_id in ids],
    )
    agents = cluster.agents()
    assert dict(routed) == {f"agent:{agent_id}": agents[agent_id]["node"] for agent_id in ids}
    # Each node cleans up after the kills it executed: cgroups gone, and an audit entry each.
    wait_until(lambda: not agent_cgroups(ids), 15, "the agents' cgroups removed")
    query = (
        "SELECT data->>'node', count(*) FROM audit_auditevent "
        "WHERE action = 'agent.sandbox_kill' GROUP BY 1"
    )
    wait_until(lambda: sum(n for _, n in cluster.query(query)) >= 40, 60, "every node's cleanup")
    executed = cluster.query(query)
    assert dict(executed) == {
        "node-a": nodes_count(cluster, "node-a", ids),
        "node-b": nodes_count(cluster, "node-b", ids),
    }


def nodes_count(cluster, node: str, ids: list[str]) -> int:
    return sum(
        1
        for agent_id, agent in cluster.agents().items()
        if agent_id in ids and agent["node"] == node
    )


def test_a_kill_from_a_web_process_is_executed_by_the_agents_node(cluster, repository):
    web_1, web_2 = cluster.webs
    ids = [cluster.spawn(web_1, repository, SLEEPER, task_id=f"one{index}") for index in range(4)]
    wait_until(lambda: set(cluster.states(ids).values()) == {"running"}, 60, "running agents")
    wait_until(lambda: len(sandbox_processes(ids)) == 4, 30, "their sandbox processes")
    for agent_id in ids:
        response = cluster.api(web_2, "POST", f"agents/{agent_id}/kill", json={"reason": "one"})
        assert response.status_code == 200, response.text
        wait_until(
            lambda agent_id=agent_id: not sandbox_processes([agent_id]),
            30,
            "the agent's processes gone",
        )
    audit = cluster.query(
        "SELECT data->>'routed_to' FROM audit_auditevent "
        "WHERE action = 'agent.kill' AND target = ANY(%s)",
        [f"agent:{agent_id}" for agent_id in ids],
    )
    assert sorted(row[0] for row in audit) == sorted(cluster.agents()[i]["node"] for i in ids)
