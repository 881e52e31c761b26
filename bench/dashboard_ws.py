"""Event → browser latency and fan-out throughput of the dashboard's WebSocket relay.

Starts one daphne web process on a fresh database, connects N WebSocket
clients (default 200) to one agent's event stream, writes events from this
process (as a worker would) and measures, per delivered event, the time from
just before the INSERT to its arrival at the client. Prints JSON.

    .venv/bin/python bench/dashboard_ws.py [--clients 200] [--rate 100] [--seconds 10]

Set DATABASE_URL to bench on PostgreSQL; the default is SQLite in a temporary
DATA_DIR. Not a test: nothing here asserts a time.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.launcher import Processes, free_port  # noqa: E402


def _prepare_database() -> tuple[str, str]:
    """Migrate, and create a user session and an agent; returns (session key, agent id)."""
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
        requested_by="bench",
    )
    return session.session_key, str(agent.id)


def web_start(port: int) -> tuple[Processes, subprocess.Popen]:
    """daphne on ``port`` in this process's environment, once its health endpoint answers."""
    web = Processes(env=dict(os.environ), log_dir=Path(os.environ["DATA_DIR"]))
    return web, web.start_web(port)


class Client:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.received = 0
        self.last_seq = -1


async def _client(
    url: str,
    origin: str,
    cookie: str,
    client: Client,
    ready: asyncio.Event,
    connected: list[int],
    total: int,
    stop: asyncio.Event,
) -> None:
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


def _write_events(agent_id: str, count: int, rate: float, first_seq: int) -> None:
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


async def _run(args: argparse.Namespace, port: int, session_key: str, agent_id: str) -> dict:
    origin = f"http://127.0.0.1:{port}"
    url = f"ws://127.0.0.1:{port}/ws/dashboard/agents/{agent_id}/?after=0"
    clients = [Client() for _ in range(args.clients)]
    ready, stop, connected = asyncio.Event(), asyncio.Event(), []
    connect_started = time.monotonic()
    tasks = [
        asyncio.create_task(
            _client(
                url,
                origin,
                f"sessionid={session_key}",
                client,
                ready,
                connected,
                args.clients,
                stop,
            )
        )
        for client in clients
    ]
    await asyncio.wait_for(ready.wait(), timeout=60)
    connect_s = time.monotonic() - connect_started

    async def phase(count: int, rate: float, first_seq: int) -> float:
        started = time.monotonic()
        writer = threading.Thread(target=_write_events, args=(agent_id, count, rate, first_seq))
        writer.start()
        last = first_seq + count - 1
        while any(client.last_seq < last for client in clients):
            await asyncio.sleep(0.01)
            if time.monotonic() - started > 120:
                raise RuntimeError("clients did not receive every event within 120 s")
        writer.join()
        return time.monotonic() - started

    steady_count = int(args.rate * args.seconds)
    steady_s = await phase(steady_count, args.rate, 0)
    steady = [latency for client in clients for latency in client.latencies]
    for client in clients:
        client.latencies = []
    burst_s = await phase(args.burst, 0, steady_count)
    burst = [latency for client in clients for latency in client.latencies]
    stop.set()
    await asyncio.gather(*tasks)

    def quantiles(values: list[float]) -> dict:
        cuts = statistics.quantiles(values, n=100)
        return {
            "p50_ms": round(cuts[49] * 1000, 1),
            "p95_ms": round(cuts[94] * 1000, 1),
            "p99_ms": round(cuts[98] * 1000, 1),
            "max_ms": round(max(values) * 1000, 1),
        }

    return {
        "benchmark": "dashboard_ws",
        "database": os.environ.get("DATABASE_URL", "sqlite").split(":")[0],
        "clients": args.clients,
        "connect_all_s": round(connect_s, 2),
        "steady": {
            "events": steady_count,
            "events_per_s": args.rate,
            "deliveries": len(steady),
            "deliveries_per_s": round(len(steady) / steady_s, 1),
            **quantiles(steady),
        },
        "burst": {
            "events": args.burst,
            "deliveries": len(burst),
            "seconds": round(burst_s, 2),
            "deliveries_per_s": round(len(burst) / burst_s, 1),
            **quantiles(burst),
        },
        "lost": sum(steady_count + args.burst - client.received for client in clients),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second, steady")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=2000, help="events written back to back")
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="flotilla-bench-ws-")
    os.environ.update(
        {
            "DATA_DIR": data_dir,
            "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
            "LOG_LEVEL": "WARNING",
        }
    )
    session_key, agent_id = _prepare_database()
    port = free_port()
    web, _ = web_start(port)
    try:
        result = asyncio.run(_run(args, port, session_key, agent_id))
    finally:
        web.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
