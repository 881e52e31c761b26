"""The docker warm pool: spawns claim started containers, and nothing of a slot is ever leaked.

The pool runs in a hub of its own (daphne and a django-q2 cluster on the test
database, with a queue and a node name of their own), because the pool is a
setting of the worker that starts the sandboxes.
"""

import subprocess
import threading
import uuid
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings
from rest_framework.authtoken.models import Token

from agents.models import FINAL_STATES, Agent, AgentState
from agents.reconciler import agents_reconcile
from agents.sandboxes import warmpool
from agents.sandboxes.base import SandboxSpec
from agents.sandboxes.docker import DockerSandbox, docker_pool_drain, docker_pool_refill
from agents.services import agent_terminate
from audit.models import AuditEvent
from tests.conftest import git, spawn_body, subprocess_env, wait_for_state, wait_until
from tests.launcher import Processes, free_port

pytestmark = pytest.mark.docker


def container_exists(reference: str) -> bool:
    """Whether `docker inspect` (the real CLI) still finds a container by id or name."""
    found = subprocess.run(["docker", "inspect", reference], capture_output=True)
    return found.returncode == 0


def ready_containers(node: str) -> set[str]:
    """Container ids of the node's ready, unclaimed pool slots."""
    return {
        record["id"]
        for slot in warmpool.slots(node)
        if slot.claimant() is None and (record := slot.container())
    }


def slot_mounts(node: str) -> list[Path]:
    """Mounts below the pool root (the root's own self-bind excluded)."""
    root = warmpool.pool_root(node)
    return [path for path in warmpool.mounts_under(root) if path != root]


