"""Resource attacks end contained, and the hub keeps answering throughout.

Each attack is a script agent; while it runs, a thread asks the live hub for
``GET /api/v1/health`` over real HTTP. The detailed limit semantics are in
test_limits.py; here only "the attack ends, contained, and the hub is fine".
"""

import time

import pytest
from django.conf import settings
from django.db.models import Sum, TextField
from django.db.models.functions import Cast, Length

from agents.models import FINAL_STATES, AgentEvent
from tests.containment.conftest import (
    BACKENDS,
    agent_of,
    cgroup_dirs_naming,
    containers_of,
    finished,
    output_of,
    sandbox_processes,
    spawn,
    worker_setting,
)
from tests.launcher import wait_until

MIB = 1024 * 1024


def markers_of(agent_id: str, backend: str) -> list[str]:
    """What names the agent's processes and cgroups on the host: its id, and its containers'."""
    return [agent_id, *(containers_of(agent_id) if backend == "docker" else [])]


def nothing_left(agent_id: str, markers: list[str], backend: str) -> None:
    wait_until(lambda: sandbox_processes(*markers) == [], what="sandbox_processes(*markers) == []")
    wait_until(
        lambda: not any(cgroup_dirs_naming(marker) for marker in markers),
        what="not any(cgroup_dirs_naming(marker) for marker in markers)",
    )
    if backend == "docker":
        wait_until(lambda: containers_of(agent_id) == [], what="containers_of(agent_id) == []")


def worker_limit(hub, name: str) -> int | None:
    """An operator maximum as the worker cluster runs with it (its environment, else settings)."""
    value = worker_setting(hub, name) or getattr(settings, name, None)
    return int(value) if value is not None else None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fork_bomb_ends_held_to_its_pids_limit(hub, api, remote_repo, backend, health_watch):
    pids = 64
    # Every process forks forever and retries when the kernel refuses, so the
    # bomb holds the limit until the agent's timeout ends it.
    bomb = (
        "python3 -c 'import os, time\n"
        "while True:\n"
        "    try: os.fork()\n"
        "    except OSError: time.sleep(0.05)'"
    )
    with health_watch() as watch:
        agent_id = spawn(api, remote_repo, bomb, backend=backend, pids=pids, timeout_s=8)
        markers, peak = [agent_id], 0
        while agent_of(api, agent_id)["state"] not in FINAL_STATES:
            if backend == "docker" and len(markers) == 1:
                markers = markers_of(agent_id, backend)
            peak = max(peak, len(sandbox_processes(*markers)))
            time.sleep(0.2)
        agent = finished(api, agent_id)

    assert agent["state"] == "failed", agent
    assert 0 < peak <= pids
    nothing_left(agent_id, markers, backend)
    assert watch.always_healthy(), watch.answers


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_memory_hog_is_killed_for_memory(hub, api, remote_repo, backend, health_watch):
    hog = "python3 -c \"x = bytearray(400 * 1024 * 1024); print('ALLOCATED')\""
    with health_watch() as watch:
        agent_id = spawn(api, remote_repo, hog, backend=backend, memory_mb=64)
        agent = finished(api, agent_id)

    assert agent["state"] == "failed", agent
    assert "ALLOCATED" not in output_of(api, agent_id)
    assert agent["result"].get("exit_code") == 137 or "out of memory" in agent["error"]
    nothing_left(agent_id, markers_of(agent_id, backend), backend)
    assert watch.always_healthy(), watch.answers


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_disk_filler_is_stopped_naming_the_worktree_limit(
    hub, api, remote_repo, backend, health_watch
):
    limit_mb = worker_limit(hub, "FLOTILLA_MAX_WORKTREE_MB")
    target_mb = (limit_mb or 64) + 32
    # Written a megabyte at a time, then left in place: the hub must stop it either way.
    filler = (
        f"i=0; while [ $i -lt {target_mb} ]; do "
        "dd if=/dev/zero of=fill-$i bs=1M count=1 status=none || break; i=$((i + 1)); done; "
        "echo FILLED $i MB; sleep 20; echo NOT-STOPPED; exit 1"
    )
    with health_watch() as watch:
        agent_id = spawn(api, remote_repo, filler, backend=backend, timeout_s=40)
        agent = finished(api, agent_id)

    assert agent["state"] == "failed", agent
    assert "NOT-STOPPED" not in output_of(api, agent_id)
    assert "worktree" in agent["error"].lower(), agent["error"]
    if limit_mb is not None:
        assert str(limit_mb) in agent["error"]
    nothing_left(agent_id, markers_of(agent_id, backend), backend)
    assert watch.always_healthy(), watch.answers


def stored_event_bytes(agent_id: str) -> int:
    sizes = AgentEvent.objects.filter(agent_id=agent_id).annotate(
        size=Length(Cast("data", TextField()))
    )
    return sizes.aggregate(total=Sum("size"))["total"] or 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hundred_megabytes_of_output_are_stored_bounded(
    hub, api, remote_repo, backend, health_watch
):
    max_output = worker_limit(hub, "FLOTILLA_MAX_OUTPUT_BYTES") or 8 * MIB
    flood = f"yes {'x' * 99} | head -c {100 * 1000 * 1000}; echo END-OF-FLOOD; exit 0"
    with health_watch() as watch:
        agent_id = spawn(api, remote_repo, flood, backend=backend, timeout_s=60)
        agent = finished(api, agent_id, timeout=120)

    assert agent["state"] in FINAL_STATES
    # The rolling tail keeps the end of the output.
    assert "END-OF-FLOOD" in agent["result"].get("output_tail", ""), agent
    stored = stored_event_bytes(agent_id)
    assert stored <= max_output + MIB, f"{stored} bytes of events stored"
    others = AgentEvent.objects.filter(agent_id=agent_id).exclude(kind="output")
    assert any("dropped" in str(event.data).lower() for event in others)
    assert watch.always_healthy(), watch.answers
