"""A multi-node Flotilla on one machine: web (daphne) and worker processes on one PostgreSQL.

Every cluster has a database of its own (created from a template database
that is migrated once per test run), its own django-q2 queue name, and a
node name and ``DATA_DIR`` per worker, as separate machines would. A worker
node is ``runhub --role worker``: it reconciles, then runs the node supervisor,
the django-q2 cluster and the kill listener, all in its process group.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests
from django.conf import settings

from agents.sandboxes.base import AGENT_LABEL
from agents.sandboxes.cgroups import GROUP_PARENT
from agents.sandboxes.local import cgroup_name
from tests.launcher import ROOT, Processes, free_port, wait_until

__all__ = [
    "Cluster",
    "Node",
    "PostgresServer",
    "postgres_available",
    "template_drop",
    "wait_until",
]
_TEMPLATE = f"flotilla_rel_template_{os.getpid()}"

_CREATE_USERS = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
User = get_user_model()
staff = User.objects.create_user("staff", password="staff-password", is_staff=True)
user = User.objects.create_user("user", password="user-password")
print(Token.objects.create(user=staff).key, Token.objects.create(user=user).key)
"""


@dataclass
class PostgresServer:
    """A PostgreSQL server for clusters: the machine's, or a private one a test may restart.

    Restarting the machine's server would cut every other test session's
    connections (scripts/test runs several side by side); a private server
    (``PostgresServer.private()``) is a real postmaster of its own, started
    with ``initdb`` and ``pg_ctl`` as the ``postgres`` user.
    """

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    data_dir: Path | None = None
    templates: set[str] = field(default_factory=set)

    @classmethod
    def private(cls) -> "PostgresServer":
        data_dir = Path(tempfile.mkdtemp(prefix="flotilla-rel-pg-"))
        shutil.chown(data_dir, user="postgres", group="postgres")
        server = cls(port=free_port(), data_dir=data_dir)
        server._pg_ctl("initdb", "-o", "--auth=trust --username=postgres --no-sync")
        options = f"-p {server.port} -k {data_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        server._pg_ctl("start", "-w", "-l", str(data_dir / "server.log"), "-o", options)
        return server

    def _pg_ctl(self, *args: str) -> None:
        assert self.data_dir is not None, "the machine's server is not ours to start or stop"
        bin_dir = max(
            Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name)
        )
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def restart(self) -> None:
        """Stop the server (every connection to it drops), then start it with the same options."""
        assert self.data_dir is not None
        # The log file, not pg_ctl's output: the new postmaster would hold that pipe open.
        self._pg_ctl("restart", "-w", "-m", "fast", "-l", str(self.data_dir / "server.log"))

    def stop(self) -> None:
        if self.data_dir is None:
            self.execute_each(
                f"DROP DATABASE IF EXISTS {name} WITH (FORCE)" for name in self.templates
            )
            return
        with contextlib.suppress(subprocess.CalledProcessError):
            self._pg_ctl("stop", "-w", "-m", "immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def connect(self, dbname: str = "postgres", **options: Any) -> psycopg.Connection:
        return psycopg.connect(
            dbname=dbname, host=self.host, port=self.port, user=self.user, **options
        )

    def available(self) -> bool:
        try:
            with self.connect(connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def execute(self, sql: str) -> None:
        with self.connect(autocommit=True) as connection:
            connection.execute(sql)

    def execute_each(self, statements: Iterable[str]) -> None:
        for statement in statements:
            with contextlib.suppress(psycopg.OperationalError):
                self.execute(statement)

    def url(self, name: str) -> str:
        return f"postgres://{self.user}@{self.host}:{self.port}/{name}"

    def template(self) -> str:
        """Migrate one database per server and test run; every cluster starts as a copy of it."""
        if _TEMPLATE not in self.templates:
            self.execute(f"DROP DATABASE IF EXISTS {_TEMPLATE}")
            self.execute(f"CREATE DATABASE {_TEMPLATE}")
            env = {
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
                "DATABASE_URL": self.url(_TEMPLATE),
                "DATA_DIR": tempfile.mkdtemp(prefix="flotilla-rel-migrate-"),
            }
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "--no-input"],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
            )
            self.templates.add(_TEMPLATE)
        return _TEMPLATE


# The machine's server (127.0.0.1:5432), which every test session shares.
SHARED_SERVER = PostgresServer()


def postgres_available() -> bool:
    return SHARED_SERVER.available()


def template_drop() -> None:
    SHARED_SERVER.stop()


@dataclass
class Node:
    """One process role of the cluster: a web process or a worker node (a process group)."""

    name: str
    role: str
    env: dict[str, str]
    log_dir: Path
    port: int = 0
    group: Processes = field(init=False)

    def __post_init__(self) -> None:
        self.group = Processes(env=self.env, log_dir=self.log_dir, prefix=f"{self.name}-")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def processes(self) -> list[subprocess.Popen]:
        return list(self.group.latest.values())

    def alive(self) -> bool:
        return self.group.alive()


