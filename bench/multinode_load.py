"""100 concurrent script agents on a two-worker hub, and the peak memory of every hub process.

Starts a multi-node hub on PostgreSQL (two daphne web processes, two worker
nodes each running qcluster with enough worker processes for half the agents,
and the kill listener; tests/reliability/cluster.py), spawns N agents at once
through both web processes (each sleeps, then writes a file that the hub
commits and pushes), and waits until every one has completed. Meanwhile it
samples the resident memory (VmRSS) of every process of the hub every 0.5 s.

Prints JSON: how many completed, on which node, wall time, spawn-to-running
p50/p99, and peak RSS in MiB per hub process (a qcluster's figure is its
whole process tree: the sentinel and every worker it forked).
Usage: .venv/bin/python bench/multinode_load.py [--agents N] [--sleep S]
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="flotilla-bench-"))

import django  # noqa: E402

django.setup()

from tests.launcher import make_remote, wait_until  # noqa: E402
from tests.reliability.cluster import Cluster, template_drop  # noqa: E402


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[int]:
    """``pid`` and its Python descendants: sandboxes are the agents' memory, not the hub's."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"python" in command.split(b"\0")[0]:
                stack.append(child)
    return found


class MemorySampler(threading.Thread):
    def __init__(self, processes: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.processes = processes
        self.peak_tree: dict[str, int] = dict.fromkeys(processes, 0)
        self.peak_single: dict[str, int] = dict.fromkeys(processes, 0)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for name, pid in self.processes.items():
                sizes = [rss_kib(member) for member in tree(pid)]
                self.peak_tree[name] = max(self.peak_tree[name], sum(sizes))
                self.peak_single[name] = max(self.peak_single[name], max(sizes, default=0))
            self.stop.wait(0.5)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--sleep", type=float, default=10)
    # Each django-q2 worker process holds a PostgreSQL connection: the server's
    # max_connections (100 by default) bounds how many run at once.
    parser.add_argument("--workers-per-node", type=int, default=30)
    args = parser.parse_args()
    repository = make_remote(Path(tempfile.mkdtemp(prefix="flotilla-bench-repo-")))
    cluster = Cluster(workers=2, webs=2, capacity=args.workers_per_node)
    try:
        cluster.start()
        processes = {}
        for node in [*cluster.webs, *cluster.workers]:
            for process in node.processes:
                processes[f"{node.name} {node.role}"] = process.pid
        sampler = MemorySampler(processes)
        sampler.start()
        script = f"sleep {args.sleep}; echo done > done.txt"
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(
                pool.map(
                    lambda index: cluster.spawn(
                        cluster.webs[index % 2], repository, script, task_id=f"load{index}"
                    ),
                    range(args.agents),
                )
            )
        spawned = time.monotonic() - started
        wait_until(
            lambda: set(cluster.states(ids).values()) <= {"completed", "failed", "killed"},
            600,
            "every agent final",
            every=0.5,
        )
        wall = time.monotonic() - started
        sampler.stop.set()
        sampler.join()
        agents = cluster.agents()
        rows = cluster.query(
            "SELECT EXTRACT(EPOCH FROM started_at - created_at) FROM agents_agent "
            "WHERE started_at IS NOT NULL"
        )
        to_running = [float(row[0]) for row in rows]
        print(
            json.dumps(
                {
                    "benchmark": "multinode_load",
                    "agents": len(ids),
                    "states": {
                        state: sum(1 for a in agents.values() if a["state"] == state)
                        for state in {a["state"] for a in agents.values()}
                    },
                    "per_node": {
                        node: sum(1 for a in agents.values() if a["node"] == node)
                        for node in ("node-a", "node-b")
                    },
                    "agent_sleep_s": args.sleep,
                    "worker_processes_per_node": args.workers_per_node,
                    "all_spawned_after_s": round(spawned, 2),
                    "all_final_after_s": round(wall, 2),
                    "spawn_to_running_s": {
                        "p50": percentile(to_running, 0.5),
                        "p99": percentile(to_running, 0.99),
                    },
                    "peak_rss_mib": {
                        name: {
                            "process": round(sampler.peak_single[name] / 1024, 1),
                            "with_children": round(sampler.peak_tree[name] / 1024, 1),
                        }
                        for name in processes
                    },
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
