"""Fixtures of the reliability suite: a multi-node cluster on PostgreSQL (cluster.py)."""

import os
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings

from agents.sandboxes.cgroups import AgentCgroup
from agents.sandboxes.local import cgroup_name, labelled_pids
from tests.conftest import make_remote
from tests.reliability.cluster import Cluster, postgres_available, template_drop

HEAVY = os.environ.get("FLOTILLA_HEAVY_TESTS", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items) -> None:
    here = Path(__file__).parent
    ours = [item for item in items if Path(item.fspath).is_relative_to(here)]
    if not ours:
        return
    # The timed multi-node tests run first in the session, before the other
    # tests' hubs and clusters have loaded this 2-core machine; the fault
    # tests (they restart PostgreSQL and SIGKILL processes) run last.
    faults = [item for item in ours if Path(item.fspath).name == "test_multinode_faults.py"]
    first = [item for item in ours if item not in faults]
    rest = [item for item in items if item not in ours]
    items[:] = first + rest + faults
    reason = ""
    if not postgres_available():
        reason = "the reliability suite needs PostgreSQL on 127.0.0.1:5432"
    elif settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        # scripts/test runs the whole suite twice (SQLite, then PostgreSQL);
        # this suite builds its own PostgreSQL cluster, so once is enough.
        reason = "the reliability suite runs in the PostgreSQL pass (DATABASE_URL=postgres://...)"
    if reason:
        skip = pytest.mark.skip(reason=reason)
        for item in ours:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _drop_template_database():
    yield
    template_drop()


@pytest.fixture(scope="module")
def cluster():
    """Two web processes and two worker nodes (node-a, node-b) on a database of their own."""
    running = Cluster(workers=2, webs=2, worker_processes=22)
    try:
        yield running.start()
    finally:
        running.stop()


@pytest.fixture
def repository(tmp_path_factory) -> Path:
    # Worker nodes clone it as root; it only has to be readable.
    return make_remote(tmp_path_factory.mktemp("repos"))


def sandbox_processes(agent_ids) -> dict[str, list[int]]:
    """What still runs for these agents on this machine: labelled processes and cgroup members."""
    wanted = {str(agent_id) for agent_id in agent_ids}
    found: dict[str, list[int]] = {}
    for pid, agent_id in labelled_pids().items():
        if agent_id in wanted:
            found.setdefault(agent_id, []).append(pid)
    for agent_id in wanted:
        pids = AgentCgroup(cgroup_name(agent_id)).pids()
        if pids:
            found.setdefault(agent_id, []).extend(pids)
    return found


def agent_cgroups(agent_ids) -> list[str]:
    return [
        str(agent_id)
        for agent_id in agent_ids
        if AgentCgroup(cgroup_name(str(agent_id))).path("freezer").exists()
    ]


def remote_branch_commits(repository: Path, agent_id: str) -> int:
    """How many commits the agent's branch in the remote holds above main (0: no branch)."""
    done = subprocess.run(
        ["git", "rev-list", "--count", f"main..flotilla/{agent_id}"],
        cwd=repository,
        capture_output=True,
        text=True,
    )
    return int(done.stdout.strip()) if done.returncode == 0 else 0


def settle(seconds: float) -> None:
    time.sleep(seconds)
