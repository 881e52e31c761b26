"""Cross-node kill latency: a kill sent to one web process, executed by the agent's worker node.

Starts a multi-node hub on PostgreSQL (two daphne web processes, two worker
nodes each running qcluster and the kill listener; tests/reliability/cluster.py),
runs N sleeping bwrap agents spread over both nodes, then kills them one at a
time through alternating web processes. Each sample is the time from sending
``POST /api/v1/agents/{id}/kill`` until no process of the agent is left on
the machine (cgroup empty, no labelled process), polled every 2 ms.

Prints JSON: p50/p99/max in milliseconds, and the API answer time.
Usage: .venv/bin/python bench/cross_node_kill.py [--agents N]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="flotilla-bench-"))

import django  # noqa: E402

django.setup()

from tests.launcher import make_remote, wait_until  # noqa: E402
from tests.reliability.cluster import Cluster, sandbox_processes, template_drop  # noqa: E402


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=40)
    args = parser.parse_args()
    repository = make_remote(Path(tempfile.mkdtemp(prefix="flotilla-bench-repo-")))
    cluster = Cluster(workers=2, webs=2, capacity=args.agents // 2 + 2)
    try:
        cluster.start()
        webs = cluster.webs
        ids = [
            cluster.spawn(webs[index % 2], repository, "sleep 600", task_id=f"b{index}")
            for index in range(args.agents)
        ]
        wait_until(lambda: len(sandbox_processes(ids)) == len(ids), 180, "every agent running")
        nodes = cluster.agents()
        gone_ms, answer_ms = [], []
        for index, agent_id in enumerate(ids):
            started = time.monotonic()
            response = cluster.api(
                webs[index % 2], "POST", f"agents/{agent_id}/kill", json={"reason": "bench"}
            )
            answer_ms.append((time.monotonic() - started) * 1000)
            assert response.status_code == 200, response.text
            wait_until(
                lambda agent_id=agent_id: not sandbox_processes([agent_id]),
                10,
                "the agent's processes gone",
                every=0.002,
            )
            gone_ms.append((time.monotonic() - started) * 1000)
        print(
            json.dumps(
                {
                    "benchmark": "cross_node_kill",
                    "agents": len(ids),
                    "per_node": {
                        node: sum(1 for a in nodes.values() if a["node"] == node)
                        for node in ("node-a", "node-b")
                    },
                    "processes_gone_ms": {
                        "p50": percentile(gone_ms, 0.5),
                        "p99": percentile(gone_ms, 0.99),
                        "max": round(max(gone_ms), 1),
                        "mean": round(statistics.mean(gone_ms), 1),
                    },
                    "api_answer_ms": {
                        "p50": percentile(answer_ms, 0.5),
                        "p99": percentile(answer_ms, 0.99),
                    },
                    "target": "p99 < 1000 ms",
                    "load_average": os.getloadavg(),
                },
                indent=2,
            )
        )
    finally:
        cluster.stop()
        template_drop()


if __name__ == "__main__":
    main()
