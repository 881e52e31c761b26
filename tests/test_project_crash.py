"""Killing a hub's worker mid-project and restarting it completes the project exactly once.

The hub runs as real processes (daphne and a django-q2 cluster) on a queue and
node name of this test's own, so the session's worker cluster takes none of
its tasks and the crash touches nothing else.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from agents.models import FINAL_STATES, Agent, AgentEvent
from agents.services import agent_terminate
from taskqueue.models import Task, TaskAttempt
from tests.conftest import ROOT, subprocess_env
from tests.test_projects import is_ancestor, wait_for_project, wait_until


class Hub:
    def __init__(self, log_dir: Path) -> None:
        node = f"projects-crash-{uuid.uuid4().hex[:8]}"
        self.log_dir = log_dir
        self.env = {
            **subprocess_env(),
            "FLOTILLA_NODE_NAME": node,
            "FLOTILLA_WORKERS": "6",
            "Q_CLUSTER_NAME": f"crash-{node}",
        }
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.processes: list[subprocess.Popen] = []

    def start(self, name: str, *argv: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def start_web(self) -> None:
        web = self.start(
            "daphne",
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            "orchestrator_site.asgi:application",
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and web.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/health", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError((self.log_dir / "daphne.log").read_text())

    def manage(self, *argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def post(self, path: str, body: dict, token: str) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def crashable_hub(transactional_db, tmp_path):
    hub = Hub(tmp_path)
    user = get_user_model().objects.create_user("crash-operator", password="x" * 12)
    hub.token = Token.objects.create(user=user).key
    yield hub
    hub.stop_all()
    for agent in Agent.objects.exclude(state__in=FINAL_STATES):
        agent_terminate(agent_id=agent.id, reason="test teardown")


def test_worker_killed_mid_project_resumes_on_restart_with_no_task_run_twice(
    crashable_hub, remote_repo
):
    hub = crashable_hub
    worker = hub.start("qcluster", "manage.py", "qcluster")
    hub.start_web()
    repo = str(remote_repo)
    tasks = [
        {"key": "design", "script": "echo design > design.txt", "repository": repo},
        {
            "key": "left",
            "script": "sleep 2; echo left > left.txt",
            "repository": repo,
            "depends_on": ["design"],
        },
        {
            "key": "right",
            "script": "sleep 2; echo right > right.txt",
            "repository": repo,
            "depends_on": ["design"],
        },
        {
            "key": "last",
            "script": "cat left.txt right.txt > both.txt",
            "repository": repo,
            "depends_on": ["left", "right"],
        },
    ]
    project = hub.post("/api/v1/projects", {"name": "crash", "tasks": tasks}, hub.token)
    pid = project["id"]
    middle = [f"p{pid}-left", f"p{pid}-right"]
    wait_until(
        lambda: Agent.objects.filter(task_id__in=middle, state="running").count() == 2,
        what="left and right running",
    )

    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    assert set(Task.objects.filter(project_id=pid).values_list("key", "state")) == {
        ("design", "succeeded"),
        ("left", "running"),
        ("right", "running"),
        ("last", "pending"),
    }

    hub.start("qcluster", "manage.py", "qcluster")
    report = json.loads(hub.manage("reconcile", "--no-schedule"))
    assert len(report["retried"]) == 2
    hub.manage("projects_tick")

    assert wait_for_project(pid, timeout=90).state == "succeeded"

    for task in Task.objects.filter(project_id=pid):
        attempts = TaskAttempt.objects.filter(task=task)
        assert attempts.count() == 1, task.key
        assert attempts.filter(state="succeeded").count() == 1, task.key
        completions = AgentEvent.objects.filter(
            agent_id=attempts[0].agent_id, kind="state", data__to="completed"
        )
        assert completions.count() == 1, task.key
    runs = {
        a.task.key: a.agent
        for a in TaskAttempt.objects.filter(task__project_id=pid).select_related("task", "agent")
    }
    assert runs["left"].attempt == 1 and runs["right"].attempt == 1  # re-run once by the reconciler
    assert runs["design"].attempt == 0 and runs["last"].attempt == 0
    for key in ("left", "right"):
        assert is_ancestor(
            remote_repo, runs[key].result["pushed_commit"], runs["last"].result["pushed_commit"]
        )