class PoolHub(Processes):
    """daphne and a worker node with FLOTILLA_DOCKER_WARM_POOL set, on its own node and pool."""

    def __init__(self, log_dir: Path, pool_size: int) -> None:
        self.node = f"warm-{uuid.uuid4().hex[:8]}"
        env = {
            **subprocess_env(),
            "FLOTILLA_NODE_NAME": self.node,
            "Q_CLUSTER_NAME": self.node,
            "FLOTILLA_NODE_POOL": self.node,
            "FLOTILLA_WORKERS": "4",
            "FLOTILLA_DOCKER_WARM_POOL": str(pool_size),
            "FLOTILLA_DEFAULT_TIMEOUT_S": "60",
        }
        super().__init__(env=env, log_dir=log_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""

    def start_hub(self) -> None:
        # runhub --role worker reconciles first, which asks a worker to fill the pool.
        self.start_worker()
        self.start_web(self.port)

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        response = requests.post(
            f"{self.url}/api/v1/{path}",
            json=body,
            headers={"Authorization": f"Token {self.token}"},
            timeout=10,
        )
        return response.status_code, response.json()


@pytest.fixture
def pool_hub(transactional_db, tmp_path):
    hub = PoolHub(tmp_path, pool_size=1)
    user = get_user_model().objects.create_user("pool-operator", password="x" * 12)
    hub.token = Token.objects.create(user=user).key
    hub.start_hub()
    yield hub
    hub.kill()
    for agent in Agent.objects.exclude(state__in=FINAL_STATES):
        agent_terminate(agent_id=agent.id, reason="test teardown")
    docker_pool_drain(node=hub.node)
    assert warmpool.mounts_under(warmpool.pool_root(hub.node)) == []
    assert not warmpool.pool_root(hub.node).exists()


def test_the_warm_pool_is_off_by_default(hub, api, remote_repo):
    assert settings.FLOTILLA_DOCKER_WARM_POOL == 0
    agent_id = api.post(
        "/api/v1/agents", spawn_body(remote_repo, "echo cold", sandbox="docker"), format="json"
    ).json()["agent_id"]

    agent = wait_for_state(agent_id, AgentState.COMPLETED)

    assert "warm_slot" not in agent.sandbox_handle
    assert not warmpool.pool_root(settings.FLOTILLA_NODE_NAME).exists()


def test_a_spawn_claims_a_warm_container_completes_pushed_and_the_pool_refills(
    pool_hub, remote_repo
):
    wait_until(lambda: len(ready_containers(pool_hub.node)) == 1, 20, "the pool to fill")
    (warm,) = ready_containers(pool_hub.node)
    script = (
        "echo hello > hello.txt; id -u > uid.txt; "
        "(echo hijack > .git) 2>/dev/null || echo protected > git.txt"
    )

    status, body = pool_hub.post("agents", spawn_body(remote_repo, script, sandbox="docker"))
    agent = wait_for_state(body["agent_id"], AgentState.COMPLETED)

    assert status == 202
    assert agent.sandbox_handle["container_id"] == warm
    branch = f"flotilla/{agent.id}"
    assert git(remote_repo, "show", f"{branch}:hello.txt") == "hello"
    assert git(remote_repo, "show", f"{branch}:uid.txt") == str(settings.FLOTILLA_SANDBOX_UID)
    assert git(remote_repo, "show", f"{branch}:git.txt") == "protected"
    wait_until(lambda: not container_exists(warm), 20, "the warm container removed")
    assert not Path(agent.sandbox_handle["warm_slot"]).exists()
    assert slot_mounts(pool_hub.node) == []
    # The claim asked a worker for a new container: the pool is full again.
    wait_until(lambda: len(ready_containers(pool_hub.node)) == 1, 20, "the pool refilled")
    assert warm not in ready_containers(pool_hub.node)


def test_killing_a_warm_pool_agent_removes_its_container_at_once_and_leaves_no_mount(
    pool_hub, remote_repo
):
    wait_until(lambda: len(ready_containers(pool_hub.node)) == 1, 20, "the pool to fill")
    _, body = pool_hub.post("agents", spawn_body(remote_repo, "sleep 300", sandbox="docker"))
    agent = wait_for_state(body["agent_id"], AgentState.RUNNING)
    container = agent.sandbox_handle["container_id"]
    slot = Path(agent.sandbox_handle["warm_slot"])
    assert container_exists(f"flotilla-agent-{agent.id}")
    assert slot_mounts(pool_hub.node) != []

    status, _ = pool_hub.post(f"agents/{agent.id}/kill", {"reason": "runaway"})
    # Looked at right after the answer: the kill removes the container synchronously.
    gone = not container_exists(container)

    assert status == 200
    assert gone
    assert wait_for_state(agent.id, AgentState.KILLED).state == AgentState.KILLED
    assert not slot.exists()
    assert [path for path in slot_mounts(pool_hub.node) if slot in (path, *path.parents)] == []
    audit = AuditEvent.objects.get(action="agent.kill", target=f"agent:{agent.id}")
    assert audit.reason == "runaway" and audit.data["killed"] is True


@pytest.fixture
def pool_node(db):
    node = f"warm-{uuid.uuid4().hex[:8]}"
    with override_settings(FLOTILLA_NODE_NAME=node, FLOTILLA_DOCKER_WARM_POOL=2):
        yield node
        docker_pool_drain(node=node)
    assert warmpool.mounts_under(warmpool.pool_root(node)) == []
    assert not warmpool.pool_root(node).exists()


def test_the_reconciler_releases_slots_claimed_by_agents_that_are_gone(pool_node, tmp_path):
    docker_pool_refill(node=pool_node)
    backend = DockerSandbox()
    handles = []
    for index in range(2):
        worktree = tmp_path / f"worktree-{index}"
        worktree.mkdir()
        (worktree / "work.txt").write_text("precious\n")
        # The limits of a pool container: the defaults, as the runner passes them.
        spec = SandboxSpec(
            agent_id=str(uuid.uuid4()),
            workspace=worktree,
            max_file_bytes=settings.FLOTILLA_MAX_WORKTREE_MB << 20,
        )
        handles.append(backend.start(spec))
    assert all(handle.get("warm_slot") for handle in handles)
    # No agent row exists for either claim (its hub died); one container is even gone already.
    subprocess.run(
        ["docker", "rm", "-f", handles[1]["container_id"]], check=True, capture_output=True
    )

    report = agents_reconcile(node=pool_node)

    for handle in handles:
        assert not container_exists(handle["container_id"])
        assert not Path(handle["warm_slot"]).exists()
        assert (Path(handle["workspace"]) / "work.txt").read_text() == "precious\n"
    assert slot_mounts(pool_node) == []
    assert f"docker:{handles[0]['agent_id']}" in report.sandboxes_removed
    assert f"docker-pool:{Path(handles[1]['warm_slot']).name}" in report.sandboxes_removed
    assert AuditEvent.objects.filter(
        action="sandbox.remove", target=f"agent:{handles[1]['agent_id']}"
    ).exists()


def test_a_warm_slot_goes_to_exactly_one_of_many_racing_claims(pool_node):
    docker_pool_refill(node=pool_node, size=1)
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def claim(claimant: str) -> None:
        barrier.wait()
        if warmpool.slot_claim(node=pool_node, claimant=claimant):
            winners.append(claimant)

    threads = [threading.Thread(target=claim, args=(f"agent-{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(winners) == 1
    (slot,) = warmpool.slots(pool_node)
    assert slot.claimant() == winners[0]
    docker_pool_refill(node=pool_node, size=1)
    assert len(warmpool.slots(pool_node)) == 2  # the claimed slot is not counted as ready
    warmpool.slot_release(slot)  # as its agent's cleanup would (its container goes with the drain)
