"""N concurrent claude-code agents on one hub: time to first model call, hub memory per agent.

A throwaway hub (own DATA_DIR and SQLite, real daphne and django-q2 processes)
runs the real Claude Code CLI in bwrap sandboxes; its worker's model gateway
forwards to a streaming Messages API server in this process
(tests/messages_server.py). N agents are spawned at once through the API, each
from its own thread. Each agent's conversation is two model calls: the first
answers with a Write tool call (a file in the workspace), the second ends the
turn; the hub then commits through the minimal gates and pushes.

The first call of every agent is held at the server until all N have arrived
(or a deadline passes), so that all N agents are running at the same moment;
the hub's memory is sampled then, and the held calls are released.

- Time to first model call: from just before the agent's spawn request to the
  server's arrival stamp of its first /v1/messages request (one monotonic
  clock; each agent's prompt carries its own marker), and split at the agent's
  ``running`` state event: before it the hub's part (queue, worktree, sandbox
  start), after it the gateway and the CLI's own start-up.
- Hub memory: PSS (/proc/<pid>/smaps_rollup) of the hub's own processes only,
  found from daphne and qcluster by process tree: those running the hub's
  Python. The walk stops at any other process (bwrap and everything in the
  sandboxes), which is summed apart for context. Idle is sampled before the
  spawns, running while all N first calls are held.

Run: .venv/bin/python bench/cli_agents.py [--agents 20] [--first-call-timeout 180]
"""

import argparse
import json
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throwaway_hub import throwaway_hub  # noqa: E402
from tests.launcher import Hub, make_remote  # noqa: E402
from tests.messages_server import MessagesServer, text_reply, tool_use_reply, usage  # noqa: E402

KEY = "sk-ant-api03-bench-" + "0" * 32
CLIS_DIR = os.environ.get("FLOTILLA_AGENT_CLIS_DIR", "/var/lib/flotilla/agent-clis")
FINAL = {"completed", "failed", "killed"}


class Spawned(NamedTuple):
    began: float  # monotonic, just before the spawn request
    wall: float  # the same moment on the wall clock, for the hub's event times
    agent_id: str


def marker(index: int) -> str:
    return f"cli-bench-agent-{index:03d}"


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))], 1)

    return {"p50": at(0.5), "p95": at(0.95), "max": round(ordered[-1], 1)}


class HeldConversation:
    """The server's reply: an agent's first call waits for ``release``, then writes a file."""

    def __init__(self, agents: int) -> None:
        self.agents = agents
        self.release = threading.Event()

    def __call__(self, body: dict) -> object:
        seen = json.dumps(body.get("messages", []))
        index = next((i for i in range(self.agents) if marker(i) in seen), None)
        turn = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        if index is None or turn > 0:
            # The second call (or any call that is no agent's task): end the turn.
            return text_reply("Wrote the file.", usage_data=usage(1100, 10))
        self.release.wait(timeout=600)
        write = {"file_path": f"/workspace/{marker(index)}.txt", "content": "bench\n"}
        return tool_use_reply([("Write", write)], usage_data=usage(1000, 40))


def first_calls(server: MessagesServer, agents: int) -> dict[int, float]:
    """Each agent's first /v1/messages arrival (monotonic), by the marker in its prompt."""
    with server.lock:
        requests = [r for r in server.requests if r["path"].split("?")[0].endswith("/messages")]
    arrived: dict[int, float] = {}
    for request in requests:
        seen = json.dumps(request["body"].get("messages", []))
        for index in range(agents):
            if marker(index) in seen and index not in arrived:
                arrived[index] = request["received_at"]
    return arrived


def process_table() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    return children


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def hub_memory(roots: list[int]) -> dict:
    """PSS of the hub's own processes (the hub's Python, below daphne and qcluster), and apart
    from it, of every other process below them (sandboxes: bwrap, the CLI, its tools)."""
    children = process_table()
    hub_exe = os.readlink(f"/proc/{roots[0]}/exe")
    hub_kb, hub_count, other_kb, other_names = 0, 0, 0, {}
    stack, outside = list(roots), []
    while stack:
        pid = stack.pop()
        try:
            ours = os.readlink(f"/proc/{pid}/exe") == hub_exe
        except OSError:
            continue
        if ours:
            hub_kb, hub_count = hub_kb + pss_kb(pid), hub_count + 1
            stack += children.get(pid, [])
        else:
            outside.append(pid)
    while outside:
        pid = outside.pop()
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        other_kb += pss_kb(pid)
        other_names[name] = other_names.get(name, 0) + 1
        outside += children.get(pid, [])
    return {
        "hub_mb": round(hub_kb / 1024, 1),
        "hub_processes": hub_count,
        "sandbox_mb": round(other_kb / 1024, 1),
        "sandbox_processes": other_names,
    }


