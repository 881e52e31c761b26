"""Shared fixtures: real git repositories, API clients and a real django-q2 worker."""

import os
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from agents.models import FINAL_STATES, Agent
from tests import database_flush
from tests.launcher import ROOT, Processes, git, make_remote, wait_until

__all__ = ["ROOT", "git", "make_remote", "wait_until"]
# Recording HTTP servers, the outbound guard switched on, made-up host names.
pytest_plugins = ["tests.outbound"]
database_flush.install()


@pytest.fixture
def remote_repo(tmp_path: Path) -> Path:
    return make_remote(tmp_path)


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("operator", password="operator-password")


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_user(
        "admin", password="admin-password", is_staff=True, is_superuser=True
    )


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def staff_api(staff_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(staff_user)
    return client


def spawn_body(repository: Path | str, script: str, **options) -> dict:
    return {
        "task_id": options.pop("task_id", "task-1"),
        "agent_type": "worker",
        "runtime": "script",
        "script": script,
        "context": {"repository": str(repository), "branch": options.pop("branch", "main")},
        "options": options,
    }


def spawn_model_agent(api, remote, runtime: str, *, task_id: str, work_item: str, **options) -> str:
    """Spawn a model-driven agent (claude, claude-code, codex) on ``remote`` through the API."""
    body = {
        "task_id": task_id,
        "agent_type": options.pop("agent_type", "worker"),
        "runtime": runtime,
        "context": {
            "repository": str(remote),
            "branch": "main",
            "instructions": "Make the test suite pass.",
            "work_items": [work_item],
            "skills": ["python"],
        },
        "options": options,
    }
    response = api.post("/api/v1/agents", body, format="json")
    assert response.status_code == 202, response.content
    return response.json()["agent_id"]


def events_of(api, agent_id: str) -> list[dict]:
    return api.get(f"/api/v1/agents/{agent_id}/events?limit=1000").json()["events"]


def transcript(api, agent_id: str) -> list[dict]:
    return [event["data"] for event in events_of(api, agent_id) if event["kind"] == "transcript"]


def wait_for_state(agent_id, states, timeout: float = 30.0) -> Agent:
    """Poll the database until the agent reaches one of ``states``."""
    wanted = {states} if isinstance(states, str) else set(states)

    def reached() -> Agent | None:
        agent = Agent.objects.get(id=agent_id)
        if agent.state in wanted:
            return agent
        if agent.state in FINAL_STATES:
            raise AssertionError(f"agent ended {agent.state} ({agent.error}), wanted {wanted}")
        return None

    return wait_until(reached, timeout, f"agent {agent_id} to be {wanted}")


def subprocess_env() -> dict[str, str]:
    """The environment that points a child process at the test database."""
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
        "DATA_DIR": str(settings.DATA_DIR),
    }
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
        )
    return env


# The Anthropic key of the test hub's worker: tests search for it everywhere it must not be.
HUB_ANTHROPIC_KEY = "sk-ant-api03-flotilla-hub-test-key-" + "0123456789abcdef" * 2
# The OpenAI key of the test hub's worker (the codex runtime's model gateway swaps it in).
HUB_OPENAI_KEY = "sk-proj-flotilla-hub-test-key-" + "fedcba9876543210" * 2


@pytest.fixture(scope="session")
def hub_messages_server():
    """The Messages API server that the worker cluster's anthropic client talks to."""
    from tests.messages_server import MessagesServer

    with MessagesServer() as server:
        yield server


@pytest.fixture(scope="session")
def hub_responses_server():
    """The OpenAI Responses API server that the worker cluster's model gateway forwards to."""
    from tests.responses_server import ResponsesServer

    with ResponsesServer() as server:
        yield server


@pytest.fixture(scope="session")
def egress_allowed_server():
    """A local HTTP server that the test cluster's egress allowlist names as host:port."""
    from tests.egress_servers import NamedHttpServer

    with NamedHttpServer("allowed-server") as server:
        yield server


@pytest.fixture(scope="session")
def egress_other_server():
    """A local HTTP server that no allowlist names: no sandbox may reach it."""
    from tests.egress_servers import NamedHttpServer

    with NamedHttpServer("other-server") as server:
        yield server


