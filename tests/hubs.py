"""Real Flotilla hubs in subprocesses: daphne + qcluster, each with its own SQLite and DATA_DIR.

Used by the two-hub federation tests and by bench/federation.py.
"""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent

_CREATE_STAFF = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_user("admin", password="admin-password",
                                            is_staff=True, is_superuser=True)
print(Token.objects.create(user=user).key)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Hub:
    name: str
    url: str
    data_dir: Path
    env: dict[str, str]
    token: str = ""
    processes: list[subprocess.Popen] = field(default_factory=list)
    session: requests.Session = field(default_factory=requests.Session)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Token {self.token}", **kwargs.pop("headers", {})}
        return self.session.request(
            method,
            f"{self.url}/api/v1/{path}",
            headers=headers,
            timeout=kwargs.pop("timeout", 30),
            **kwargs,
        )

    def query(self, sql: str, *params: Any) -> list[tuple]:
        """Read this hub's database directly (for what no API shows, like the audit log)."""
        with sqlite3.connect(self.data_dir / "hub.sqlite3", timeout=30) as connection:
            return connection.execute(sql, params).fetchall()

    def manage(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout


def hub_start(name: str, *, workers: int = 4) -> Hub:
    data_dir = Path(tempfile.mkdtemp(prefix=f"flotilla-{name}-"))
    data_dir.chmod(0o755)  # the sandbox user must reach the worktrees below it
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL",)}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
            "DATA_DIR": str(data_dir),
            "DATABASE_URL": f"sqlite:///{data_dir / 'hub.sqlite3'}",
            "FLOTILLA_INSTANCE_ID": name,
            "FLOTILLA_INSTANCE_NAME": f"Hub {name}",
            "FLOTILLA_NODE_NAME": name,
            "FLOTILLA_FEDERATION_URL": url,
            "FLOTILLA_WORKERS": str(workers),
            "FLOTILLA_DEFAULT_TIMEOUT_S": "60",
            "LOG_LEVEL": "WARNING",
        }
    )
    hub = Hub(name=name, url=url, data_dir=data_dir, env=env)
    hub.manage("migrate", "--no-input")
    hub.token = hub.manage("shell", "-c", _CREATE_STAFF).strip().splitlines()[-1]
    log = open(data_dir / "hub.log", "wb")  # noqa: SIM115 - lives as long as the hub
    for command in (
        ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "orchestrator_site.asgi:application"],
        ["manage.py", "qcluster"],
    ):
        hub.processes.append(
            subprocess.Popen(
                [sys.executable, *command],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return hub
        except requests.RequestException:
            pass
        if any(process.poll() is not None for process in hub.processes):
            break
        time.sleep(0.1)
    hub_stop(hub)
    raise RuntimeError(f"hub {name} did not start: {(data_dir / 'hub.log').read_text()[-3000:]}")


def hub_stop(hub: Hub, *, keep: bool = False) -> None:
    for process in hub.processes:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for process in hub.processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if not keep:
        shutil.rmtree(hub.data_dir, ignore_errors=True)


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


def hubs_start(*names: str, workers: int = 4) -> list[Hub]:
    """Start several hubs at once (their migrations run in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = [pool.submit(hub_start, name, workers=workers) for name in names]
    hubs, errors = [], []
    for future in futures:
        try:
            hubs.append(future.result())
        except Exception as error:  # noqa: BLE001 - stop the others, then report
            errors.append(error)
    if errors:
        for hub in hubs:
            hub_stop(hub)
        raise errors[0]
    return hubs
