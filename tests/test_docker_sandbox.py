"""Docker sandboxes: agents run end to end in containers, and the container holds them in."""

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings

from agents.models import AgentState
from agents.sandboxes.base import SandboxSpec
from agents.sandboxes.docker import DockerSandbox
from audit.models import AuditEvent
from tests.conftest import git, spawn_body, wait_for_state
from tests.launcher import wait_until

pytestmark = pytest.mark.docker


def containers_of(agent_id) -> list[str]:
    """What `docker ps -a` lists for an agent, through the real CLI."""
    listing = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"label=flotilla.agent_id={agent_id}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listing.stdout.split()


@pytest.fixture
def sandbox(tmp_path: Path):
    """A started docker sandbox on a scratch workspace, removed afterwards."""
    backend = DockerSandbox()
    handles = []

    def start(**limits) -> dict:
        workspace = tmp_path / f"workspace-{len(handles)}"
        workspace.mkdir()
        # As in a real worktree: a .git file that the agent may read but never change.
        (workspace / ".git").write_text("gitdir: /nowhere\n")
        spec = SandboxSpec(
            agent_id=f"test-{workspace.name}-{time.monotonic_ns()}", workspace=workspace, **limits
        )
        handle = backend.start(spec)
        handles.append(handle)
        return handle

    yield backend, start
    for handle in handles:
        backend.remove(handle)


def run(backend: DockerSandbox, handle: dict, command: str, timeout_s: float = 20):
    return backend.exec(handle, command, timeout_s=timeout_s)


def test_script_agent_in_docker_completes_pushes_and_leaves_no_container(hub, api, remote_repo):
    script = "echo hello > hello.txt; id -u > uid.txt"
    response = api.post(
        "/api/v1/agents", spawn_body(remote_repo, script, sandbox="docker"), format="json"
    )
    assert response.status_code == 202, response.content
    agent_id = response.json()["agent_id"]

    agent = wait_for_state(agent_id, AgentState.COMPLETED)

    branch = f"flotilla/{agent_id}"
    assert git(remote_repo, "show", f"{branch}:hello.txt") == "hello"
    assert git(remote_repo, "show", f"{branch}:uid.txt") == str(settings.FLOTILLA_SANDBOX_UID)
    assert agent.sandbox_handle["backend"] == "docker"
    wait_until(lambda: containers_of(agent_id) == [], what="containers_of(agent_id) == []")
    wait_until(
        lambda: not Path(agent.worktree_path).exists(),
        what="not Path(agent.worktree_path).exists()",
    )


def test_killing_a_docker_agent_removes_its_container_before_the_api_answers(hub, api, remote_repo):
    agent_id = api.post(
        "/api/v1/agents", spawn_body(remote_repo, "sleep 300", sandbox="docker"), format="json"
    ).json()["agent_id"]
    wait_for_state(agent_id, AgentState.RUNNING)
    assert len(containers_of(agent_id)) == 1

    response = api.post(f"/api/v1/agents/{agent_id}/kill", {"reason": "runaway"}, format="json")
    # Looked at right after the answer: the kill removes the container
    # synchronously (bench/docker_killall.py measures how long that takes).
    remaining = containers_of(agent_id)

    assert response.status_code == 200, response.content
    assert remaining == []
    assert wait_for_state(agent_id, AgentState.KILLED).state == AgentState.KILLED
    audit = AuditEvent.objects.get(action="agent.kill", target=f"agent:{agent_id}")
    assert audit.reason == "runaway" and audit.data["killed"] is True


def test_memory_hog_in_a_docker_agent_fails_the_agent_as_out_of_memory(hub, api, remote_repo):
    body = spawn_body(
        remote_repo, "head -c 400m /dev/zero | tail > /dev/null", sandbox="docker", memory_mb=64
    )
    agent_id = api.post("/api/v1/agents", body, format="json").json()["agent_id"]

    agent = wait_for_state(agent_id, AgentState.FAILED)

    assert agent.result["exit_code"] == 137
    assert "out of memory" in agent.error
    wait_until(lambda: containers_of(agent_id) == [], what="containers_of(agent_id) == []")


def test_commands_run_as_the_unprivileged_sandbox_user_without_capabilities(sandbox):
    backend, start = sandbox
    handle = start()

    identity = run(backend, handle, "id -u; id -g; grep -E 'CapEff|NoNewPrivs' /proc/self/status")

    uid = str(settings.FLOTILLA_SANDBOX_UID)
    assert identity.ok, identity.output_tail
    assert identity.output_tail.splitlines() == [
        uid,
        uid,
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
    ]


