"""Kill-all of 20 running script agents (bwrap), until every one of their processes is gone.

Run: .venv/bin/python bench/killall.py [--agents 20] [--rounds 3]
"""

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throwaway_hub import throwaway_hub
from tests.launcher import Hub, make_remote

# Each hub has its own branch below this one (flotilla/hub-<id>/agent-<id>).
CGROUPS = Path("/sys/fs/cgroup/freezer/flotilla")


def sandbox_pids(agent_ids: list[str]) -> set[int]:
    pids: set[int] = set()
    for agent_id in agent_ids:
        for procs in CGROUPS.glob(f"*/agent-{agent_id}/cgroup.procs"):
            pids |= {int(pid) for pid in procs.read_text().split()}
    return pids


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def one_round(hub: Hub, repository: Path, count: int) -> dict:
    ids = [hub.spawn(repository, "sleep 600 & sleep 600 & wait") for _ in range(count)]
    deadline = time.monotonic() + 120
    while len(pids := sandbox_pids(ids)) < 3 * count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(pids)} sandbox processes started")
        time.sleep(0.05)
    result = kill_all_until_gone(hub, pids)
    assert result.pop("killed") == count, result
    return result


def kill_all_until_gone(hub: Hub, pids: set[int]) -> dict:
    """Kill-all through the API: how many it killed, its time, and the time until ``pids`` end."""
    gone_at: list[float] = []

    def watch() -> None:
        while any(running(pid) for pid in pids):
            time.sleep(0.001)
        gone_at.append(time.monotonic())

    watcher = threading.Thread(target=watch)
    started = time.monotonic()
    watcher.start()
    summary = hub.request("POST", "/api/v1/agents/kill-all", {"reason": "benchmark"})
    api_ms = (time.monotonic() - started) * 1000
    watcher.join()
    return {
        "killed": summary["killed"],
        "api_ms": round(api_ms, 1),
        "all_processes_gone_ms": round((gone_at[0] - started) * 1000, 1),
        "processes": len(pids),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with throwaway_hub(workers=options.agents) as hub:
        repository = make_remote(hub.data_dir)
        rounds = [one_round(hub, repository, options.agents) for _ in range(options.rounds)]
    gone = sorted(item["all_processes_gone_ms"] for item in rounds)
    print(
        json.dumps(
            {
                "benchmark": f"kill-all of {options.agents} running bwrap agents",
                "rounds": rounds,
                "median_all_processes_gone_ms": gone[len(gone) // 2],
                "target": "under 500 ms",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