@pytest.fixture(scope="session")
def worker_env(
    django_db_setup, hub_messages_server, hub_responses_server, egress_allowed_server
) -> dict[str, str]:
    """The environment of the session's worker node (on the test database); a test's own
    node starts from it too."""
    return {
        **subprocess_env(),
        # Loopback is never reachable through the egress proxy unless the
        # operator names it as host:port, as this allowlist does.
        "FLOTILLA_EGRESS_ALLOWLIST": egress_allowed_server.address,
        "FLOTILLA_WORKERS": "4",
        "FLOTILLA_DEFAULT_TIMEOUT_S": "60",
        # Retries of failures not the agent's own wait a second, then two.
        "FLOTILLA_RETRY_BACKOFF_S": "1",
        # Small enough that a disk-filling agent is stopped in a test (tests/containment).
        "FLOTILLA_MAX_WORKTREE_MB": "64",
        "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings_test",
        "ANTHROPIC_BASE_URL": hub_messages_server.url,
        "ANTHROPIC_API_KEY": HUB_ANTHROPIC_KEY,
        "OPENAI_BASE_URL": hub_responses_server.base_url,
        "OPENAI_API_KEY": HUB_OPENAI_KEY,
        "ANTHROPIC_MAX_RETRIES": "2",
    }


WORKER_STARTED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def worker_cluster(request, django_db_setup, django_db_blocker, worker_env):
    """A real worker node (``runhub --role worker``: node supervisor and django-q2 cluster)."""
    node = Processes(env=worker_env, log_dir=Path(settings.DATA_DIR))
    process = node.start_worker()
    request.config.stash[WORKER_STARTED] = True
    yield process
    node.stop()


@pytest.fixture
def transactional_db(request, transactional_db):
    """pytest-django's, and then whatever the test left live is terminated before the flush.

    Once the session's worker node runs it claims every queued agent of its
    pool, also one a test spawned without asking for it: no run may spill
    into the next test. (A run's last writes may still meet the flush:
    tests/database_flush.py.)
    """
    yield
    if not request.config.stash.get(WORKER_STARTED, False):
        return
    from agents.services import agent_terminate

    # Agents in other pools are a test's own (spawn_claimed): no node runs them.
    live = Agent.objects.exclude(state__in=FINAL_STATES).filter(pool="default")
    for agent_id in live.values_list("id", flat=True):
        agent_terminate(agent_id=agent_id, reason="test teardown")


@pytest.fixture
def hub(worker_cluster, transactional_db):
    """Spawns go through django-q2 to the real worker cluster, as in production."""
    return worker_cluster


def docker_unavailable_reason() -> str | None:
    """Why docker tests cannot run here (None if they can); builds a missing sandbox image."""
    try:
        from agents.sandboxes.base import SandboxError
        from agents.sandboxes.docker import docker_image_build

        docker_image_build()
    except ImportError as error:
        return f"the docker SDK is not installed ({error})"
    except SandboxError as error:
        return str(error)
    return None


