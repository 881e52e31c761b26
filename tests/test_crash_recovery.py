"""A hub whose worker and web processes are SIGKILLed recovers on restart and leaks nothing.

The hub runs as real processes (daphne and a django-q2 cluster) on a queue and
a node name of this test's own, so the session's worker cluster never takes
its tasks and its reconciler never touches another hub's sandboxes.
"""

import os
import signal
import uuid
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from agents import workspace
from agents.models import FINAL_STATES, Agent, AgentState
from agents.reconciler import HUB_RESTARTED
from agents.sandboxes.cgroups import AgentCgroup
from agents.sandboxes.local import cgroup_name, labelled_pids, local_live_agent_ids
from agents.services import agent_terminate
from audit.models import AuditEvent
from tests.conftest import git, subprocess_env, wait_until
from tests.launcher import Processes, free_port

LONG_SCRIPT = "echo started > started.txt; sleep 300"


class HubProcesses(Processes):
    """The web and worker processes of one hub, started and crashed like the real ones."""

    def __init__(self, log_dir: Path, node: str) -> None:
        env = {
            **subprocess_env(),
            "FLOTILLA_NODE_NAME": node,
            "FLOTILLA_WORKERS": "6",
            "Q_CLUSTER_NAME": f"crash-{node}",
            "FLOTILLA_NODE_POOL": f"crash-{node}",
        }
        super().__init__(env=env, log_dir=log_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""


def spawn_over_http(hub: HubProcesses, token: str, repository: Path, **options) -> str:
    body = {
        "task_id": "crash",
        "agent_type": "worker",
        "runtime": "script",
        "script": LONG_SCRIPT,
        "context": {"repository": str(repository), "branch": "main"},
        "options": {"timeout_s": 600, **options},
    }
    response = requests.post(
        f"{hub.url}/api/v1/agents",
        json=body,
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return response.json()["agent_id"]


def docker_containers(node: str) -> set[str]:
    from agents.sandboxes.docker import DockerSandbox

    return set(DockerSandbox().containers_by_agent(node=node))


@pytest.fixture
def crashable_hub(transactional_db, tmp_path):
    node = f"crash-{uuid.uuid4().hex[:8]}"
    hub = HubProcesses(tmp_path, node)
    user = get_user_model().objects.create_user("crash-operator", password="x" * 12)
    hub.token = Token.objects.create(user=user).key
    yield hub
    hub.kill()
    for agent in Agent.objects.exclude(state__in=FINAL_STATES):
        agent_terminate(agent_id=agent.id, reason="test teardown")


@pytest.mark.parametrize(
    "backends",
    [
        pytest.param(["bwrap"] * 5, id="bwrap"),
        pytest.param(
            ["bwrap", "bwrap", "bwrap", "docker", "docker"],
            id="bwrap+docker",
            marks=pytest.mark.docker,
        ),
    ],
)
def test_hub_killed_mid_run_recovers_on_restart_without_leaking_anything(
    crashable_hub, remote_repo, backends
):
    hub = crashable_hub
    node = hub.env["FLOTILLA_NODE_NAME"]
    worker = hub.start_worker()
    web = hub.start_web(hub.port)
    # Agents 0 and 3 may be retried; the others may not.
    retries = {0: 1, 3: 1}
    ids = [
        spawn_over_http(
            hub, hub.token, remote_repo, sandbox=backend, max_retries=retries.get(index, 0)
        )
        for index, backend in enumerate(backends)
    ]
    wait_until(
        lambda: all(Agent.objects.get(id=i).state == AgentState.RUNNING for i in ids),
        what="every agent running",
    )
    agents = {agent_id: Agent.objects.get(id=agent_id) for agent_id in ids}
    # Agent 1 has committed work that is not pushed yet (as a claude agent
    # may have mid-run): the crash must not lose it.
    precious = agents[ids[1]]
    wait_until(lambda: (Path(precious.worktree_path) / "started.txt").exists(), what="output")
    sha = workspace.worktree_commit(path=Path(precious.worktree_path), message="work so far")

    os.killpg(worker.pid, signal.SIGKILL)
    os.killpg(web.pid, signal.SIGKILL)
    worker.wait()
    web.wait()

    docker_ids = {i for i, backend in zip(ids, backends, strict=True) if backend == "docker"}
    if docker_ids:
        assert docker_containers(node) == docker_ids, "the crash should leave containers behind"
    assert all(Path(agent.worktree_path).exists() for agent in agents.values())

    # runhub --role worker reconciles its node before it claims anything.
    hub.start_worker()
    hub.start_web(hub.port)
    audited = AuditEvent.objects.filter(actor="system:reconciler")
    wait_until(
        lambda: audited.filter(action__in=("agent.fail", "agent.retry")).count() >= len(ids),
        what="the restarted node to reconcile",
    )

    again = {ids[0], ids[3]}
    targets = lambda action: {a.target.split(":")[1] for a in audited.filter(action=action)}  # noqa: E731
    assert targets("agent.retry") == again
    assert targets("agent.fail") == set(ids) - again
    wait_until(
        lambda: all(Agent.objects.get(id=i).state == AgentState.RUNNING for i in again),
        what="the retried agents running again",
    )
    for agent_id in set(ids) - again:
        agent = Agent.objects.get(id=agent_id)
        assert agent.state == AgentState.FAILED and agent.error == HUB_RESTARTED
    for agent_id in again:
        agent = Agent.objects.get(id=agent_id)
        assert agent.attempt == 1 and agent.supervisor_pid != agents[agent_id].supervisor_pid

    # Nothing of the failed agents is left; the running ones have exactly their own.
    running_docker = again & docker_ids
    if docker_ids:
        assert docker_containers(node) == running_docker
    # Container processes carry the agent label too, so docker agents may show here.
    assert again - docker_ids <= local_live_agent_ids() & set(ids) <= again
    for agent_id in set(ids) - again:
        assert labelled_pids(agent_id) == {}
        assert not AgentCgroup(cgroup_name(agent_id)).path("freezer").exists()
    worktrees = {path.name for path in workspace.worktree_dirs()}
    assert {name for name in worktrees if any(i in name for i in ids)} == {
        Path(Agent.objects.get(id=i).worktree_path).name for i in again
    }
    registered = workspace.worktree_list(precious.repository)
    assert {path.name for path in registered} == {
        Path(Agent.objects.get(id=i).worktree_path).name for i in again
    }
    # The committed work survives on its branch.
    mirror = workspace.mirror_path(precious.repository)
    assert git(mirror, "rev-parse", f"refs/heads/{precious.work_branch}") == sha
    kept = [a.target for a in audited.filter(action="agent.fail") if a.data["branch_kept"]]
    assert kept == [f"agent:{precious.id}"]
    assert audited.filter(action="agent.fail").count() == 3
    assert audited.filter(action="agent.retry").count() == 2
