"""A multi-node Flotilla on one machine: web (daphne) and worker processes on one PostgreSQL.

Every cluster has a database of its own (created from a template database
that is migrated once per test run), its own django-q2 queue name, and a
node name and ``DATA_DIR`` per worker, as separate machines would. A worker
node is what ``runhub --role worker`` starts: ``reconcile``, then ``qcluster``
and ``kill_listener``.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

ROOT = Path(__file__).resolve().parents[2]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
_TEMPLATE = f"flotilla_rel_template_{os.getpid()}"
_template_ready = False

_CREATE_USERS = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
User = get_user_model()
staff = User.objects.create_user("staff", password="staff-password", is_staff=True)
user = User.objects.create_user("user", password="user-password")
print(Token.objects.create(user=staff).key, Token.objects.create(user=user).key)
"""


def postgres_available() -> bool:
    try:
        with psycopg.connect(dbname="postgres", connect_timeout=2, **PG):
            return True
    except psycopg.OperationalError:
        return False


def admin_execute(sql: str) -> None:
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as connection:
        connection.execute(sql)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def database_url(name: str) -> str:
    return f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{name}"


def _template_database() -> str:
    """Migrate one database per test run; every cluster starts as a copy of it."""
    global _template_ready
    if not _template_ready:
        admin_execute(f"DROP DATABASE IF EXISTS {_TEMPLATE}")
        admin_execute(f"CREATE DATABASE {_TEMPLATE}")
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
            "DATABASE_URL": database_url(_TEMPLATE),
            "DATA_DIR": tempfile.mkdtemp(prefix="flotilla-rel-migrate-"),
        }
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        _template_ready = True
    return _TEMPLATE


def template_drop() -> None:
    if _template_ready:
        admin_execute(f"DROP DATABASE IF EXISTS {_TEMPLATE} WITH (FORCE)")


@dataclass
class Node:
    """One process role of the cluster: a web process or a worker node (several processes)."""

    name: str
    role: str
    env: dict[str, str]
    port: int = 0
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return bool(self.processes) and all(p.poll() is None for p in self.processes)


