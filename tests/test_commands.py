"""The hub's commands: runhub starts and stops every process of the hub; demo and spawn work."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model
from django.db import connection

from agents.models import Agent, AgentState
from tests.conftest import ROOT, subprocess_env, wait_for_state, wait_until
from tests.launcher import free_port


def manage(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
    )


# Command-line mechanics, the same on both databases: run once (one_database).
# runhub itself runs on both: on PostgreSQL it starts the kill listener too.
ONCE = pytest.mark.one_database


def test_runhub_serves_the_api_runs_agents_and_stops_every_process_on_sigterm(
    transactional_db, remote_repo
):
    port = free_port()
    hub = subprocess.Popen(
        [sys.executable, "manage.py", "runhub", "--port", str(port)],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert f"http://127.0.0.1:{port}/" in hub.stdout.readline()

        def health() -> dict | None:
            try:
                return requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).json()
            except requests.RequestException:
                return None

        assert wait_until(health, what="the hub to answer")["status"] == "ok"
        spawned = manage("spawn", str(remote_repo), "echo via-runhub > out.txt")
        assert spawned.returncode == 0, spawned.stderr
        wait_for_state(spawned.stdout.strip(), AgentState.COMPLETED)
        children = subprocess.run(
            ["pgrep", "-P", str(hub.pid)], capture_output=True, text=True
        ).stdout.split()
        commands = " ".join(Path(f"/proc/{pid}/cmdline").read_text() for pid in children)
        assert "daphne" in commands and "supervise" in commands and "qcluster" in commands
        # On PostgreSQL the worker role also runs the node's kill listener.
        assert len(children) == (4 if connection.vendor == "postgresql" else 3)
    finally:
        hub.send_signal(signal.SIGTERM)
        output, _ = hub.communicate(timeout=20)
    assert hub.returncode == 0, output
    assert "hub stopped" in output
    assert all(not os.path.exists(f"/proc/{pid}") for pid in children)


@ONCE
def test_runhub_refuses_a_bad_port():
    result = manage("runhub", "--port", "70000")

    assert result.returncode != 0
    assert "--port must be between 1 and 65535" in result.stderr


@ONCE
def test_demo_creates_a_repository_an_admin_and_agents_that_run(hub):
    result = manage("demo")

    assert result.returncode == 0, result.stderr
    assert "admin login:       admin / " in result.stdout
    assert get_user_model().objects.get(username="admin").is_superuser
    agents = {agent.task_id: agent for agent in Agent.objects.all()}
    assert set(agents) == {"demo-docs", "demo-failing", "demo-long"}
    assert wait_for_state(agents["demo-docs"].id, AgentState.COMPLETED).result["pushed_commit"]
    assert wait_for_state(agents["demo-failing"].id, AgentState.FAILED).result["exit_code"] == 2
    wait_for_state(agents["demo-long"].id, AgentState.RUNNING)


@ONCE
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["spawn", "/no/such/repo", "true"],
            "/no/such/repo is not below a directory this hub serves repositories from",
        ),
        (["kill", "00000000-0000-0000-0000-000000000000", "--reason", "x"], "no agent with id"),
        (["kill", "not-a-uuid", "--reason", "x"], "no agent with id"),
    ],
)
def test_commands_explain_bad_input_without_a_traceback(transactional_db, args, message):
    result = manage(*args)

    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_settings_stop_the_hub_with_the_variable_named(transactional_db):
    result = manage("check", env={**subprocess_env(), "MAX_CONCURRENT_AGENTS": "lots"})

    assert result.returncode != 0
    assert "MAX_CONCURRENT_AGENTS must be a whole number, not 'lots'" in result.stderr


def test_production_requires_a_secret_key(transactional_db):
    env = {**subprocess_env(), "FLOTILLA_ENV": "production"}
    env.pop("SECRET_KEY", None)

    result = manage("check", env=env)

    assert "SECRET_KEY must be set when FLOTILLA_ENV=production" in result.stderr
