"""Event → API client latency of the Server-Sent Events stream, beside the dashboard's WebSocket.

Starts one daphne web process on a fresh database, opens N SSE streams
(default 100, token-authenticated as a coordinator would) on one agent's
``/api/v1/agents/{id}/events/stream``, writes events from this process (as a
worker would) and measures, per delivered event, the time from just before the
INSERT to its arrival at the client. Then the same with N dashboard
WebSocket clients on the same web process, for comparison. Also reports how
many threads the web process runs with every stream open. Prints JSON.

    .venv/bin/python bench/event_stream.py [--clients 100] [--rate 50] [--seconds 10]

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

from bench import streams
from tests.launcher import free_port


def _prepare_database() -> dict[str, str]:
    """Migrate; create a user with a token and a session, and an agent of theirs."""
    user, session_key, agent_id = streams.user_agent_create()
    from rest_framework.authtoken.models import Token

    # The first event written imports what its signal receivers need (seconds
    # on a busy machine): done here, so the measured writer keeps its pace.
    from agents.services import agent_event_append

    agent_event_append(agent_id=agent_id, kind="log", data={"message": "warm-up"})
    return {
        "token": Token.objects.create(user=user).key,
        "session": session_key,
        "agent": agent_id,
    }


async def _sse_client(
    port: int,
    path: str,
    token: str,
    client: streams.Client,
    ready: asyncio.Event,
    connected: list[int],
    total: int,
) -> None:
    """A minimal HTTP/1.1 SSE reader: chunked transfer decoding, then SSE messages."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Token {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"stream refused: {status!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    buffer, announced = b"", False
    try:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                return
            buffer += (await reader.readexactly(size + 2))[:-2]
            now = time.time()
            if not announced:
                announced = True
                connected.append(1)
                if len(connected) == total:
                    ready.set()
            *messages, buffer = buffer.split(b"\n\n")
            for message in messages:
                _record(message, now, client)
    except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


def _record(message: bytes, now: float, client: streams.Client) -> None:
    for line in message.split(b"\n"):
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            client.received += 1
            client.latencies.append(now - event["data"]["t"])
            client.last_seq = event["data"]["seq"]


async def _deliver(
    clients: list[streams.Client], agent_id: str, count: int, rate: float, first: int
):
    writer = threading.Thread(target=streams.events_write, args=(agent_id, count, rate, first))
    writer.start()
    started, last = time.monotonic(), first + count - 1
    while any(client.last_seq < last for client in clients):
        await asyncio.sleep(0.01)
        if time.monotonic() - started > 120:
            break
    writer.join()


def _quantiles(values: list[float]) -> dict:
    if len(values) < 2:
        return {"deliveries": len(values)}
    cuts = statistics.quantiles(values, n=100)
    return {
        "deliveries": len(values),
        "p50_ms": round(cuts[49] * 1000, 1),
        "p95_ms": round(cuts[94] * 1000, 1),
        "p99_ms": round(cuts[98] * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


async def _measure(args, port: int, web_pid: int, ids: dict, sse: bool, first: int) -> dict:
    clients = [streams.Client() for _ in range(args.clients)]
    ready, connected = asyncio.Event(), []
    threads_before = _threads(web_pid)
    started = time.monotonic()
    if sse:
        path = f"/api/v1/agents/{ids['agent']}/events/stream?after={args.after}"
        tasks = [
            asyncio.create_task(
                _sse_client(port, path, ids["token"], c, ready, connected, args.clients)
            )
            for c in clients
        ]
    else:
        stop = asyncio.Event()
        url = f"ws://127.0.0.1:{port}/ws/dashboard/agents/{ids['agent']}/?after={args.after}"
        tasks = [
            asyncio.create_task(
                streams.ws_client(
                    url,
                    f"http://127.0.0.1:{port}",
                    f"sessionid={ids['session']}",
                    c,
                    ready,
                    connected,
                    args.clients,
                    stop,
                )
            )
            for c in clients
        ]
    await asyncio.wait_for(ready.wait(), timeout=60)
    connect_s = time.monotonic() - started
    threads_open = _threads(web_pid)
    count = int(args.rate * args.seconds)
    await _deliver(clients, ids["agent"], count, args.rate, first)
    if not sse:
        stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [latency for client in clients for latency in client.latencies]
    return {
        "clients": args.clients,
        "connect_all_s": round(connect_s, 2),
        "web_threads_before": threads_before,
        "web_threads_with_all_open": threads_open,
        "events": count,
        **_quantiles(latencies),
        "lost": sum(count - client.received for client in clients),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-websocket", action="store_true", help="skip the WebSocket run")
    args = parser.parse_args()

    streams.bench_environment("flotilla-bench-sse-")
    ids = _prepare_database()
    from agents.selectors import agent_event_last_id

    port = free_port()
    web, process = streams.web_start(port)
    result: dict = {
        "benchmark": "event_stream",
        "database": os.environ.get("DATABASE_URL", "sqlite").split(":")[0],
        "events_per_s": args.rate,
    }
    try:
        args.after = agent_event_last_id()
        result["sse"] = asyncio.run(_measure(args, port, process.pid, ids, sse=True, first=0))
        if not args.no_websocket:
            args.after = agent_event_last_id()
            first = int(args.rate * args.seconds)
            result["websocket"] = asyncio.run(
                _measure(args, port, process.pid, ids, sse=False, first=first)
            )
    finally:
        web.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