def test_only_the_workspace_and_tmp_are_writable(sandbox):
    backend, start = sandbox
    handle = start()

    for path in ("/etc/flotilla", "/usr/flotilla", "/flotilla", "/workspace/.git"):
        result = run(backend, handle, f"echo x > {path}")
        assert result.exit_code != 0, f"could write {path}"
    assert run(backend, handle, "echo kept > /workspace/out.txt && echo t > /tmp/t").ok
    assert (Path(handle["workspace"]) / "out.txt").read_text() == "kept\n"


def test_no_network_interface_but_loopback_in_any_network_mode(sandbox):
    """Egress goes only through the hub's proxy socket; the container never gets a network."""
    backend, start = sandbox
    listener = socket.create_server(("0.0.0.0", 0))
    listener.settimeout(10)
    accepted: list[object] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    port = listener.getsockname()[1]
    # The host, seen from a container on docker's default bridge.
    gateway = "172.17.0.1"
    connect = f"timeout 3 bash -c 'echo > /dev/tcp/{gateway}/{port}' 2>/dev/null"
    probe = f"echo $(ls /sys/class/net); {connect} && echo CONNECTED"

    results = [run(backend, start(network=mode), probe) for mode in ("off", "on")]
    listener.close()

    for result in results:
        assert result.output_tail.splitlines() == ["lo"]
    assert accepted == []


def test_fork_bomb_is_held_to_the_pids_limit_and_the_sandbox_survives(sandbox):
    backend, start = sandbox
    handle = start(pids=64)
    pids_dir = Path(handle["cgroup_procs"]).parent

    bomb = run(backend, handle, "bomb() { bomb | bomb & }; bomb; sleep 2; echo done", timeout_s=4)

    assert int((pids_dir / "pids.max").read_text()) == 64
    assert int((pids_dir / "pids.events").read_text().split()[1]) > 0, "the limit never bit"
    assert bomb.exit_code is not None or bomb.timed_out
    after = run(backend, handle, "echo alive")
    assert after.ok and after.output_tail == "alive"
    # Everything the bomb started died with its command: only init and its sleep remain.
    assert len((pids_dir / "cgroup.procs").read_text().split()) == 2


def test_memory_hog_is_killed_and_the_sandbox_survives(sandbox):
    backend, start = sandbox
    handle = start(memory_mb=64)

    hog = run(backend, handle, "head -c 400m /dev/zero | tail > /dev/null")

    assert hog.exit_code == 137
    assert run(backend, handle, "echo alive").output_tail == "alive"


def test_command_past_its_timeout_is_killed_with_everything_it_started(sandbox):
    backend, start = sandbox
    handle = start()

    result = run(backend, handle, "sleep 100 & sleep 100; echo never", timeout_s=1)

    assert result.timed_out and result.exit_code is None
    assert "never" not in result.output_tail
    assert len(Path(handle["cgroup_procs"]).read_text().split()) == 2


def test_background_process_does_not_outlive_its_command(sandbox):
    backend, start = sandbox
    handle = start()

    result = run(backend, handle, "sleep 100 & echo started")

    assert result.ok and result.output_tail == "started"
    assert len(Path(handle["cgroup_procs"]).read_text().split()) == 2


def test_output_lines_stream_to_the_sink_while_the_command_runs(sandbox):
    backend, start = sandbox
    handle = start()
    seen: list[tuple[float, list[str]]] = []

    backend.exec(
        handle,
        "echo first; sleep 1; echo second",
        timeout_s=10,
        on_output=lambda lines: seen.append((time.monotonic(), lines)),
    )

    lines = [line for _, batch in seen for line in batch]
    assert lines == ["first", "second"]
    assert len(seen) == 2, "the first line should arrive before the command ends"


def test_live_agent_ids_lists_this_hubs_containers_by_label(sandbox):
    backend, start = sandbox
    handle = start()

    assert handle["agent_id"] in backend.live_agent_ids()
    backend.kill(handle)
    wait_until(
        lambda: handle["agent_id"] not in backend.live_agent_ids(),
        timeout=2,
        what="handle['agent_id'] not in backend.live_agent_ids()",
    )
    backend.remove(handle)
    assert handle["agent_id"] not in backend.containers_by_agent()
