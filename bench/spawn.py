"""API call → sandbox running, for script agents in bwrap, beside a bare bwrap start.

The script's first act is to print the wall clock inside the sandbox, so the
latency is measured to the moment the agent's own code runs, with no polling
in the measurement. Run: .venv/bin/python bench/spawn.py [--runs 50]
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throwaway_hub import ThrowawayHub, make_repository  # noqa: E402

STAMP = "date +%s.%N"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))], 2)


def wait_for_stamp(hub: ThrowawayHub, agent_id: str) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for event in hub.get(f"/api/v1/agents/{agent_id}/events")["events"]:
            if event["kind"] == "output":
                return float(event["data"]["lines"][0])
        time.sleep(0.05)
    raise RuntimeError(f"agent {agent_id} never ran: {hub.state(agent_id)}")


def bare_bwrap_ms(workspace: Path) -> float:
    started = time.time()
    output = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bwrap",
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--bind",
            str(workspace),
            "/workspace",
            "--chdir",
            "/workspace",
            "--",
            "/bin/sh",
            "-c",
            STAMP,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return (float(output) - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    runs = parser.parse_args().runs
    with ThrowawayHub(workers=4) as hub:
        repository = make_repository(hub.data_dir)
        api_ms = []
        for _ in range(runs):
            started = time.time()
            agent_id = hub.spawn(repository, STAMP)
            api_ms.append((wait_for_stamp(hub, agent_id) - started) * 1000)
        workspace = hub.data_dir / "bare"
        workspace.mkdir()
        shutil.chown(workspace, 65534, 65534)
        bare_ms = [bare_bwrap_ms(workspace) for _ in range(runs)]
    print(
        json.dumps(
            {
                "benchmark": "spawn: API call to sandbox running (script agent, bwrap)",
                "runs": runs,
                "api_to_running_ms": {
                    "p50": percentile(api_ms, 0.5),
                    "p99": percentile(api_ms, 0.99),
                    "mean": round(statistics.mean(api_ms), 2),
                },
                "bare_bwrap_start_ms": {
                    "p50": percentile(bare_ms, 0.5),
                    "p99": percentile(bare_ms, 0.99),
                },
                "ratio_p50": round(percentile(api_ms, 0.5) / percentile(bare_ms, 0.5), 2),
                "target": "p50 under 150 ms",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