class Cluster:
    def __init__(
        self,
        *,
        workers: int = 2,
        webs: int = 2,
        capacity: int = 20,
        redis_url: str = "",
        extra_env: dict[str, str] | None = None,
        server: PostgresServer = SHARED_SERVER,
    ) -> None:
        self.server = server
        self.id = uuid.uuid4().hex[:8]
        self.database = f"flotilla_rel_{self.id}"
        self.root = Path(tempfile.mkdtemp(prefix=f"flotilla-rel-{self.id}-"))
        private = ("FLOTILLA_", "DJANGO_", "REDIS_URL", "DATABASE_URL")
        base = {key: value for key, value in os.environ.items() if not key.startswith(private)}
        self.base_env = {
            **base,
            "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
            "DATABASE_URL": server.url(self.database),
            "Q_CLUSTER_NAME": f"rel-{self.id}",
            "MAX_CONCURRENT_AGENTS": "500",
            "FLOTILLA_NODE_CAPACITY": str(capacity),
            "FLOTILLA_WORKERS": "2",
            "FLOTILLA_DEFAULT_TIMEOUT_S": "120",
            "FLOTILLA_RETRY_BACKOFF_S": "0.5",
            "LOG_LEVEL": "WARNING",
            # The tests' repositories live in temporary directories.
            "FLOTILLA_LOCAL_REPOSITORY_ROOTS": tempfile.gettempdir(),
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
        return Node(name=name, role=role, env=env, log_dir=self.root)

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> "Cluster":
        self.server.execute(f"CREATE DATABASE {self.database} TEMPLATE {self.server.template()}")
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
            self.server.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
        if not os.environ.get("FLOTILLA_KEEP_CLUSTER"):
            shutil.rmtree(self.root, ignore_errors=True)

    def manage(self, node: Node, *args: str, check: bool = True) -> str:
        return node.group.manage(*args, check=check)

    def start_worker(self, node: Node) -> None:
        """``runhub --role worker`` in a session of its own: the node is that process group."""
        node.group.start_worker(wait=False)

    def wait_listening(self, node: Node, timeout: float = 60) -> None:
        """Until the node's supervisor and kill listener both say they are ready."""
        node.group.wait_worker(timeout=timeout)

    def start_web(self, node: Node) -> None:
        node.port = free_port()
        node.group.start_web(node.port)

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        """Signal every process group of the node (its children die with it) and reap them."""
        node.group.signal(sig)

    def log(self, node: Node, name: str) -> str:
        return node.group.log(name)

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
        with self.server.connect(self.database) as connection:
            return connection.execute(sql, params).fetchall()

    def states(self, ids: list[str] | None = None) -> dict[str, str]:
        rows = self.query("SELECT id::text, state FROM agents_agent")
        return {agent_id: state for agent_id, state in rows if ids is None or agent_id in ids}

    def history(self, agent_id: str) -> list[tuple[str, str, str]]:
        """The agent's state changes, oldest first: (time, new state, reason)."""
        rows = self.query(
            "SELECT created_at::text, data->>'to', coalesce(data->>'reason', '') "
            "FROM agents_agentevent WHERE agent_id = %s AND kind = 'state' ORDER BY id",
            agent_id,
        )
        return [tuple(row) for row in rows]

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


# --- what runs on this machine ----------------------------------------------------


def sandbox_processes(agent_ids) -> dict[str, list[int]]:
    """What still runs for these agents on this machine: labelled processes and cgroup members.

    The nodes are hubs of their own (each its own DATA_DIR, so its own hub
    id): this looks at every hub's sandboxes, where a node looks at its own.
    """
    wanted = {str(agent_id) for agent_id in agent_ids}
    found: dict[str, list[int]] = {}
    for pid, agent_id in _labelled_by_any_hub().items():
        if agent_id in wanted:
            found.setdefault(agent_id, []).append(pid)
    for agent_id in wanted:
        for procs in _cgroup_dirs(agent_id, "cgroup.procs"):
            with contextlib.suppress(OSError):
                pids = [int(pid) for pid in procs.read_text().split()]
                if pids:
                    found.setdefault(agent_id, []).extend(pids)
    return found


def agent_cgroups(agent_ids) -> list[str]:
    return [str(agent_id) for agent_id in agent_ids if _cgroup_dirs(str(agent_id), "")]


def _cgroup_dirs(agent_id: str, name: str) -> list[Path]:
    freezer = Path(settings.FLOTILLA_CGROUP_ROOT) / "freezer" / GROUP_PARENT
    return [path / name if name else path for path in freezer.glob(f"*/{cgroup_name(agent_id)}")]


def _labelled_by_any_hub() -> dict[int, str]:
    needle = f"{AGENT_LABEL}=".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(needle):
                found[int(entry.name)] = item[len(needle) :].decode(errors="replace")
                break
    return found
