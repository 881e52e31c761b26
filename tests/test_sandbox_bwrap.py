"""The bubblewrap sandbox holds: only the worktree is writable, no network, hard limits."""

import socket
import threading
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from agents.models import AgentState
from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxSpec
from agents.sandboxes.cgroups import AgentCgroup, cgroups_available
from tests.conftest import spawn_body, wait_for_state

needs_cgroups = pytest.mark.skipif(not cgroups_available(), reason="cgroup v1 is not writable")


def reachable_dir() -> Path:
    """A fresh directory the sandbox user can reach (pytest's tmp_path is private to root)."""
    path = Path(settings.DATA_DIR) / "sandbox-tests" / uuid.uuid4().hex
    path.mkdir(parents=True)
    return path


@pytest.fixture
def sandbox():
    workspace = reachable_dir()
    backend = sandbox_backend("bwrap")
    spec = SandboxSpec(agent_id=str(uuid.uuid4()), workspace=workspace, memory_mb=128, pids=64)
    handle = backend.start(spec)
    yield backend, handle, workspace
    backend.kill(handle)
    backend.remove(handle)


def run(sandbox, command: str, timeout_s: float = 20):
    backend, handle, _ = sandbox
    return backend.exec(handle, command, timeout_s=timeout_s)


def test_commands_run_as_an_unprivileged_user_in_the_workspace(sandbox):
    result = run(sandbox, "id -u; pwd; echo made > made.txt")

    assert result.ok, result.output_tail
    uid, cwd = result.output_tail.splitlines()[:2]
    assert uid != "0"
    assert cwd == "/workspace"
    assert (sandbox[2] / "made.txt").read_text() == "made\n"


def test_writing_outside_the_workspace_fails(sandbox):
    result = run(
        sandbox,
        "echo x > /usr/evil; echo x > /etc/evil; echo x > /evil; echo x > /tmp/fine && echo tmp-ok",
    )

    assert "tmp-ok" in result.output_tail
    assert (
        result.output_tail.count("Read-only file system")
        + result.output_tail.count("Permission denied")
        >= 3
    )
    assert not Path("/usr/evil").exists() and not Path("/evil").exists()


def test_the_host_filesystem_outside_the_binds_is_absent(sandbox, tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("do not read")

    result = run(sandbox, f"cat {secret}; ls /root; ls /home")

    assert "do not read" not in result.output_tail
    assert "No such file" in result.output_tail


@pytest.fixture
def host_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    accepted = []

    def accept() -> None:
        try:
            while True:
                conn, _ = server.accept()
                accepted.append(conn)
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()


CONNECT = (
    "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2); "
    "print('connected')\""
)


def test_a_network_connection_fails_when_not_allowed(sandbox, host_server):
    port, accepted = host_server

    result = run(sandbox, CONNECT.format(port=port))

    assert "connected" not in result.output_tail
    assert result.exit_code != 0
    assert accepted == []


def test_network_on_still_never_reaches_the_hosts_loopback(host_server):
    """Finding 2 of the containment issue: network on used to be the host's own network."""
    port, accepted = host_server
    workspace = reachable_dir()
    backend = sandbox_backend("bwrap")
    handle = backend.start(
        SandboxSpec(agent_id=str(uuid.uuid4()), workspace=workspace, network="on")
    )
    try:
        result = backend.exec(handle, CONNECT.format(port=port), timeout_s=20)
    finally:
        backend.remove(handle)

    assert "connected" not in result.output_tail
    assert accepted == []


@needs_cgroups
def test_a_fork_bomb_is_contained_by_the_pids_limit(sandbox):
    backend, handle, _ = sandbox
    group = AgentCgroup(handle["cgroup"])

    result = run(sandbox, "bomb() { bomb | bomb & }; while true; do bomb; done", timeout_s=5)

    # The shell dies of its own failed fork long before the timeout.
    assert not result.ok
    assert "Cannot fork" in result.output_tail
    assert int((group.path("pids") / "pids.max").read_text()) == 64
    assert group.pids() == []
    assert run(sandbox, "echo still-usable").ok


@needs_cgroups
def test_a_memory_hog_is_killed_by_the_memory_limit(sandbox):
    result = run(sandbox, "python3 -c \"x = bytearray(600 * 1024 * 1024); print('allocated')\"")

    assert "allocated" not in result.output_tail
    assert result.exit_code == 137


@needs_cgroups
def test_fork_bomb_and_memory_hog_agents_fail_and_the_hub_keeps_working(hub, api, remote_repo):
    bomb = api.post(
        "/api/v1/agents",
        spawn_body(remote_repo, "b() { b | b & }; while :; do b; done", timeout_s=3, pids=64),
        format="json",
    )
    hog = api.post(
        "/api/v1/agents",
        spawn_body(remote_repo, 'python3 -c "x = bytearray(900 * 1024 * 1024)"', memory_mb=128),
        format="json",
    )
    assert bomb.status_code == 202 and hog.status_code == 202, (bomb.content, hog.content)

    failed_bomb = wait_for_state(bomb.json()["agent_id"], AgentState.FAILED, timeout=30)
    assert "Cannot fork" in failed_bomb.result["output_tail"]
    failed_hog = wait_for_state(hog.json()["agent_id"], AgentState.FAILED, timeout=30)
    assert "status 137" in failed_hog.error

    healthy = api.post(
        "/api/v1/agents", spawn_body(remote_repo, "echo fine > ok.txt"), format="json"
    ).json()["agent_id"]
    wait_for_state(healthy, AgentState.COMPLETED)
