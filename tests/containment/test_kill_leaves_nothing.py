"""A kill through the API leaves nothing of the agent: no daemon, no stubborn sleeper, no cgroup."""

import pytest

from tests.containment.conftest import (
    BACKENDS,
    cgroup_dirs_naming,
    containers_of,
    finished,
    sandbox_processes,
    spawn,
    wait_for_output,
)
from tests.launcher import wait_until

# Every way a shell script has to outlive its parent: a new session, a double
# fork whose middle process exits, ignored SIGTERM/SIGHUP, an emptied
# environment (no agent label to find it by), nohup.
STUBBORN = """
trap '' TERM HUP INT
setsid sh -c 'trap "" TERM HUP; exec sleep 3001' &
sh -c '(trap "" TERM HUP; exec setsid sleep 3002) &' &
( trap '' TERM HUP; while :; do sleep 1; done ) &
env -i /bin/sh -c 'trap "" TERM HUP; exec sleep 3003' &
nohup sleep 3004 >/dev/null 2>&1 &
echo ARMED
while :; do sleep 1; done
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_killing_an_agent_leaves_no_daemon_no_stubborn_sleeper_and_no_cgroup(
    hub, api, remote_repo, backend
):
    agent_id = spawn(api, remote_repo, STUBBORN, backend=backend, timeout_s=120)
    wait_for_output(api, agent_id, "ARMED")
    markers = [agent_id, *(containers_of(agent_id) if backend == "docker" else [])]
    # The attack really runs: the daemons and sleepers are there to be killed.
    wait_until(
        lambda: len(sandbox_processes(*markers)) >= 6, what="len(sandbox_processes(*markers)) >= 6"
    )
    cgroups = [path for marker in markers for path in cgroup_dirs_naming(marker)]
    assert cgroups, "the agent's cgroup was not found"

    response = api.post(f"/api/v1/agents/{agent_id}/kill", {"reason": "hostile"}, format="json")

    assert response.status_code == 200, response.content
    assert finished(api, agent_id)["state"] == "killed"
    wait_until(lambda: sandbox_processes(*markers) == [], what="sandbox_processes(*markers) == []")
    wait_until(
        lambda: not [path for path in cgroups if path.exists()],
        what="not [path for path in cgroups if path.exists()]",
    )
    if backend == "docker":
        wait_until(lambda: containers_of(agent_id) == [], what="containers_of(agent_id) == []")
