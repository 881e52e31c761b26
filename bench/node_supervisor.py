"""200 running script agents on one node: hub memory per agent, API p99 meanwhile, kill-all.

A throwaway hub (SQLite, one worker node of capacity --agents) runs
``--agents`` script agents that sleep in bwrap. Measured in one run:

- hub memory: PSS (/proc/<pid>/smaps_rollup) of the hub's own processes
  (runhub, the node supervisor, the django-q2 cluster, daphne), not the
  sandboxes, idle and with every agent running; per agent = the difference
  divided by the agents;
- API latency while they run: GET /api/v1/agents/{id} and /api/v1/health;
- kill-all: from the API call until no process of any sandbox is left.

Issue baseline: about 11 MB per running agent plus an idle worker process per
slot; targets under 3 MB, p99 under 100 ms, kill-all under 1 s.
Run: .venv/bin/python bench/node_supervisor.py [--agents 200]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli_agents import sampled
from bench.killall import kill_all_until_gone, sandbox_pids
from bench.throwaway_hub import throwaway_hub
from tests.launcher import Hub, make_remote


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))], 1)


def api_latencies(hub: Hub, agent_ids: list[str], requests: int) -> list[float]:
    taken = []
    for index in range(requests):
        path = f"/api/v1/agents/{agent_ids[index % len(agent_ids)]}"
        started = time.monotonic()
        hub.get(path if index % 2 else "/api/v1/health")
        taken.append((time.monotonic() - started) * 1000)
    return taken


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--requests", type=int, default=400)
    options = parser.parse_args()
    extra = {"MAX_CONCURRENT_AGENTS": str(options.agents + 10)}
    with throwaway_hub(workers=options.agents, extra_env=extra) as hub:
        repository = make_remote(hub.data_dir)
        roots = [process.pid for process in hub.processes]
        idle = sampled(roots)
        ids = [hub.spawn(repository, "sleep 600", timeout_s=900) for _ in range(options.agents)]
        deadline = time.monotonic() + 600
        while len(sandbox_pids(ids)) < options.agents:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(sandbox_pids(ids))} sandbox processes started")
            time.sleep(0.5)
        time.sleep(2.0)
        busy = sampled(roots)
        latencies = api_latencies(hub, ids, options.requests)
        killed = kill_all_until_gone(hub, sandbox_pids(ids))
    per_agent = (busy["hub_mb"] - idle["hub_mb"]) / options.agents
    print(
        json.dumps(
            {
                "benchmark": f"{options.agents} running script agents (bwrap, sleep) on one node",
                "hub_pss_mb_idle": idle["hub_mb"],
                "hub_pss_mb_running": busy["hub_mb"],
                "hub_processes": busy["hub_processes"],
                "hub_pss_mb_per_running_agent": round(per_agent, 2),
                "hub_pss_mb_total_per_running_agent": round(busy["hub_mb"] / options.agents, 2),
                "api_ms": {
                    "p50": round(statistics.median(latencies), 1),
                    "p99": percentile(latencies, 0.99),
                    "requests": len(latencies),
                },
                "kill_all": killed,
                "baseline": "about 11 MB per running agent plus an idle worker process per slot",
                "targets": {"mb_per_agent": 3, "api_p99_ms": 100, "kill_all_ms": 1000},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
