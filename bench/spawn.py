"""API call → sandbox running, for script agents in bwrap, beside a bare bwrap start.

The script's first act is to print the wall clock inside the sandbox, so the
latency is measured to the moment the agent's own code runs, with no polling
in the measurement. Spawns alternate between network "off" and "allowlist"
(an egress proxy opened, its socket bound in, the bridge started before the
script), so both figures come from the same run and the same load.
Run: .venv/bin/python bench/spawn.py [--runs 50]
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

from bench.throwaway_hub import throwaway_hub
from tests.launcher import Hub, make_remote

STAMP = "date +%s.%N"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))], 2)


def wait_for_stamp(hub: Hub, agent_id: str) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for event in hub.get(f"/api/v1/agents/{agent_id}/events")["events"]:
            if event["kind"] == "output":
                return float(event["data"]["lines"][0])
        time.sleep(0.05)
    raise RuntimeError(f"agent {agent_id} never ran: {hub.state(agent_id)}")


def bare_bwrap_ms(workspace: Path) -> float:
    """The same sandbox shape as the hub's, started by hand: root's bwrap, then setpriv."""
    started = time.time()
    output = subprocess.run(
        [
            "bwrap",
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--die-with-parent",
            "--new-session",
            "--cap-add",
            "CAP_SETUID",
            "--cap-add",
            "CAP_SETGID",
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
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
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
    with throwaway_hub(workers=4) as hub:
        repository = make_remote(hub.data_dir)
        api_ms: dict[str, list[float]] = {"off": [], "allowlist": []}
        for _ in range(runs):
            for mode, samples in api_ms.items():
                started = time.time()
                agent_id = hub.spawn(repository, STAMP, network=mode)
                samples.append((wait_for_stamp(hub, agent_id) - started) * 1000)
        workspace = hub.data_dir / "bare"
        workspace.mkdir()
        shutil.chown(workspace, 65534, 65534)
        bare_ms = [bare_bwrap_ms(workspace) for _ in range(runs)]

    def summary(samples: list[float]) -> dict[str, float]:
        return {
            "p50": percentile(samples, 0.5),
            "p99": percentile(samples, 0.99),
            "mean": round(statistics.mean(samples), 2),
        }

    off, allowlist = percentile(api_ms["off"], 0.5), percentile(api_ms["allowlist"], 0.5)
    print(
        json.dumps(
            {
                "benchmark": "spawn: API call to sandbox running (script agent, bwrap)",
                "runs": runs,
                "api_to_running_ms": summary(api_ms["off"]),
                "api_to_running_allowlist_ms": summary(api_ms["allowlist"]),
                "allowlist_minus_off_p50_ms": round(allowlist - off, 2),
                "bare_bwrap_start_ms": {
                    "p50": percentile(bare_ms, 0.5),
                    "p99": percentile(bare_ms, 0.99),
                },
                "ratio_p50": round(off / percentile(bare_ms, 0.5), 2),
                "target": "p50 under 150 ms; allowlist under +30 ms over off",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
