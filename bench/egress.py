"""Egress proxy throughput: a 100 MB download through the proxy versus straight from the server.

Usage: ``.venv/bin/python bench/egress.py [--mb 100] [--rounds 3]``; prints one JSON object.

A local HTTP server (its own process) sends the body; a client (its own
process, as a sandbox is) downloads it (a) directly over TCP, (b) through an
agent's egress proxy over its Unix socket with a plain absolute-form GET, and
(c) through a CONNECT tunnel, the way HTTPS traffic goes. The proxy runs in
this process on its egress thread, as it does in a worker. Rounds alternate
the three; the figures are medians. The target is at least 0.8 of direct.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVER = r"""
import socket, sys
size = int(sys.argv[1])
block = memoryview(bytes(1 << 20))
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(16)
print(listener.getsockname()[1], flush=True)
while True:
    connection, _ = listener.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        head += connection.recv(65536)
    connection.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size
    )
    left = size
    while left:
        left -= connection.send(block[: min(left, len(block))])
    connection.close()
"""

CLIENT = r"""
import socket, sys, time
mode, where, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
buffer = bytearray(1 << 20)
started = time.perf_counter()
if mode == "direct":
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /blob HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
else:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(where)
    target = f"127.0.0.1:{port}"
    if mode == "connect":
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(1)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        sock.sendall(f"GET /blob HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    else:
        sock.sendall(f"GET http://{target}/blob HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
received = 0
while count := sock.recv_into(buffer):
    received += count
print(received, time.perf_counter() - started)
"""


def setup_django(port: int, data: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
    os.environ["DATA_DIR"] = str(data)
    os.environ["DATABASE_URL"] = f"sqlite:///{data / 'bench.sqlite3'}"
    # Loopback is reachable through the proxy only when named as host:port.
    os.environ["FLOTILLA_EGRESS_ALLOWLIST"] = f"127.0.0.1:{port}"
    import django

    django.setup()


def download(mode: str, socket_path: Path, port: int, size: int) -> float:
    """One download by a client process; its throughput in MB/s."""
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, mode, str(socket_path), str(port)],
        capture_output=True,
        text=True,
        check=True,
    )
    received, seconds = result.stdout.split()
    if int(received) < size:
        raise RuntimeError(f"{mode}: received {received} of {size} bytes")
    return size / 1e6 / float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.mb * 1_000_000
    data = Path(tempfile.mkdtemp(prefix="flotilla-bench-egress-"))
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(size)], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(server.stdout.readline())
        setup_django(port, data)
        from agents.egress.service import egress_close, egress_open

        socket_path = data / "egress.sock"
        agent_id = str(uuid.uuid4())
        events: list[dict] = []
        egress_open(
            agent_id=agent_id,
            mode="allowlist",
            allow_hosts=(),
            socket_path=socket_path,
            on_connection=events.append,
        )
        modes = ("direct", "proxy_get", "proxy_connect")
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        started = time.monotonic()
        for _ in range(args.rounds):
            for mode in modes:
                rates[mode].append(download(mode.removeprefix("proxy_"), socket_path, port, size))
        egress_close(agent_id=agent_id)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    print(
        json.dumps(
            {
                "benchmark": "egress_proxy_throughput",
                "download_mb": args.mb,
                "rounds": args.rounds,
                "mb_per_s_median": {mode: round(rate, 1) for mode, rate in medians.items()},
                "mb_per_s_runs": {mode: [round(r, 1) for r in v] for mode, v in rates.items()},
                "ratio_get_vs_direct": round(medians["proxy_get"] / medians["direct"], 3),
                "ratio_connect_vs_direct": round(medians["proxy_connect"] / medians["direct"], 3),
                "target_ratio": 0.8,
                "connections_reported": len(events),
                "wall_s": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
