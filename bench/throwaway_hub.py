"""A throwaway hub for benchmarks: its own data directory and SQLite database, real
daphne and django-q2 processes, and an admin token. Not a test helper: benches only."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ThrowawayHub:
    def __init__(self, *, workers: int = 8, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="flotilla-bench-"))
        self.data_dir.chmod(0o755)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
            "DATA_DIR": str(self.data_dir),
            "FLOTILLA_WORKERS": str(workers),
            "MAX_CONCURRENT_AGENTS": "100",
            "LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        self.env.pop("DATABASE_URL", None)
        self.processes: list[subprocess.Popen] = []
        self.token = ""

    def __enter__(self) -> "ThrowawayHub":
        self.manage("migrate", "--no-input")
        create_admin = (
            "from django.contrib.auth import get_user_model; "
            "get_user_model().objects.create_superuser('bench', password='bench-pw')"
        )
        self.manage("shell", "-c", create_admin)
        self.token = self.manage("drf_create_token", "bench").split()[2]
        for name, argv in (
            ("qcluster", ["manage.py", "qcluster"]),
            (
                "daphne",
                [
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "orchestrator_site.asgi:application",
                ],
            ),
        ):
            log = open(self.data_dir / f"{name}.log", "wb")  # noqa: SIM115
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    cwd=ROOT,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/api/v1/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        time.sleep(1.0)  # let every worker of the cluster start
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def get(self, path: str) -> dict:
        return self.request("GET", path)

    def spawn(self, repository: Path, script: str, **options) -> str:
        body = {
            "task_id": "bench",
            "agent_type": "worker",
            "runtime": "script",
            "script": script,
            "context": {"repository": str(repository), "branch": "main"},
            "options": options,
        }
        return self.request("POST", "/api/v1/agents", body)["agent_id"]

    def state(self, agent_id: str) -> str:
        return self.get(f"/api/v1/agents/{agent_id}")["state"]

    def wait_state(self, agent_id: str, states: set[str], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.state(agent_id)) not in states:
            if time.monotonic() > deadline or state in {"completed", "failed", "killed"}:
                raise RuntimeError(f"agent {agent_id} is {state}")
            time.sleep(0.01)
        return state


def make_repository(parent: Path) -> Path:
    """A bare repository with a main branch, as the tests make."""
    remote, seed = parent / "remote.git", parent / "seed"
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@b",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@b",
    }
    for argv, cwd in (
        (["init", "-q", "--bare", "-b", "main", str(remote)], parent),
        (["init", "-q", "-b", "main", str(seed)], parent),
    ):
        subprocess.run(["git", *argv], cwd=cwd, env=env, check=True)
    (seed / "README.md").write_text("bench\n")
    for argv in (["add", "-A"], ["commit", "-qm", "init"], ["push", "-q", str(remote), "main"]):
        subprocess.run(["git", *argv], cwd=seed, env=env, check=True)
    return remote