class Cluster:
    def __init__(
        self,
        *,
        workers: int = 2,
        webs: int = 2,
        worker_processes: int = 20,
        redis_url: str = "",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.database = f"flotilla_rel_{self.id}"
        self.root = Path(tempfile.mkdtemp(prefix=f"flotilla-rel-{self.id}-"))
        self.root.chmod(0o755)  # the sandbox user must reach the worktrees below it
        private = ("FLOTILLA_", "DJANGO_", "REDIS_URL", "DATABASE_URL")
        base = {key: value for key, value in os.environ.items() if not key.startswith(private)}
        self.base_env = {
            **base,
            "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
            "DATABASE_URL": database_url(self.database),
            "Q_CLUSTER_NAME": f"rel-{self.id}",
            "MAX_CONCURRENT_AGENTS": "500",
            "FLOTILLA_WORKERS": str(worker_processes),
            "FLOTILLA_DEFAULT_TIMEOUT_S": "120",
            "FLOTILLA_RECONCILE_QUEUED_GRACE_S": "2",
            "LOG_LEVEL": "WARNING",
            # Every node of one hub shares these two secrets (docs/scaling.md).
            "SECRET_KEY": f"reliability-{self.id}-" + "k" * 40 + uuid.uuid4().hex,
            "FLOTILLA_FEDERATION_KEY": f"reliability-federation-{self.id}-" + uuid.uuid4().hex,
            **({"REDIS_URL": redis_url} if redis_url else {}),
            **(extra_env or {}),
        }
        self.webs = [self._node(f"web-{index + 1}", "web") for index in range(webs)]
        self.workers = [
            self._node(f"node-{chr(ord('a') + index)}", "worker") for index in range(workers)
        ]
        self.staff_token = self.user_token = ""
        self.session = requests.Session()

    def _node(self, name: str, role: str) -> Node:
        data_dir = self.root / name
        data_dir.mkdir(mode=0o755)
        env = {**self.base_env, "FLOTILLA_NODE_NAME": name, "DATA_DIR": str(data_dir)}
        return Node(name=name, role=role, env=env)

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> "Cluster":
        admin_execute(f"CREATE DATABASE {self.database} TEMPLATE {_template_database()}")
        done = self.manage(self.webs[0], "shell", "-c", _CREATE_USERS)
        self.staff_token, self.user_token = done.strip().splitlines()[-1].split()
        for worker in self.workers:
            self.start_worker(worker)
        for web in self.webs:
            self.start_web(web)
        for worker in self.workers:
            self.wait_listening(worker)
        return self

    def stop(self) -> None:
        for node in [*self.webs, *self.workers]:
            self.kill(node)
        with contextlib.suppress(psycopg.OperationalError):
            admin_execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
        if not os.environ.get("FLOTILLA_KEEP_CLUSTER"):
            shutil.rmtree(self.root, ignore_errors=True)

    def manage(self, node: Node, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=node.env,
            capture_output=True,
            text=True,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} on {node.name} failed: {done.stderr[-3000:]}")
        return done.stdout

    def _spawn(self, node: Node, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{node.name}-{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=node.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        node.processes.append(process)
        return process

    def start_worker(self, node: Node) -> None:
        """What ``runhub --role worker`` does: reconcile this node, then the worker processes."""
        node.processes = []
        self.manage(node, "reconcile", "--no-schedule")
        self._spawn(node, "qcluster", [sys.executable, "manage.py", "qcluster"])
        self._spawn(node, "kill_listener", [sys.executable, "manage.py", "kill_listener"])

    def wait_listening(self, node: Node, timeout: float = 30) -> None:
        log = self.root / f"{node.name}-kill_listener.log"
        wait_until(
            lambda: log.exists() and "listening" in log.read_text(),
            timeout,
            f"the kill listener of {node.name}",
        )

    def start_web(self, node: Node) -> None:
        node.processes = []
        node.port = free_port()
        argv = [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(node.port),
            "orchestrator_site.asgi:application",
        ]
        process = self._spawn(node, "daphne", argv)

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"daphne {node.name} exited: {self.log(node, 'daphne')}")
            try:
                return requests.get(f"{node.url}/api/v1/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, 30, f"web process {node.name}")

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        """Signal every process group of the node (its children die with it) and reap them."""
        for process in node.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        for process in node.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log(self, node: Node, name: str) -> str:
        path = self.root / f"{node.name}-{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # --- API and database -------------------------------------------------------

    def api(
        self, web: Node, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = {"Authorization": f"Token {token or self.staff_token}"}
        return self.session.request(
            method,
            f"{web.url}/api/v1/{path}",
            headers=headers,
            timeout=kwargs.pop("timeout", 30),
            **kwargs,
        )

    def spawn(self, web: Node, repository: Path, script: str, **options: Any) -> str:
        body = {
            "task_id": options.pop("task_id", "reliability"),
            "agent_type": "worker",
            "runtime": "script",
            "script": script,
            "context": {"repository": str(repository), "branch": "main"},
            "options": {"timeout_s": 120, **options},
        }
        response = self.api(web, "POST", "agents", json=body)
        assert response.status_code == 202, response.text
        return response.json()["agent_id"]

    def query(self, sql: str, *params: Any) -> list[tuple]:
        with psycopg.connect(dbname=self.database, **PG) as connection:
            return connection.execute(sql, params).fetchall()

    def states(self, ids: list[str] | None = None) -> dict[str, str]:
        rows = self.query("SELECT id::text, state FROM agents_agent")
        return {agent_id: state for agent_id, state in rows if ids is None or agent_id in ids}

    def agents(self) -> dict[str, dict[str, Any]]:
        rows = self.query("SELECT id::text, state, node, result::text, error FROM agents_agent")
        return {
            row[0]: {
                "state": row[1],
                "node": row[2],
                "result": json.loads(row[3] or "{}"),
                "error": row[4],
            }
            for row in rows
        }


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
