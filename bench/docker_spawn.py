"""Docker spawn latency: API → running, beside a bare `docker run` in the same run. Prints JSON.

    .venv/bin/python bench/docker_spawn.py [--samples 10] [--pool 2]

"API → running" is the time from sending POST /api/v1/agents to the moment
the agent's `running` event was recorded (the container is started and the
command is being exec'd); "bare docker run" is `docker run -d` of the same
image with the same hardening, until the CLI returns. "Warm" runs a second
hub with FLOTILLA_DOCKER_WARM_POOL=--pool and waits, before each spawn, until
the pool holds a ready container again (so every sample is a claim, not a
cold start; the bench checks that from the agents' sandbox handles).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.throwaway_hub import throwaway_hub
from tests.launcher import Hub, make_remote

IMAGE = "flotilla-sandbox:latest"


def bare_docker_run() -> float:
    name = f"flotilla-bench-{uuid.uuid4().hex[:8]}"
    argv = [
        "docker",
        "run",
        "-d",
        "--name",
        name,
        "--read-only",
        "--user",
        "65534:65534",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--network",
        "none",
        "--init",
        "--pids-limit",
        "256",
        "--memory",
        "1g",
        "--tmpfs",
        "/tmp",
        "-v",
        "/usr:/usr:ro",
        IMAGE,
        "/bin/sleep",
        "infinity",
    ]
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    elapsed = time.monotonic() - started
    subprocess.run(["docker", "rm", "-f", name], check=True, capture_output=True)
    return elapsed


def api_to_running(hub: Hub, repository: Path) -> tuple[float, str]:
    sent = time.time()
    agent_id = hub.spawn(repository, "sleep 60", sandbox="docker")
    hub.wait_state(agent_id, {"running"})
    events = hub.get(f"/api/v1/agents/{agent_id}/events")["events"]
    running = next(e for e in events if e["kind"] == "state" and e["data"]["to"] == "running")
    at = datetime.fromisoformat(running["created_at"].replace("Z", "+00:00")).timestamp()
    hub.request("POST", f"/api/v1/agents/{agent_id}/kill", {"reason": "bench"})
    # Let the killed run's worker finish its own teardown (as `docker rm` ends
    # before the next bare run), so no sample pays for the previous one.
    time.sleep(0.5)
    return at - sent, agent_id


def ready_slots(data_dir: Path, node: str) -> int:
    root = data_dir / "warm-pool" / node
    slots = [slot for slot in root.iterdir() if slot.is_dir()] if root.is_dir() else []
    return sum(
        (slot / "container.json").exists() and not (slot / "claim").exists() for slot in slots
    )


def warm_samples(samples: int, pool: int) -> tuple[list[float], int]:
    """API → running on a hub with a warm pool; (samples, how many were served by the pool)."""
    node = f"bench-warm-{int(time.time())}"
    extra = {"FLOTILLA_DOCKER_WARM_POOL": str(pool), "FLOTILLA_NODE_NAME": node}
    with tempfile.TemporaryDirectory() as scratch, throwaway_hub(workers=4, extra_env=extra) as hub:
        repository = make_remote(Path(scratch))
        hub.manage("reconcile", "--no-schedule")  # as a hub start does: it fills the pool
        api_to_running(hub, repository)  # the first spawn also creates the mirror
        timings, ids = [], []
        for _ in range(samples):
            deadline = time.monotonic() + 30
            while ready_slots(hub.data_dir, node) < pool and time.monotonic() < deadline:
                time.sleep(0.05)
            elapsed, agent_id = api_to_running(hub, repository)
            timings.append(elapsed)
            ids.append(agent_id)
        query = (
            f"from agents.models import Agent; print(sum(bool(a.sandbox_handle.get("
            f"'warm_slot')) for a in Agent.objects.filter(id__in={ids!r})))"
        )
        served = int(hub.manage("shell", "-c", query).split()[-1])
        hub.manage(
            "shell",
            "-c",
            "from agents.sandboxes.docker import docker_pool_drain; "
            f"docker_pool_drain(node={node!r})",
        )
    return timings, served


def summary(samples: list[float]) -> dict:
    ms = sorted(round(s * 1000, 1) for s in samples)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "samples_ms": ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--pool", type=int, default=2)
    args = parser.parse_args()
    subprocess.run(
        [sys.executable, "manage.py", "sandbox_image"],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    bare_docker_run()  # warm the engine's caches, as the first spawn below does too
    bare = [bare_docker_run() for _ in range(args.samples)]
    with tempfile.TemporaryDirectory() as scratch, throwaway_hub(workers=4) as hub:
        repository = make_remote(Path(scratch))
        api_to_running(hub, repository)  # the first spawn also creates the mirror
        cold = [api_to_running(hub, repository)[0] for _ in range(args.samples)]
    warm, served = warm_samples(args.samples, args.pool)
    result = {
        "bench": "docker_spawn",
        "bare_docker_run": summary(bare),
        "cold_api_to_running": summary(cold),
        "cold_p50_over_bare_p50": round(statistics.median(cold) / statistics.median(bare), 2),
        "target": "cold p50 < 1.3x bare docker run; warm p50 < 100 ms",
        "warm_api_to_running": summary(warm),
        "warm_served_by_pool": served,
        "warm_pool_size": args.pool,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
