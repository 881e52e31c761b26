"""Fixtures of the reliability suite: a multi-node cluster on PostgreSQL (cluster.py)."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_remote
from tests.reliability.cluster import Cluster, postgres_available, template_drop

HEAVY = os.environ.get("FLOTILLA_HEAVY_TESTS", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items) -> None:
    here = Path(__file__).parent
    ours = [item for item in items if Path(item.fspath).is_relative_to(here)]
    if not ours:
        return
    # The clusters have PostgreSQL databases of their own, whatever the test
    # session's database: scripts/test runs the suite once (see there).
    for item in ours:
        item.add_marker(pytest.mark.reliability)
    if not postgres_available():
        reason = "the reliability suite needs PostgreSQL on 127.0.0.1:5432"
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
    running = Cluster(workers=2, webs=2, capacity=22)
    try:
        yield running.start()
    finally:
        running.stop()


@pytest.fixture
def repository(tmp_path_factory) -> Path:
    # Worker nodes clone it as root; it only has to be readable.
    return make_remote(tmp_path_factory.mktemp("repos"))


def remote_branch_commits(repository: Path, agent_id: str) -> int:
    """How many commits the agent's branch in the remote holds above main (0: no branch)."""
    done = subprocess.run(
        ["git", "rev-list", "--count", f"main..flotilla/{agent_id}"],
        cwd=repository,
        capture_output=True,
        text=True,
    )
    return int(done.stdout.strip()) if done.returncode == 0 else 0