def sampled(roots: list[int], samples: int = 5) -> dict:
    """Several samples a fifth of a second apart; the one with the median hub PSS."""
    taken = []
    for _ in range(samples):
        taken.append(hub_memory(roots))
        time.sleep(0.2)
    taken.sort(key=lambda sample: sample["hub_mb"])
    return {**taken[len(taken) // 2], "hub_mb_range": [taken[0]["hub_mb"], taken[-1]["hub_mb"]]}


def spawn_all(hub: Hub, repository: Path, agents: int) -> dict[int, Spawned]:
    """All spawns at once, one thread each, by index."""
    spawned: dict[int, Spawned] = {}
    errors: list[str] = []
    start = threading.Barrier(agents)

    def spawn(index: int) -> None:
        body = {
            "task_id": marker(index),
            "agent_type": "worker",
            "runtime": "claude-code",
            "context": {
                "repository": str(repository),
                "branch": "main",
                "instructions": f"Write the file {marker(index)}.txt, then stop.",
            },
            "options": {"gate_profile": "minimal", "timeout_s": 900},
        }
        start.wait()
        began, wall = time.monotonic(), time.time()
        try:
            agent_id = hub.request("POST", "/api/v1/agents", body)["agent_id"]
            spawned[index] = Spawned(began, wall, agent_id)
        except OSError as error:
            errors.append(f"{marker(index)}: {error}")

    threads = [threading.Thread(target=spawn, args=(index,)) for index in range(agents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        print(json.dumps({"spawn_errors": errors}), file=sys.stderr)
    return spawned


def running_at(hub: Hub, agent_id: str) -> float | None:
    """The wall-clock time of the agent's first move to ``running`` (its state event)."""
    for event in hub.get(f"/api/v1/agents/{agent_id}/events?limit=1000")["events"]:
        if event["kind"] == "state" and event["data"].get("to") == "running":
            return datetime.fromisoformat(event["created_at"]).timestamp()
    return None


def startup_split(hub: Hub, spawned: dict[int, Spawned], arrived: dict) -> dict:
    """Spawn → running (the hub: queue, worktree, sandbox start) and running → first model
    call (the gateway opened, the CLI launched in the sandbox and starting up), per agent."""
    to_running, to_call = [], []
    for index, spawn in spawned.items():
        running = running_at(hub, spawn.agent_id)
        if running is None or index not in arrived:
            continue
        to_running.append((running - spawn.wall) * 1000)
        to_call.append((arrived[index] - spawn.began) * 1000 - to_running[-1])
    return {
        "spawn_to_running_state_ms": percentiles(to_running),
        "running_state_to_first_model_call_ms": percentiles(to_call),
    }


def wait_for(condition, timeout: float, every: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def states_of(hub: Hub, ids: list[str]) -> dict[str, str]:
    return {agent_id: hub.state(agent_id) for agent_id in ids}


def counted(states: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def run(hub: Hub, server: MessagesServer, held: HeldConversation, options) -> dict:
    agents = options.agents
    roots = [process.pid for process in hub.processes]
    repository = make_remote(hub.data_dir)
    time.sleep(2.0)  # every worker of the cluster up before the idle sample
    idle = sampled(roots)
    spawned = spawn_all(hub, repository, agents)
    ids = [spawn.agent_id for spawn in spawned.values()]
    all_arrived = wait_for(
        lambda: len(first_calls(server, agents)) >= len(spawned), options.first_call_timeout
    )
    arrived = first_calls(server, agents)
    running_states = states_of(hub, ids)
    running = sampled(roots)
    held.release.set()
    wait_for(lambda: set(states_of(hub, ids).values()) <= FINAL, options.finish_timeout, 1.0)
    final = states_of(hub, ids)
    waits = [(arrived[i] - spawn.began) * 1000 for i, spawn in spawned.items() if i in arrived]
    firsts = [r for r in server.requests if marker(0) in json.dumps(r["body"])]
    return {
        "agents": agents,
        "spawned": len(spawned),
        "model": firsts[0]["body"].get("model") if firsts else None,
        "spawn_to_first_model_call_ms": {**percentiles(waits), "agents": len(waits)},
        "all_first_calls_arrived": all_arrived,
        **startup_split(hub, spawned, arrived),
        "states_while_held": counted(running_states),
        "hub_pss": {
            "idle": idle,
            "all_running": running,
            "per_running_agent_mb": round(running["hub_mb"] / agents, 2),
            "added_per_running_agent_mb": round((running["hub_mb"] - idle["hub_mb"]) / agents, 2),
        },
        "completed": counted(final).get("completed", 0),
        "final_states": counted(final),
        "model_requests": len(server.requests),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--first-call-timeout", type=float, default=180.0)
    parser.add_argument("--finish-timeout", type=float, default=180.0)
    options = parser.parse_args()
    if not (Path(CLIS_DIR) / "node_modules" / ".bin" / "claude").exists():
        sys.exit(f"no Claude Code CLI in {CLIS_DIR}: run manage.py agent_clis")
    started, load = time.monotonic(), os.getloadavg()
    held = HeldConversation(options.agents)
    with MessagesServer() as server:
        server.default = held
        env = {
            "ANTHROPIC_BASE_URL": server.url,
            "ANTHROPIC_API_KEY": KEY,
            "FLOTILLA_AGENT_CLIS_DIR": CLIS_DIR,
            "MAX_CONCURRENT_AGENTS": str(options.agents + 10),
        }
        # A CLI agent holds its worker for its whole run: one worker each, and two spare.
        hub = throwaway_hub(workers=options.agents + 2, extra_env=env)
        hub.env["FLOTILLA_LOCAL_REPOSITORY_ROOTS"] = str(hub.data_dir)
        try:
            with hub:
                try:
                    report = run(hub, server, held, options)
                finally:
                    held.release.set()
                    kill_all(hub)
        finally:
            held.release.set()
    report["load_average_at_start"] = [round(value, 2) for value in load]
    report["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))


def kill_all(hub: Hub) -> None:
    """Whatever still runs is killed through the hub before it stops."""
    try:
        hub.request("POST", "/api/v1/agents/kill-all", {"reason": "benchmark over"})
    except OSError as error:
        print(f"kill-all failed: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
