"""Shared fixtures: real git repositories, API clients and a real django-q2 worker."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from agents.models import FINAL_STATES, Agent

ROOT = Path(__file__).resolve().parent.parent


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_remote(tmp_path: Path, files: dict[str, str] | None = None, name: str = "remote") -> Path:
    """A bare repository with a ``main`` branch holding ``files``; returns its path."""
    remote = tmp_path / f"{name}.git"
    seed = tmp_path / f"{name}-seed"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
    git(tmp_path, "init", "--quiet", "--initial-branch=main", str(seed))
    for relative, content in (files or {"README.md": "# sample\n"}).items():
        target = seed / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git(seed, "add", "--all")
    git(seed, "commit", "--quiet", "-m", "initial commit")
    git(seed, "push", "--quiet", str(remote), "main")
    return remote


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


def wait_for_state(agent_id, states, timeout: float = 30.0) -> Agent:
    """Poll the database until the agent reaches one of ``states``."""
    wanted = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent = Agent.objects.get(id=agent_id)
        if agent.state in wanted:
            return agent
        if agent.state in FINAL_STATES:
            raise AssertionError(f"agent ended {agent.state} ({agent.error}), wanted {wanted}")
        time.sleep(0.02)
    raise AssertionError(f"agent {agent_id} still {Agent.objects.get(id=agent_id).state}")


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


@pytest.fixture(scope="session")
def hub_messages_server():
    """The Messages API server that the worker cluster's anthropic client talks to."""
    from tests.messages_server import MessagesServer

    with MessagesServer() as server:
        yield server


@pytest.fixture(scope="session")
def worker_cluster(django_db_setup, django_db_blocker, hub_messages_server):
    """A real django-q2 cluster (``manage.py qcluster``) on the test database."""
    env = {
        **subprocess_env(),
        "FLOTILLA_WORKERS": "12",
        "FLOTILLA_DEFAULT_TIMEOUT_S": "60",
        "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings_test",
        "ANTHROPIC_BASE_URL": hub_messages_server.url,
        "ANTHROPIC_API_KEY": HUB_ANTHROPIC_KEY,
        "ANTHROPIC_MAX_RETRIES": "2",
    }
    log = open(Path(settings.DATA_DIR) / "qcluster.log", "wb")  # noqa: SIM115 - open for the session
    process = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    time.sleep(0.5)
    if process.poll() is not None:
        raise RuntimeError(
            f"qcluster exited: {(Path(settings.DATA_DIR) / 'qcluster.log').read_text()}"
        )
    yield process
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log.close()


@pytest.fixture
def hub(worker_cluster, transactional_db):
    """Spawns go through django-q2 to the real worker cluster, as in production.

    Whatever a test leaves running is terminated before the database is
    flushed, so no run spills into the next test.
    """
    yield worker_cluster
    from agents.selectors import live_agent_ids
    from agents.services import agent_terminate

    for agent_id in live_agent_ids():
        agent_terminate(agent_id=agent_id, reason="test teardown")
    time.sleep(0.1)


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


def pytest_collection_modifyitems(config, items) -> None:
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
