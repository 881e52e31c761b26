"""Whole agents with a repository setup: API → worker node → setup (or its cache) → gates → push.

Issue 16's "done means": agent 1 runs setup and completes; agent 2 on the
same lock file reuses the cache (the package index sees no second download);
a changed lock file runs setup again; nothing installed is committed.

The index must be on the worker's egress allowlist, which a worker reads
when it starts, so this module starts a worker node of its own (``runhub
--role worker``) in a pool of its own: the session's worker (tests/conftest.py)
never claims these agents, and this one claims nothing else.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from agents.models import Agent, AgentEvent, AgentState
from tests.conftest import ROOT, git, make_remote, spawn_body, subprocess_env, wait_for_state
from tests.launcher import Processes
from tests.package_index import PackageIndex
from tests.test_repository_setup import TEST_DEP, setup_project

POOL = "repository-setup-tests"


@pytest.fixture(scope="module")
def package_index():
    with PackageIndex() as index:
        index.add("sample-dep", "1.0")
        index.add("sample-dep", "2.0")
        yield index


@pytest.fixture(scope="module")
def setup_node(django_db_setup, django_db_blocker, package_index, sandbox_toolchain):
    """A worker node of its own pool whose egress allowlist names the package index."""
    env = {
        **subprocess_env(),
        "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings_test",
        "FLOTILLA_NODE_POOL": POOL,
        "FLOTILLA_EGRESS_ALLOWLIST": package_index.address,
        "FLOTILLA_WORKERS": "1",
        "FLOTILLA_DEFAULT_TIMEOUT_S": "120",
    }
    node = Processes(env=env, log_dir=Path(django_settings.DATA_DIR), prefix="setup-")
    yield node.start_worker()
    node.stop()


@pytest.fixture
def node(setup_node, transactional_db, settings):
    """Spawns from this test land in the setup node's pool."""
    settings.FLOTILLA_NODE_POOL = POOL
    yield setup_node
    from agents.selectors import live_agent_ids
    from agents.services import agent_terminate

    for agent_id in live_agent_ids():
        agent_terminate(agent_id=agent_id, reason="test teardown")


def spawn(api, remote: Path, script: str) -> str:
    response = api.post("/api/v1/agents", spawn_body(remote, script), format="json")
    assert response.status_code == 202, response.content
    return response.json()["agent_id"]


def setup_messages(agent_id: str) -> list[dict]:
    events = AgentEvent.objects.filter(agent_id=agent_id, kind="log").order_by("id")
    return [event.data["setup"] for event in events if "setup" in event.data]


def pushed_files(remote: Path, agent_id: str) -> list[str]:
    return git(remote, "ls-tree", "-r", "--name-only", f"flotilla/{agent_id}").splitlines()


def test_agents_share_one_setup_through_the_cache_until_the_lock_file_changes(
    node, api, package_index, tmp_path
):
    remote = make_remote(tmp_path, setup_project(package_index))
    script = "echo 'uses sample-dep' >> README.md"

    first = wait_for_state(spawn(api, remote, script), AgentState.COMPLETED, timeout=120)
    after_first = package_index.downloaded("sample-dep")
    second = wait_for_state(spawn(api, remote, script), AgentState.COMPLETED, timeout=120)

    assert after_first == 1
    assert package_index.downloaded("sample-dep") == 1  # the index saw no second download
    assert setup_messages(first.id)[-1]["cache"] == "stored"
    assert setup_messages(second.id)[-1]["cache"] == "hit"
    for agent in (first, second):
        # The tests gate imported the dependency setup installed; none of it was committed.
        gates = {
            e.data["gate"]: e.data for e in AgentEvent.objects.filter(agent=agent, kind="gate")
        }
        assert gates["tests"]["outcome"] == "passed"
        files = pushed_files(remote, str(agent.id))
        assert "README.md" in files and not any(path.startswith(".deps") for path in files)

    seed = tmp_path / "remote-seed"
    (seed / "requirements.txt").write_text("sample-dep==2.0\n")
    (seed / "test_dep.py").write_text(TEST_DEP.replace("1.0", "2.0"))
    git(seed, "commit", "-qam", "sample-dep 2.0")
    git(seed, "push", "-q", str(remote), "main")

    third = wait_for_state(spawn(api, remote, script), AgentState.COMPLETED, timeout=120)

    assert package_index.downloaded("sample-dep") == 2
    assert setup_messages(third.id)[-1]["cache"] == "stored"
    assert not any(path.startswith(".deps") for path in pushed_files(remote, str(third.id)))


def test_a_failing_setup_fails_the_agent_with_its_command_and_output_and_no_retry(
    node, api, tmp_path
):
    command = "echo resolving; echo 'No matching distribution found for nothing' >&2; exit 1"
    remote = make_remote(tmp_path, {".flotilla.toml": f'[setup]\ncommands = ["{command}"]\n'})
    body = spawn_body(remote, "echo never runs > ran.txt", max_retries=2)

    response = api.post("/api/v1/agents", body, format="json")
    agent = wait_for_state(response.json()["agent_id"], AgentState.FAILED, timeout=120)

    assert agent.error.startswith(f"repository setup failed: `{command}` exited with status 1")
    assert "No matching distribution found for nothing" in agent.error
    assert agent.attempt == 0
    states = AgentEvent.objects.filter(agent=agent, kind="state").order_by("id")
    assert [event.data["to"] for event in states] == ["queued", "spawning", "failed"]


def test_the_demo_hub_starts_even_when_its_setup_sample_cannot_reach_the_registry(node):
    """``make hub``: this node's allowlist names no registry, as if PyPI were out of reach."""
    env = {**subprocess_env(), "FLOTILLA_NODE_POOL": POOL}
    result = subprocess.run(
        [sys.executable, "manage.py", "demo", "--with-setup"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stderr
    assert "with [setup]:" in result.stdout
    agents = {agent.task_id: agent for agent in Agent.objects.all()}
    assert set(agents) == {"demo-docs", "demo-failing", "demo-long", "demo-setup"}
    failed = wait_for_state(agents["demo-setup"].id, AgentState.FAILED, timeout=120)
    assert failed.error.startswith("repository setup failed: `python -m pip install")
    refused = AgentEvent.objects.filter(agent=failed, kind="network")
    assert refused and all(
        not event.data["allowed"] and event.data["host"] == "pypi.org" for event in refused
    )
    assert wait_for_state(agents["demo-docs"].id, AgentState.COMPLETED).result["pushed_commit"]
