"""Kill-all of 20 running docker agents through the API. Prints JSON.

    .venv/bin/python bench/docker_killall.py [--agents 20]

Measures the POST /api/v1/agents/kill-all round trip and the slowest single
kill latency the hub recorded, and checks that no container is left.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.throwaway_hub import throwaway_hub
from tests.launcher import make_remote


def containers_left(node_filter: str) -> int:
    listing = subprocess.run(
        ["docker", "ps", "-aq", "--filter", node_filter], capture_output=True, text=True, check=True
    )
    return len(listing.stdout.split())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=20)
    args = parser.parse_args()
    node = f"bench-killall-{int(time.time())}"
    label = f"label=flotilla.hub={node}"
    extra = {"FLOTILLA_NODE_NAME": node}
    with (
        tempfile.TemporaryDirectory() as scratch,
        throwaway_hub(workers=args.agents + 2, extra_env=extra) as hub,
    ):
        repository = make_remote(Path(scratch))
        ids = [hub.spawn(repository, "sleep 300", sandbox="docker") for _ in range(args.agents)]
        for agent_id in ids:
            hub.wait_state(agent_id, {"running"}, timeout=120)
        running = containers_left(label)
        started = time.monotonic()
        outcome = hub.request("POST", "/api/v1/agents/kill-all", {"reason": "bench"})
        elapsed = time.monotonic() - started
        left = containers_left(label)
        states = {hub.state(agent_id) for agent_id in ids}
        query = (
            "import json; from audit.models import AuditEvent; "
            "e = AuditEvent.objects.filter(action='agent.kill_all').first(); "
            "print(json.dumps([k['latency_ms'] for k in e.data['kills']]))"
        )
        latencies = json.loads(hub.manage("shell", "-c", query).splitlines()[-1])
    print(
        json.dumps(
            {
                "bench": "docker_killall",
                "agents": args.agents,
                "containers_running_before": running,
                "kill_all_ms": round(elapsed * 1000, 1),
                "slowest_single_kill_ms": max(latencies) if latencies else None,
                "note": "kill_all_ms includes each agent's cleanup "
                "(container and worktree removal)",
                "killed": outcome.get("killed"),
                "failed": outcome.get("failed"),
                "containers_left": left,
                "states_after": sorted(states),
                "target": "under 1500 ms",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
