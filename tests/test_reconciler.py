"""The reconciler repairs what a dead worker left behind, and leaves live work alone."""

import io
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from agents import workspace
from agents.models import Agent, AgentState
from agents.reconciler import HUB_RESTARTED, agents_reconcile, supervisor_identity
from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxSpec
from agents.sandboxes.cgroups import AgentCgroup
from agents.sandboxes.local import cgroup_name, local_live_agent_ids
from agents.tasks import agents_reconcile as reconcile_task
from audit.models import AuditEvent
from tests.conftest import git, wait_for_state


@pytest.fixture
def node(settings) -> str:
    """A node name of this test's own, so no other hub's sandboxes are in reach."""
    settings.FLOTILLA_NODE_NAME = f"reconcile-{uuid.uuid4().hex[:8]}"
    return settings.FLOTILLA_NODE_NAME


def dead_supervisor() -> dict:
    process = subprocess.Popen(["true"])
    process.wait()
    return {"supervisor_pid": process.pid, "supervisor_started": 1}


def agent_mid_run(
    repository: Path,
    node: str,
    *,
    script: str = "sleep 300",
    backend: str = "bwrap",
    supervisor: dict | None = None,
    **fields,
) -> tuple[Agent, threading.Thread]:
    """An agent row in ``running`` with a real worktree and a real sandbox running ``script``.

    Its supervisor is a process that has already exited, as after a worker crash.
    """
    agent = Agent.objects.create(
        task_id="task-1",
        agent_type="worker",
        runtime="script",
        script=script,
        repository=workspace.repository_normalise(str(repository)),
        base_branch="main",
        sandbox_backend=backend,
        timeout_s=60,
        requested_by="user:test",
        node=node,
        state=AgentState.RUNNING,
        started_at=timezone.now(),
        **(supervisor or dead_supervisor()),
        **fields,
    )
    agent.work_branch = f"flotilla/{agent.id}"
    path = workspace.worktree_path(agent_id=str(agent.id), task_id=agent.task_id)
    workspace.worktree_create(
        repository=agent.repository, base_branch="main", work_branch=agent.work_branch, path=path
    )
    sandbox = sandbox_backend(backend)
    handle = sandbox.start(SandboxSpec(agent_id=str(agent.id), workspace=path))
    agent.sandbox_handle, agent.worktree_path = handle, str(path)
    agent.save()
    thread = threading.Thread(
        target=sandbox.exec, args=(handle, "sleep 300"), kwargs={"timeout_s": 60}, daemon=True
    )
    thread.start()
    return agent, thread


def sandbox_running(agent: Agent) -> bool:
    return str(agent.id) in sandbox_backend(agent.sandbox_backend).live_agent_ids()


def wait_sandbox_running(agent: Agent) -> None:
    """Wait until the sandboxed command runs: processes in the agent's cgroup or container."""
    handle = agent.sandbox_handle
    for _ in range(250):
        if handle["backend"] == "docker":
            busy = len(Path(handle["cgroup_procs"]).read_text().split()) > 2
        else:
            busy = bool(AgentCgroup(handle["cgroup"]).pids())
        if busy:
            return
        threading.Event().wait(0.02)
    raise AssertionError("the sandbox never started its command")


def test_dead_supervisor_fails_the_agent_with_hub_restarted_and_leaves_nothing(
    db, node, remote_repo
):
    agent, command = agent_mid_run(remote_repo, node)
    wait_sandbox_running(agent)

    report = agents_reconcile(node=node)

    agent.refresh_from_db()
    assert agent.state == AgentState.FAILED and agent.error == HUB_RESTARTED
    assert report.failed == [str(agent.id)]
    command.join(timeout=5)
    assert not command.is_alive(), "the sandboxed command still runs"
    assert str(agent.id) not in local_live_agent_ids()
    assert not AgentCgroup(cgroup_name(str(agent.id))).path("freezer").exists()
    assert not Path(agent.worktree_path).exists()
    assert workspace.worktree_list(agent.repository) == []
    audit = AuditEvent.objects.get(action="agent.fail", target=f"agent:{agent.id}")
    assert audit.actor == "system:reconciler" and audit.reason == HUB_RESTARTED


def test_dead_supervisor_with_retries_left_runs_the_agent_again_to_completion(
    hub, node, remote_repo
):
    agent, _ = agent_mid_run(remote_repo, node, script="echo again > again.txt", max_retries=1)
    wait_sandbox_running(agent)

    report = agents_reconcile(node=node)

    assert report.retried == [str(agent.id)]
    done = wait_for_state(agent.id, AgentState.COMPLETED)
    assert done.attempt == 1
    assert git(remote_repo, "show", f"{agent.work_branch}:again.txt") == "again"
    states = [event.data["to"] for event in done.events.filter(kind="state")]
    assert states == ["queued", "spawning", "running", "gating", "pushing", "completed"]
    assert AuditEvent.objects.filter(action="agent.retry", target=f"agent:{agent.id}").exists()


def test_unpushed_commits_are_never_lost_even_with_retries_left(db, node, remote_repo):
    agent, _ = agent_mid_run(remote_repo, node, max_retries=1)
    wait_sandbox_running(agent)
    (Path(agent.worktree_path) / "work.txt").write_text("precious\n")
    sha = workspace.worktree_commit(path=Path(agent.worktree_path), message="work so far")

    report = agents_reconcile(node=node)

    agent.refresh_from_db()
    assert agent.state == AgentState.FAILED and agent.error == HUB_RESTARTED
    assert report.branches_kept == [agent.work_branch]
    assert workspace.branch_exists(repository=agent.repository, work_branch=agent.work_branch)
    mirror = workspace.mirror_path(agent.repository)
    assert git(mirror, "rev-parse", f"refs/heads/{agent.work_branch}") == sha
    assert not Path(agent.worktree_path).exists()


