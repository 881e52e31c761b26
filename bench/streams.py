"""What the event-stream benches share: a web process on a fresh database, a user
and an agent of theirs, a dashboard WebSocket reader, and a paced event writer.

Not a test helper: benches only. The caller has put the project root on sys.path.
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.launcher import Processes

ROOT = Path(__file__).resolve().parent.parent


def bench_environment(prefix: str) -> None:
    """A temporary DATA_DIR and the production settings for this process and its children.

    Set DATABASE_URL to bench on PostgreSQL; the default is SQLite in DATA_DIR.
    """
    os.environ.update(
        {
            "DATA_DIR": tempfile.mkdtemp(prefix=prefix),
            "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
            "LOG_LEVEL": "WARNING",
        }
    )


def user_agent_create() -> tuple[Any, str, str]:
    """Migrate; a user, the key of a session of theirs, and the id of an agent of theirs."""
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    from agents.models import Agent

    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    session = SessionStore()
    session["_auth_user_id"] = str(user.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = user.get_session_auth_hash()
    session.create()
    agent = Agent.objects.create(
        task_id="bench",
        agent_type="worker",
        runtime="script",
        repository="/bench",
        base_branch="main",
        work_branch="bench",
        sandbox_backend="process",
        timeout_s=60,
        requested_by="user:bench",
    )
    return user, session.session_key, str(agent.id)


def web_start(port: int) -> tuple[Processes, subprocess.Popen]:
    """daphne on ``port`` in this process's environment, once its health endpoint answers."""
    web = Processes(env=dict(os.environ), log_dir=Path(os.environ["DATA_DIR"]))
    return web, web.start_web(port)


class Client:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.received = 0
        self.last_seq = -1


async def ws_client(
    url: str,
    origin: str,
    cookie: str,
    client: Client,
    ready: asyncio.Event,
    connected: list[int],
    total: int,
    stop: asyncio.Event,
) -> None:
    """One dashboard WebSocket: records each event's latency in ``client`` until ``stop``."""
    from websockets.asyncio.client import connect

    async with connect(
        url,
        origin=origin,
        additional_headers={"Cookie": cookie},
        compression=None,
        max_size=None,
        ping_interval=None,
    ) as socket_:
        await socket_.recv()  # the first frame: the stream is current
        connected.append(1)
        if len(connected) == total:
            ready.set()
        while not stop.is_set():
            try:
                text = await asyncio.wait_for(socket_.recv(), timeout=0.5)
            except TimeoutError:
                continue
            now = time.time()
            for event in json.loads(text)["events"]:
                client.received += 1
                client.latencies.append(now - event["data"]["t"])
                client.last_seq = event["data"]["seq"]


def events_write(agent_id: str, count: int, rate: float, first_seq: int) -> None:
    """``count`` output events at ``rate`` a second (0: back to back), each stamped with a time."""
    from django.db import connection

    from agents.services import agent_event_append

    interval = 1.0 / rate if rate else 0.0
    started = time.monotonic()
    for index in range(count):
        if interval:
            delay = started + index * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        agent_event_append(
            agent_id=agent_id,
            kind="output",
            data={"t": time.time(), "seq": first_seq + index, "lines": ["x" * 80]},
        )
    connection.close()
