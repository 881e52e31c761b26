"""Real hub processes for the tests and the benchmarks: the one launcher both use.

A web process is daphne; a worker node is ``runhub --role worker``, which
reconciles, then runs the node supervisor, the django-q2 cluster and, on
PostgreSQL, the kill listener, all in its process group. Every process starts
in a session of its own, so a stop or a crash reaches its whole group.

Every wait here is on a real signal: the health endpoint answering, the
worker's readiness lines in its log ("supervising", and "listening" where a
kill listener runs), an exited process. A timeout only bounds how long a
broken run hangs; it is no latency claim (``bench/`` measures those).

No pytest here: ``bench/`` imports this module too.
"""

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

_CREATE_STAFF = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_user("admin", password="admin-password",
                                            is_staff=True, is_superuser=True)
print(Token.objects.create(user=user).key)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(
    check: Callable[[], T], timeout: float = 30.0, what: str = "", every: float = 0.1
) -> T:
    """Poll ``check`` until it returns something true, and return that; fail naming ``what``.

    The timeout only bounds how long a broken run hangs: it is no latency
    claim (benchmarks measure those).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


# --- repositories the hubs work on ---------------------------------------------


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


def make_remote(parent: Path, files: dict[str, str] | None = None, name: str = "remote") -> Path:
    """A bare repository with a ``main`` branch holding ``files``; returns its path."""
    remote = parent / f"{name}.git"
    seed = parent / f"{name}-seed"
    git(parent, "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
    git(parent, "init", "--quiet", "--initial-branch=main", str(seed))
    for relative, content in (files or {"README.md": "# sample\n"}).items():
        target = seed / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git(seed, "add", "--all")
    git(seed, "commit", "--quiet", "-m", "initial commit")
    git(seed, "push", "--quiet", str(remote), "main")
    return remote


# --- processes ------------------------------------------------------------------


def node_processes(env: Mapping[str, str]) -> list[int]:
    """Live processes started for the node of ``env``: each inherits its name and data directory.

    Both, since two clusters of the tests may each have a node of one name.
    """
    needles = {f"{key}={env[key]}".encode() for key in ("FLOTILLA_NODE_NAME", "DATA_DIR")}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needles <= set((entry / "environ").read_bytes().split(b"\0")):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def web_argv(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "orchestrator_site.asgi:application",
    ]


WORKER_ARGV = [sys.executable, "manage.py", "runhub", "--role", "worker"]


class Processes:
    """The processes of one hub or node, each logging to ``<log_dir>/<prefix><name>.log``.

    A restarted process appends to its log, and its readiness is read from
    the lines written since that start.
    """

    def __init__(self, *, env: dict[str, str], log_dir: Path, prefix: str = "") -> None:
        self.env = env
        self.log_dir = log_dir
        self.prefix = prefix
        self.processes: list[subprocess.Popen] = []
        self.latest: dict[str, subprocess.Popen] = {}
        self._log_starts: dict[str, int] = {}

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{self.prefix}{name}.log"

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        path = self.log_path(name)
        self._log_starts[name] = path.stat().st_size if path.exists() else 0
        with open(path, "ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        self.latest[name] = process
        return process

    def start_web(
        self, port: int, *, name: str = "daphne", timeout: float = 30
    ) -> subprocess.Popen:
        """daphne on 127.0.0.1:``port``, once its health endpoint answers 200."""
        process = self.start(name, web_argv(port))

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{self.prefix}{name} exited: {self.log(name)}")
            try:
                health = requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1)
            except requests.RequestException:
                return False
            return health.status_code == 200

        wait_until(answers, timeout, f"{self.prefix}{name} to answer on port {port}")
        return process

    def start_worker(
        self, *, name: str = "worker", wait: bool = True, timeout: float = 60
    ) -> subprocess.Popen:
        """``runhub --role worker``; with ``wait``, once the node says it is ready."""
        process = self.start(name, WORKER_ARGV)
        if wait:
            self.wait_worker(name=name, timeout=timeout)
        return process

    def wait_worker(self, *, name: str = "worker", timeout: float = 60) -> None:
        """Until the node's supervisor (and on PostgreSQL its kill listener) says it is ready."""
        process = self.latest[name]
        path = self.log_path(name)
        database = self.env.get("DATABASE_URL", "")
        lines = [b"supervising"]
        if database.startswith(("postgres://", "postgresql://")):
            lines.append(b"listening")

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"worker node {self.prefix}{name} exited: {self.log(name)}")
            written = path.read_bytes()[self._log_starts[name] :]
            return all(line in written for line in lines)

        wait_until(ready, timeout, f"worker node {self.prefix}{name} to be ready")

    def manage(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed: {done.stderr[-3000:]}")
        return done.stdout

    def alive(self) -> bool:
        return bool(self.latest) and all(p.poll() is None for p in self.latest.values())

    def signal(self, sig: int = signal.SIGKILL, *, wait_s: float = 10) -> None:
        """Signal every live process group and reap it; one that outlives ``wait_s`` is killed."""
        live = [process for process in self.processes if process.poll() is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        for process in live:
            try:
                process.wait(timeout=wait_s)
                # The rest of the group (the django-q2 cluster's processes, say)
                # holds database connections until it has gone too.
                wait_until(
                    lambda pgid=process.pid: not group_members(pgid),
                    wait_s,
                    f"process group {process.pid} to end",
                )
            except (subprocess.TimeoutExpired, AssertionError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, as a process manager stops a hub (the node hands its agents back)."""
        self.signal(signal.SIGTERM)


def group_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that still run (a zombie has ended)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


# --- a hub of its own -------------------------------------------------------------


class Hub:
    """A hub of its own: a fresh DATA_DIR and SQLite database, daphne, a worker node, staff.

    ``env`` overrides the hub's environment (capacity, pool size, keys).
    Used by the two-hub federation tests, the API fuzzing and the benchmarks.
    """

    def __init__(self, name: str = "hub", *, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"flotilla-{name}-"))
        # Sandboxes run as an unprivileged user that must reach the worktrees below.
        self.data_dir.chmod(0o755)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
        # Agents may work on repositories made below the hub's own directory.
        self.env.setdefault("FLOTILLA_LOCAL_REPOSITORY_ROOTS", str(self.data_dir))
        self.env.update(
            {
                "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
                "DATA_DIR": str(self.data_dir),
                "DATABASE_URL": f"sqlite:///{self.data_dir / 'hub.sqlite3'}",
                "FLOTILLA_INSTANCE_ID": name,
                "FLOTILLA_INSTANCE_NAME": f"Hub {name}",
                "FLOTILLA_NODE_NAME": name,
                "FLOTILLA_FEDERATION_URL": self.url,
                "LOG_LEVEL": "WARNING",
                **(env or {}),
            }
        )
        self.group = Processes(env=self.env, log_dir=self.data_dir)
        self.token = ""
        self.session = requests.Session()

    @property
    def processes(self) -> list[subprocess.Popen]:
        return self.group.processes

    @property
    def worker(self) -> subprocess.Popen:
        return self.group.latest["worker"]

    def start(self) -> "Hub":
        try:
            self.manage("migrate", "--no-input")
            self.token = self.manage("shell", "-c", _CREATE_STAFF).strip().splitlines()[-1]
            self.group.start_worker(wait=False)
            self.group.start_web(self.port)
            self.group.wait_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, keep: bool = False) -> None:
        self.group.stop()
        if not keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "Hub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def manage(self, *args: str) -> str:
        return self.group.manage(*args)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Token {self.token}", **kwargs.pop("headers", {})}
        return self.session.request(
            method,
            f"{self.url}/api/v1/{path}",
            headers=headers,
            timeout=kwargs.pop("timeout", 30),
            **kwargs,
        )

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """``path`` below the hub's root; the JSON answer, raising on an error status."""
        response = self.api(method, path.removeprefix("/api/v1/"), json=body)
        response.raise_for_status()
        return response.json() if response.content else {}

    def get(self, path: str) -> dict:
        return self.request("GET", path)

    def spawn(self, repository: Path, script: str, **options: Any) -> str:
        body = {
            "task_id": options.pop("task_id", self.name),
            "agent_type": "worker",
            "runtime": "script",
            "script": script,
            "context": {"repository": str(repository), "branch": "main"},
            "options": options,
        }
        return self.request("POST", "agents", body)["agent_id"]

    def state(self, agent_id: str) -> str:
        return self.get(f"agents/{agent_id}")["state"]

    def wait_state(self, agent_id: str, states: set[str], timeout: float = 60) -> str:
        def reached() -> str:
            state = self.state(agent_id)
            if state not in states and state in {"completed", "failed", "killed"}:
                raise RuntimeError(f"agent {agent_id} is {state}")
            return state if state in states else ""

        return wait_until(reached, timeout, f"agent {agent_id} to be {states}", every=0.01)

    def query(self, sql: str, *params: Any) -> list[tuple]:
        """Read this hub's database directly (for what no API shows, like the audit log)."""
        with sqlite3.connect(self.data_dir / "hub.sqlite3", timeout=30) as connection:
            return connection.execute(sql, params).fetchall()


def hubs_start(*names: str, env: dict[str, str] | None = None) -> list[Hub]:
    """Start several hubs at once (their migrations run in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    hubs = [Hub(name, env=env) for name in names]
    with ThreadPoolExecutor(max_workers=len(hubs)) as pool:
        futures = [pool.submit(hub.start) for hub in hubs]
    errors = [error for future in futures if (error := future.exception())]
    if errors:
        for hub in hubs:
            hub.stop()
        raise errors[0]
    return hubs


def hubs_connect(hub: Hub, peer: Hub) -> tuple[dict, dict]:
    """``hub`` connects to ``peer`` and ``peer``'s admin accepts; returns both peer records."""
    response = hub.api("POST", "peers/connect", json={"url": peer.url})
    assert response.status_code == 201, response.text
    on_hub = response.json()
    pending = [
        item
        for item in peer.api("GET", "peers").json()["results"]
        if item["instance_id"] == hub.name
    ]
    accepted = peer.api("POST", f"peers/{pending[0]['id']}/accept", json={"reason": "test"})
    assert accepted.status_code == 200, accepted.text
    return on_hub, accepted.json()