def test_agent_with_a_live_supervisor_is_left_running(db, node, remote_repo):
    agent, command = agent_mid_run(remote_repo, node, supervisor=supervisor_identity())
    wait_sandbox_running(agent)

    report = agents_reconcile(node=node)

    agent.refresh_from_db()
    assert agent.state == AgentState.RUNNING
    assert report.failed == report.retried == report.sandboxes_removed == []
    assert report.worktrees_removed == []
    assert sandbox_running(agent) and command.is_alive()
    assert Path(agent.worktree_path).exists()
    Agent.objects.filter(id=agent.id).update(state=AgentState.KILLED)
    assert agents_reconcile(node=node).worktrees_removed == [agent.worktree_path]


def test_sandbox_and_worktree_left_by_a_finished_agent_are_removed(db, node, remote_repo):
    agent, command = agent_mid_run(remote_repo, node, supervisor=supervisor_identity())
    wait_sandbox_running(agent)
    Agent.objects.filter(id=agent.id).update(state=AgentState.KILLED)

    report = agents_reconcile(node=node)

    command.join(timeout=5)
    assert not command.is_alive()
    assert report.sandboxes_removed == [f"local:{agent.id}"]
    assert report.worktrees_removed == [agent.worktree_path]
    assert not Path(agent.worktree_path).exists()
    assert not workspace.branch_exists(repository=agent.repository, work_branch=agent.work_branch)
    actions = set(
        AuditEvent.objects.filter(
            actor="system:reconciler", target=f"agent:{agent.id}"
        ).values_list("action", flat=True)
    )
    assert actions == {"sandbox.remove", "worktree.remove"}


def test_worktree_of_an_agent_the_database_never_knew_is_pruned(db, node, remote_repo):
    stray_id = str(uuid.uuid4())
    path = workspace.worktree_path(agent_id=stray_id, task_id="lost")
    repository = workspace.repository_normalise(str(remote_repo))
    workspace.worktree_create(
        repository=repository, base_branch="main", work_branch=f"flotilla/{stray_id}", path=path
    )

    report = agents_reconcile(node=node)

    assert report.worktrees_removed == [str(path)]
    assert not path.exists()
    assert workspace.worktree_list(repository) == []


def test_sandbox_of_an_agent_unknown_here_is_reported_not_killed(db, node):
    stranger = str(uuid.uuid4())
    group = AgentCgroup(cgroup_name(stranger))
    group.create(memory_mb=64, pids=16, cpus=0.1)
    try:
        report = agents_reconcile(node=node)

        assert stranger in report.unattributed
        assert group.path("freezer").exists()
    finally:
        group.remove()


def test_a_queued_agent_no_wake_up_announced_is_still_claimed_and_run(hub, remote_repo):
    # Written straight to the database, whole (a supervisor may claim it at
    # once): no node was woken for it, so it is found by the supervisor's poll.
    agent_id = uuid.uuid4()
    agent = Agent.objects.create(
        id=agent_id,
        work_branch=f"flotilla/{agent_id}",
        task_id="task-1",
        agent_type="worker",
        runtime="script",
        script="echo late > late.txt",
        repository=workspace.repository_normalise(str(remote_repo)),
        base_branch="main",
        sandbox_backend="bwrap",
        timeout_s=60,
        requested_by="user:test",
    )

    wait_for_state(agent.id, AgentState.COMPLETED)
    assert git(remote_repo, "show", f"flotilla/{agent.id}:late.txt") == "late"


def test_reconcile_command_creates_the_schedule_once_and_the_task_runs_a_pass(db, node):
    call_command("reconcile", stdout=io.StringIO())
    call_command("reconcile", stdout=io.StringIO())

    schedule = Schedule.objects.get(name="flotilla-reconcile")
    assert schedule.func == "agents.tasks.agents_reconcile"
    assert schedule.schedule_type == Schedule.MINUTES and schedule.repeats == -1
    assert reconcile_task()["node"] == node


@pytest.mark.docker
def test_container_of_an_agent_whose_supervisor_died_is_removed(db, node, remote_repo):
    agent, command = agent_mid_run(remote_repo, node, backend="docker")
    wait_sandbox_running(agent)

    report = agents_reconcile(node=node)

    agent.refresh_from_db()
    assert agent.state == AgentState.FAILED
    assert report.failed == [str(agent.id)]
    assert not sandbox_running(agent)
    command.join(timeout=5)
    assert not command.is_alive()
    assert not Path(agent.worktree_path).exists()


@pytest.mark.docker
def test_container_that_no_agent_owns_is_removed(db, node, tmp_path):
    docker = sandbox_backend("docker")
    stray_id = str(uuid.uuid4())
    tmp_path.joinpath("ws").mkdir()
    docker.start(SandboxSpec(agent_id=stray_id, workspace=tmp_path / "ws"))

    report = agents_reconcile(node=node)

    assert report.sandboxes_removed == [f"docker:{stray_id}"]
    assert stray_id not in docker.live_agent_ids()