# What these modules check (sandbox isolation and limits, git on hostile
# worktrees, the agent CLIs and the Claude runtime, the gates on real
# repositories, the browser) is the same whatever the database: scripts/test
# runs them once, on SQLite, in a session of their own beside the two database
# passes, which run everything that reads or writes rows in ways the two
# databases treat differently. A
# single hub's crash recovery is here too: on PostgreSQL the reliability
# suite kills and restarts whole nodes (tests/reliability/). So are two real
# hubs federating over HTTP: signatures, nonces and quotas are the same rows
# on both databases, and the federation inbox tests run on both.
ONE_DATABASE_MODULES = (
    "containment/test_adversary.py",
    "containment/test_egress_proxy.py",
    "containment/test_hostile_git.py",
    "containment/test_network_modes.py",
    "containment/test_network_option.py",
    "containment/test_resource_attacks.py",
    "containment/test_sandbox_escape.py",
    "test_sandbox_bwrap.py",
    "test_docker_image.py",
    "test_docker_sandbox.py",
    "test_cli_agents.py",
    "test_model_gateway.py",
    "test_gates_real_repositories.py",
    "test_repository_setup.py",
    "test_base_merges.py",
    "dashboard/test_dashboard_browser.py",
    "dashboard/test_dashboard_operator_browser.py",
    "dashboard/test_dashboard_project_plan_browser.py",
    "dashboard/test_dashboard_projects_browser.py",
    "dashboard/test_dashboard_agent_retry_browser.py",
    "containment/test_hub_boundaries.py",
    "containment/test_kill_leaves_nothing.py",
    "test_api_docs.py",
    "test_claude_agents.py",
    "test_claude_tools.py",
    "test_conflict_runs.py",
    "test_crash_recovery.py",
    "test_docker_warm_pool.py",
    "test_federation_hubs.py",
    "test_gated_runs.py",
    "test_gates.py",
    "test_patch_mask_keys.py",
    "test_repository_setup_runs.py",
    "test_sandbox_tool_paths.py",
    "test_secret_scan.py",
    "test_worktree_leftovers.py",
)
# What runs once (the modules above, and the reliability suite, whose clusters
# have databases of their own) may run in any of scripts/test's three
# sessions. These run in the SQLite pass of everything that reads or writes
# rows, which is otherwise the shortest: so the three sessions end together
# and the two cores stay busy to the end (the README's test section).
ROWS_SESSION_MODULES = (
    "reliability/test_multinode_faults.py",
    "reliability/test_api_fuzzing.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    here = Path(__file__).parent
    for item in items:
        module = Path(item.fspath).relative_to(here).as_posix()
        if module in ONE_DATABASE_MODULES:
            item.add_marker(pytest.mark.one_database)
        if module in ROWS_SESSION_MODULES:
            item.add_marker(pytest.mark.rows_session)
    docker_items = [item for item in items if item.get_closest_marker("docker")]
    if not docker_items:
        return
    reason = docker_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"Docker engine unavailable: {reason}")
    for item in docker_items:
        item.add_marker(skip)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    line = f"!!! SKIPPING {len(docker_items)} DOCKER TESTS: {reason}"
    if reporter:
        reporter.write_line(line, red=True, bold=True)
    else:
        print(line, file=sys.stderr)


@pytest.fixture(scope="session")
def sandbox_toolchain():
    """The gate toolchain (ruff, pytest, coverage) bwrap sandboxes run; built once if missing."""
    from gates.toolchain import toolchain_ensure

    return toolchain_ensure().path


@pytest.fixture
def messages_server(settings):
    """A real HTTP server speaking the Messages API; the hub's anthropic client points at it."""
    from tests.messages_server import MessagesServer

    with MessagesServer() as server:
        settings.ANTHROPIC_BASE_URL = server.url
        settings.ANTHROPIC_API_KEY = "sk-ant-" + "test-0000000000000000000000000000"
        settings.ANTHROPIC_MAX_RETRIES = 1
        yield server


@pytest.fixture
def claude_server(hub, hub_messages_server):
    """The hub's Messages API server, emptied for this test; Claude agents spawned now use it."""
    hub_messages_server.reset()
    yield hub_messages_server
    hub_messages_server.reset()


def spawn_claimed(request, *, requested_by: str = "user:test"):
    """An agent spawned and claimed by this test process, as a node supervisor claims one.

    It is spawned in a pool of its own, so no worker node of the session takes it.
    """
    from django.test import override_settings

    from agents.leases import agents_claim
    from agents.services import agent_spawn

    pool = f"in-process-{uuid.uuid4().hex[:8]}"
    with override_settings(FLOTILLA_NODE_POOL=pool):
        agent_spawn(request=request, requested_by=requested_by)
        (agent,) = agents_claim(node=settings.FLOTILLA_NODE_NAME, limit=1, pool=pool)
    return agent


@pytest.fixture
def prepared_agents():
    """Prepare agents as a node's run does (claimed, worktree, sandbox, context); removed after."""
    from agents import runner
    from agents.services import agent_cleanup

    contexts = []

    def prepare(request, *, requested_by: str = "user:test"):
        agent = spawn_claimed(request, requested_by=requested_by)
        context = runner._prepare(runner.AgentRun(agent=agent))
        contexts.append(context)
        return context

    yield prepare
    for context in contexts:
        context.agent.refresh_from_db()
        agent_cleanup(agent=context.agent)
