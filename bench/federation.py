"""Signed ``agent.status`` round trip between two hubs on loopback, beside an unsigned request.

Starts two real hubs (daphne + qcluster, own SQLite each), connects them,
runs one agent on hub B for hub A, then times from this process (acting as
hub A, with A's database and keys):

- signed: ``agent.status`` through ``federation.client.command_send`` —
  sign, POST /federation/v1/commands, B verifies (signature, digest, nonce,
  peer, quota, idempotency record), answers signed, A verifies the answer;
- unsigned: ``GET /api/v1/agents/{id}`` on B with a DRF token, the same
  agent's status without any signature.

Prints JSON: p50/p99 in milliseconds for each and the signed/unsigned ratio.
Usage: .venv/bin/python bench/federation.py [--requests N]
"""

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.launcher import hubs_connect, hubs_start, make_remote  # noqa: E402


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 3)


def _repository() -> Path:
    return make_remote(Path(tempfile.mkdtemp(prefix="flotilla-bench-")))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    hub_a, hub_b = hubs_start("bench-a", "bench-b", env={"FLOTILLA_WORKERS": "2"})
    try:
        on_a, _ = hubs_connect(hub_a, hub_b)
        body = {
            "task_id": "bench",
            "runtime": "script",
            "script": "true",
            "context": {"repository": str(_repository()), "branch": "main"},
        }
        spawned = hub_a.api("POST", f"peers/{on_a['id']}/agents", json=body).json()
        remote_id = spawned["remote_agent_id"]
        hub_a.wait_state(spawned["agent_id"], {"completed"})
        # Only the web processes are measured: the idle workers' queue polling
        # would add noise to both columns.
        for hub in (hub_a, hub_b):
            os.killpg(hub.worker.pid, signal.SIGKILL)
            hub.worker.wait(timeout=10)

        os.environ.update(hub_a.env)
        import django

        django.setup()
        from federation.client import command_send
        from federation.models import Peer

        peer = Peer.objects.get(instance_id="bench-b")
        # The rate quota would (rightly) refuse this many requests a minute.
        Peer.objects.filter(id=peer.id).update(requests_per_minute=1_000_000)
        hub_b.query("UPDATE federation_peer SET requests_per_minute = 1000000")

        def signed() -> None:
            command_send(peer=peer, command="agent.status", payload={"agent_id": remote_id})

        def unsigned() -> None:
            response = hub_b.api("GET", f"agents/{remote_id}")
            assert response.status_code == 200

        timings: dict[str, list[float]] = {"signed": [], "unsigned": []}
        for _ in range(args.warmup):
            signed()
            unsigned()
        for _ in range(args.requests):  # interleaved, so both see the same machine
            for name, call in (("signed", signed), ("unsigned", unsigned)):
                started = time.perf_counter()
                call()
                timings[name].append((time.perf_counter() - started) * 1000)
        result = {
            "benchmark": "federation agent.status round trip (loopback, SQLite, daphne)",
            "requests": args.requests,
            **{f"{name}_p50_ms": _percentile(samples, 0.5) for name, samples in timings.items()},
            **{f"{name}_p99_ms": _percentile(samples, 0.99) for name, samples in timings.items()},
            "signed_mean_ms": round(statistics.fmean(timings["signed"]), 3),
            "unsigned_mean_ms": round(statistics.fmean(timings["unsigned"]), 3),
        }
        result["ratio_p50"] = round(result["signed_p50_ms"] / result["unsigned_p50_ms"], 3)
        result["targets"] = {
            "signed_p50_under_5_ms": result["signed_p50_ms"] < 5,
            "ratio_under_1_3": result["ratio_p50"] < 1.3,
        }
        print(json.dumps(result, indent=2))
    finally:
        hub_a.stop()
        hub_b.stop()


if __name__ == "__main__":
    main()
