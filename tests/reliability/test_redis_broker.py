"""REDIS_URL: the django-q2 broker on Redis (127.0.0.1:6379) works for a web and a worker node.

Agent runs never pass through the broker: a node supervisor claims them from
the database, so a worker that is down leaves them queued in the database,
never in a Redis list that a crash could empty.
"""

import pytest
import redis

from tests.reliability.cluster import Cluster, sandbox_processes, wait_until
from tests.reliability.conftest import remote_branch_commits

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def redis_cluster():
    if not redis_available():
        pytest.skip("no Redis server on 127.0.0.1:6379")
    running = Cluster(workers=1, webs=1, capacity=4, redis_url=REDIS_URL)
    try:
        yield running.start()
    finally:
        running.stop()
        # The queue's keys are named after this cluster's own queue name.
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"*rel-{running.id}*"):
            client.delete(key)


def test_agents_queued_through_redis_run_on_the_worker_node_and_kills_reach_it(
    redis_cluster, repository
):
    (web,) = redis_cluster.webs
    queue = redis.Redis.from_url(REDIS_URL)
    ids = [
        redis_cluster.spawn(web, repository, "echo via-redis > r.txt", task_id=f"r{index}")
        for index in range(3)
    ]
    wait_until(lambda: set(redis_cluster.states(ids).values()) == {"completed"}, 60, "completed")
    assert all(remote_branch_commits(repository, agent_id) == 1 for agent_id in ids)
    assert {redis_cluster.agents()[agent_id]["node"] for agent_id in ids} == {"node-a"}
    # With the worker down, a spawned agent waits as a queued row, in no
    # broker at all; the worker claims it when it is back.
    (node,) = redis_cluster.workers
    redis_cluster.kill(node)
    waiting = redis_cluster.spawn(web, repository, "echo later > l.txt", task_id="r-later")
    assert redis_cluster.states([waiting]) == {waiting: "queued"}
    assert queue.llen(f"django_q:rel-{redis_cluster.id}:q") == 0
    assert redis_cluster.query("SELECT count(*) FROM django_q_ormq") == [(0,)]
    redis_cluster.start_worker(node)
    redis_cluster.wait_listening(node)
    wait_until(lambda: redis_cluster.states([waiting]) == {waiting: "completed"}, 60, "completed")

    sleeper = redis_cluster.spawn(web, repository, "sleep 300", task_id="r-kill")
    wait_until(lambda: sandbox_processes([sleeper]), 60, "the sleeper's sandbox")
    killed = redis_cluster.api(web, "POST", f"agents/{sleeper}/kill", json={"reason": "redis"})
    assert killed.status_code == 200, killed.text
    wait_until(lambda: not sandbox_processes([sleeper]), 5, "its processes gone", every=0.005)
