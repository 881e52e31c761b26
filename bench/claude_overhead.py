"""Claude agents against a Messages API server that answers at once: what the orchestrator costs.

1. Overhead per tool call: one agent runs a long scripted conversation of
   file tools. The server stamps when it finished each reply and when the
   next request arrived; the gap is everything the hub does per turn
   (SDK parsing, accounting, the transcript events, the tool itself, the
   cancel check, the next request), with no model time in it.
2. Concurrency: 50 Claude agents at once (write a file, run a command in
   bwrap, commit through the gates, finish and push); all must complete.
   The worker cluster's memory (RSS of every process in it) is sampled.
3. Kill during a slow reply: from the kill request until the server sees
   the agent's model request dropped (tests/test_claude_agents.py asserts
   that it is dropped; this measures how soon).

A throwaway hub (own data directory, SQLite, daphne + qcluster) runs it.
Run: .venv/bin/python bench/claude_overhead.py [--turns 100] [--agents 50]
"""

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throwaway_hub import throwaway_hub
from tests.launcher import Hub, make_remote, wait_until
from tests.messages_server import (
    MessagesServer,
    conversation,
    text_reply,
    tool_use_reply,
)

KEY = "sk-ant-bench-" + "0" * 32
FILE_TOOLS = [
    ("read_file", {"path": "README.md"}),
    ("list_files", {"path": "."}),
    ("search", {"pattern": "bench", "path": "."}),
    ("write_file", {"path": "notes.md", "content": "notes\n"}),
    ("edit_file", {"path": "notes.md", "old_text": "notes", "new_text": "more notes"}),
]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))], 2)


def process_tree_rss_mb(root_pid: int) -> tuple[float, int]:
    """Total resident memory of ``root_pid`` and its descendants, and how many processes."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(status.parent.name))
    total_kb, count, stack = 0, 0, [root_pid]
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
                    count += 1
        except OSError:
            continue
    return round(total_kb / 1024, 1), count


def spawn_claude(hub: Hub, repository: Path, task_id: str) -> str:
    body = {
        "task_id": task_id,
        "agent_type": "worker",
        "runtime": "claude",
        "context": {"repository": str(repository), "branch": "main"},
        "options": {"max_turns": 1000, "timeout_s": 3600},
    }
    return hub.request("POST", "/api/v1/agents", body)["agent_id"]


def wait_all(hub: Hub, ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {agent_id: hub.state(agent_id) for agent_id in ids}
        if all(state in {"completed", "failed", "killed"} for state in states.values()):
            break
        time.sleep(0.5)
    return states


def overhead(hub: Hub, server: MessagesServer, repository: Path, turns: int) -> dict:
    script = [tool_use_reply([FILE_TOOLS[turn % len(FILE_TOOLS)]]) for turn in range(turns)]
    server.reset()
    server.default = conversation(*script, tool_use_reply([("finish", {"summary": "bench"})]))
    agent_id = spawn_claude(hub, repository, "overhead")
    states = wait_all(hub, [agent_id], timeout=600)
    requests = list(server.requests)
    gaps = [
        (later["received_at"] - earlier["replied_at"]) * 1000
        for earlier, later in zip(requests, requests[1 : turns + 1], strict=False)
    ]
    return {
        "agent_state": states[agent_id],
        "tool_calls": len(gaps),
        "overhead_ms_per_tool_call": {
            "p50": percentile(gaps, 0.5),
            "p95": percentile(gaps, 0.95),
            "max": round(max(gaps), 2),
            "mean": round(statistics.fmean(gaps), 2),
        },
        "target_p50_ms": 20,
    }


def concurrency(hub: Hub, server: MessagesServer, repository: Path, agents: int) -> dict:
    server.reset()
    server.default = conversation(
        tool_use_reply([("write_file", {"path": "result.txt", "content": "done\n"})]),
        tool_use_reply([("run_command", {"command": "cat result.txt", "timeout_s": 60})]),
        tool_use_reply([("commit", {"message": "Add the result"})]),
        tool_use_reply([("finish", {"summary": "wrote result.txt"})]),
    )
    cluster_pid = hub.worker.pid
    baseline_mb, processes = process_tree_rss_mb(cluster_pid)
    peak = {"mb": baseline_mb}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            peak["mb"] = max(peak["mb"], process_tree_rss_mb(cluster_pid)[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    ids = [spawn_claude(hub, repository, f"concurrent-{index}") for index in range(agents)]
    states = wait_all(hub, ids, timeout=900)
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return {
        "agents": agents,
        "states": counts,
        "all_completed": counts.get("completed", 0) == agents,
        "wall_s": round(elapsed, 1),
        "model_requests": len(server.requests),
        "worker_cluster_processes": processes,
        "worker_rss_mb": {
            "idle": baseline_mb,
            "peak": peak["mb"],
            "peak_per_worker": round(peak["mb"] / max(processes, 1), 1),
        },
    }


def kill_cancel(hub: Hub, server: MessagesServer, repository: Path, rounds: int = 5) -> dict:
    samples = []
    for index in range(rounds):
        server.reset()
        server.default = conversation(text_reply("thinking very slowly", delay_s=60))
        agent_id = spawn_claude(hub, repository, f"kill-{index}")
        wait_until(lambda: server.requests, 60, "the agent to ask the model", every=0.01)
        killed_at = time.monotonic()
        hub.request("POST", f"/api/v1/agents/{agent_id}/kill", {"reason": "bench"})
        wait_until(lambda: server.disconnects, 30, "the request dropped", every=0.005)
        samples.append((server.disconnects[0][0] - killed_at) * 1000)
    return {
        "rounds": rounds,
        "kill_to_request_dropped_ms": {"p50": percentile(samples, 0.5), "max": max(samples)},
        "target_ms": 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--agents", type=int, default=50)
    arguments = parser.parse_args()
    with MessagesServer() as server:
        env = {
            "ANTHROPIC_BASE_URL": server.url,
            "ANTHROPIC_API_KEY": KEY,
            "MAX_CONCURRENT_AGENTS": str(max(100, arguments.agents)),
        }
        # One worker process per agent: a Claude run holds its worker while it works.
        with throwaway_hub(workers=arguments.agents, extra_env=env) as hub:
            repository = make_remote(hub.data_dir)
            report = {
                "overhead": overhead(hub, server, repository, arguments.turns),
                "concurrency": concurrency(hub, server, repository, arguments.agents),
                "kill_during_reply": kill_cancel(hub, server, repository),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
