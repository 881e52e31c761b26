"""Killing a hub's worker mid-project and restarting it completes the project exactly once.

The hub runs as real processes (daphne and a django-q2 cluster) on a queue and
node name of this test's own, so the session's worker cluster takes none of
its tasks and the crash touches nothing else.
"""

import os
import signal
import uuid
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from agents.models import FINAL_STATES, Agent, AgentEvent
from agents.services import agent_terminate
from audit.models import AuditEvent
from taskqueue.models import Task, TaskAttempt
from tests.conftest import subprocess_env, wait_until
from tests.launcher import Processes, free_port
from tests.test_projects import is_ancestor, wait_for_project


class Hub(Processes):
    """The web and worker processes of one hub, on a node and pool of this test's own."""

    def __init__(self, log_dir: Path) -> None:
        node = f"projects-crash-{uuid.uuid4().hex[:8]}"
        env = {
            **subprocess_env(),
            "FLOTILLA_NODE_NAME": node,
            "FLOTILLA_WORKERS": "6",
            "Q_CLUSTER_NAME": f"crash-{node}",
            "FLOTILLA_NODE_POOL": f"crash-{node}",
        }
        super().__init__(env=env, log_dir=log_dir)
        self.port = free_port()
        self.token = ""

    def post(self, path: str, body: dict) -> dict:
        response = requests.post(
            f"http://127.0.0.1:{self.port}{path}",
            json=body,
            headers={"Authorization": f"Token {self.token}"},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()


@pytest.fixture
def crashable_hub(transactional_db, tmp_path):
    hub = Hub(tmp_path)
    user = get_user_model().objects.create_user("crash-operator", password="x" * 12)
    hub.token = Token.objects.create(user=user).key
    yield hub
    hub.kill()
    for agent in Agent.objects.exclude(state__in=FINAL_STATES):
        agent_terminate(agent_id=agent.id, reason="test teardown")


def test_worker_killed_mid_project_resumes_on_restart_with_no_task_run_twice(
    crashable_hub, remote_repo
):
    hub = crashable_hub
    worker = hub.start_worker()
    hub.start_web(hub.port)
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
    project = hub.post("/api/v1/projects", {"name": "crash", "tasks": tasks})
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

    # runhub --role worker reconciles its node before it claims anything.
    hub.start_worker()
    retried = AuditEvent.objects.filter(actor="system:reconciler", action="agent.retry")
    assert {event.target for event in retried} == {
        f"agent:{agent.id}" for agent in Agent.objects.filter(task_id__in=middle)
    }
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
