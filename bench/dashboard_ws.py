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
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.streams import (
    Client,
    bench_environment,
    events_write,
    user_agent_create,
    web_start,
    ws_client,
)
from tests.launcher import free_port


async def _run(args: argparse.Namespace, port: int, session_key: str, agent_id: str) -> dict:
    origin = f"http://127.0.0.1:{port}"
    url = f"ws://127.0.0.1:{port}/ws/dashboard/agents/{agent_id}/?after=0"
    clients = [Client() for _ in range(args.clients)]
    ready, stop, connected = asyncio.Event(), asyncio.Event(), []
    connect_started = time.monotonic()
    tasks = [
        asyncio.create_task(
            ws_client(
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
        writer = threading.Thread(target=events_write, args=(agent_id, count, rate, first_seq))
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

    bench_environment("flotilla-bench-ws-")
    _user, session_key, agent_id = user_agent_create()
    port = free_port()
    web, _ = web_start(port)
    try:
        result = asyncio.run(_run(args, port, session_key, agent_id))
    finally:
        web.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
