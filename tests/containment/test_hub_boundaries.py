"""The hub's own boundaries: where it keeps its data, how it reports its own faults,
and which sandboxes it may sweep.

Findings 5 and 6 of the containment issue: agents failed when DATA_DIR was a
private directory (and the failure read as the script's own exit status or a
gate rejection), and a second hub on the same Docker engine removed this hub's
running containers. The same holds for the cgroups and processes of bwrap
sandboxes: a hub sweeps only those carrying its own hub id.
"""

import contextlib
import secrets
import shlex
import stat
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from agents.leases import agents_claim
from agents.models import Agent, AgentState
from agents.reconciler import agents_reconcile
from agents.runner import AgentRun, agent_run
from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxError, SandboxSpec
from audit.models import AuditEvent
from gates.base import GateContext
from gates.models import GateStage
from gates.services import gates_run
from tests.conftest import git, spawn_body, wait_for_state, wait_until
from tests.containment.conftest import cgroup_dirs_naming, sandbox_processes


def test_the_hubs_files_are_readable_by_root_only():
    data_dir = Path(settings.DATA_DIR)

    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in ("secret_key", "federation_key", "hub_uid"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name


def test_an_agent_completes_and_pushes_when_data_dir_is_private(hub, api, remote_repo, tmp_path):
    assert stat.S_IMODE(Path(settings.DATA_DIR).stat().st_mode) == 0o700

    response = api.post(
        "/api/v1/agents",
        spawn_body(remote_repo, "echo private > private.txt", gate_profile="minimal"),
        format="json",
    )

    agent = wait_for_state(response.json()["agent_id"], AgentState.COMPLETED, timeout=60)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", "--branch", agent.work_branch, str(remote_repo), str(clone))
    assert (clone / "private.txt").read_text() == "private\n"


def test_a_sandbox_that_cannot_start_is_reported_as_a_sandbox_error():
    workspace = Path(settings.DATA_DIR) / "sandbox-start" / uuid.uuid4().hex
    workspace.mkdir(parents=True)
    backend = sandbox_backend("bwrap")
    handle = backend.start(SandboxSpec(agent_id=str(uuid.uuid4()), workspace=workspace))
    try:
        with (
            override_settings(FLOTILLA_SANDBOX_RO_BINDS=["/nonexistent-flotilla-bind"]),
            pytest.raises(SandboxError, match="could not start.*nonexistent-flotilla-bind"),
        ):
            backend.exec(handle, "true", timeout_s=20)
    finally:
        backend.remove(handle)


def test_a_command_that_fails_is_still_the_commands_own_status():
    workspace = Path(settings.DATA_DIR) / "sandbox-start" / uuid.uuid4().hex
    workspace.mkdir(parents=True)
    backend = sandbox_backend("bwrap")
    handle = backend.start(SandboxSpec(agent_id=str(uuid.uuid4()), workspace=workspace))
    try:
        result = backend.exec(handle, "echo 'bwrap: not really'; exit 1", timeout_s=20)
    finally:
        backend.remove(handle)

    assert result.exit_code == 1


@pytest.mark.django_db(transaction=True)
def test_an_agent_whose_sandbox_cannot_start_fails_naming_the_sandbox(api, remote_repo):
    # A pool of its own: no worker node of the session may claim the agent.
    pool = f"bind-{uuid.uuid4().hex[:8]}"
    with override_settings(FLOTILLA_NODE_POOL=pool):
        response = api.post(
            "/api/v1/agents", spawn_body(remote_repo, "echo hi > hi.txt"), format="json"
        )
    agent_id = response.json()["agent_id"]

    # This process claims and runs the agent, so the operator's bind applies to it.
    (claimed,) = agents_claim(node="node-a", limit=1, pool=pool)
    with override_settings(FLOTILLA_SANDBOX_RO_BINDS=["/nonexistent-flotilla-bind"]):
        agent_run(run=AgentRun(agent=claimed))

    agent = Agent.objects.get(id=agent_id)
    assert agent.state == AgentState.FAILED
    assert "sandbox could not start" in agent.error
    assert "/nonexistent-flotilla-bind" in agent.error
    assert "exited with status" not in agent.error
    assert "gates" not in (agent.result or {})


@pytest.mark.django_db
def test_a_gate_never_reports_the_hubs_own_fault_as_a_rejection():
    def run_command(command: str, timeout_s: float):
        raise SandboxError("the bwrap sandbox could not start: Permission denied")

    context = GateContext(
        agent_id=str(uuid.uuid4()),
        task="t",
        diff="",
        run_command=run_command,
        config_overrides={"tests": "pytest -q"},
    )

    with pytest.raises(SandboxError, match="could not start"):
        gates_run(stage=GateStage.PRE_COMMIT, profile="minimal", context=context)


@pytest.fixture
def orphan_container(tmp_path):
    """A running docker sandbox that no agent row of this hub owns; removed afterwards."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    backend = sandbox_backend("docker")
    agent_id = str(uuid.uuid4())
    handle = backend.start(SandboxSpec(agent_id=agent_id, workspace=workspace))
    yield backend, agent_id, handle
    backend.remove(handle)


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_another_hubs_reconciler_leaves_this_hubs_containers_alone(orphan_container):
    backend, agent_id, handle = orphan_container

    # A second hub on this machine: same node name (the host name), its own
    # DATA_DIR and so its own hub id, and no row for this agent.
    with override_settings(FLOTILLA_HUB_UID="another-hub-on-this-engine"):
        report = agents_reconcile(node=settings.FLOTILLA_NODE_NAME)

    assert f"docker:{agent_id}" not in report.sandboxes_removed
    running = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", handle["container"]],
        capture_output=True,
        text=True,
    )
    assert running.stdout.strip() == "true"
    result = backend.exec(handle, "echo still here", timeout_s=20)
    assert "still here" in result.output_tail


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_this_hubs_reconciler_still_removes_its_own_orphan_container(orphan_container):
    _, agent_id, handle = orphan_container

    report = agents_reconcile(node=settings.FLOTILLA_NODE_NAME)

    assert f"docker:{agent_id}" in report.sandboxes_removed
    wait_until(lambda: not _exists(handle["container"]), 10, "the orphan container to go")


def _exists(container: str) -> bool:
    return subprocess.run(["docker", "inspect", container], capture_output=True).returncode == 0


# One long-lived process that proves it still works: it rewrites ./beat with a
# growing count (atomically, so the host never reads half a number).
_HEARTBEAT = (
    "import os, time\n"
    "n = 0\n"
    "while True:\n"
    "    n += 1\n"
    "    open('beat.tmp', 'w').write(str(n))\n"
    "    os.replace('beat.tmp', 'beat')\n"
    "    time.sleep(0.05)\n"
)


@pytest.fixture
def other_hubs_bwrap_orphan(tmp_path):
    """A running bwrap sandbox of another hub on this machine, orphaned as far as that hub knows.

    That hub has its own hub id and the same node name (the host name). Its
    agent row says the agent was killed, as after a crash between the kill and
    the cleanup, so to that hub the sandbox is an orphan to sweep. Both hubs
    see that row here (one test database): the hardest case, where nothing but
    the hub id keeps this hub's reconciler away (two hubs restored from one
    database dump would be in the same position).
    """
    other_hub = secrets.token_hex(8)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    agent = Agent.objects.create(
        task_id="other-hub",
        agent_type="worker",
        runtime="script",
        script="heartbeat",
        repository=str(tmp_path / "repository"),
        base_branch="main",
        pool="unserved",
        sandbox_backend="bwrap",
        timeout_s=60,
        requested_by="user:test",
        node=settings.FLOTILLA_NODE_NAME,
        state=AgentState.KILLED,
        error="killed",
    )
    agent_id = str(agent.id)
    backend = sandbox_backend("bwrap")
    command = f"python3 -c {shlex.quote(_HEARTBEAT)}"
    with override_settings(FLOTILLA_HUB_UID=other_hub):
        handle = backend.start(SandboxSpec(agent_id=agent_id, workspace=workspace))
        Agent.objects.filter(id=agent.id).update(sandbox_handle=handle)
        runner = threading.Thread(
            target=_exec_quietly, args=(backend, handle, command), daemon=True
        )
        runner.start()
        # The command reads the hub id when it starts: wait until it works.
        wait_until(lambda: _beats(workspace) > 0, 20, "the other hub's sandbox to start")
    yield other_hub, agent_id, workspace, runner
    with override_settings(FLOTILLA_HUB_UID=other_hub):
        backend.remove(handle)
    runner.join(timeout=10)


@pytest.mark.django_db
def test_another_hubs_reconciler_leaves_bwrap_sandboxes_alone_that_their_own_hub_sweeps(
    other_hubs_bwrap_orphan,
):
    other_hub, agent_id, workspace, runner = other_hubs_bwrap_orphan
    processes = set(sandbox_processes(agent_id))
    groups = cgroup_dirs_naming(agent_id)
    assert processes, "the other hub's sandbox runs no process"
    assert groups and all(f"hub-{other_hub}" in group.parts for group in groups)

    # This hub (the test run's own hub id), on the same node name.
    assert other_hub != settings.FLOTILLA_HUB_UID
    report = agents_reconcile(node=settings.FLOTILLA_NODE_NAME)

    assert processes <= set(sandbox_processes(agent_id))
    beat = _beats(workspace)
    wait_until(lambda: _beats(workspace) > beat, 10, "the other hub's sandbox to work on")
    assert runner.is_alive()
    assert cgroup_dirs_naming(agent_id) == groups
    assert f"local:{agent_id}" not in report.sandboxes_removed
    assert not AuditEvent.objects.filter(action="sandbox.remove", target=f"agent:{agent_id}")

    # The control: the hub that owns the sandbox does sweep it.
    with override_settings(FLOTILLA_HUB_UID=other_hub):
        report = agents_reconcile(node=settings.FLOTILLA_NODE_NAME)

    assert f"local:{agent_id}" in report.sandboxes_removed
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert sandbox_processes(agent_id) == []
    assert cgroup_dirs_naming(agent_id) == []


def _exec_quietly(backend, handle, command: str) -> None:
    """Run ``command`` in the sandbox until it is killed; a kill is its expected end."""
    with contextlib.suppress(SandboxError):
        backend.exec(handle, command, timeout_s=120)


def _beats(workspace: Path) -> int:
    try:
        return int((workspace / "beat").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0
