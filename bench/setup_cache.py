"""Repository setup with a warm cache versus cold: 20 dependencies from a local package index.

Usage: ``.venv/bin/python bench/setup_cache.py [--rounds N] [--packages 20]``; prints JSON.

A package index on 127.0.0.2 (tests/package_index.py) serves 20 pure-Python
wheels (each a package of five modules). The sample repository's
``requirements.txt`` names all of them and its ``[setup]`` installs them
with pip into ``.deps``, through the egress proxy, in a bwrap sandbox. Each
round prepares a fresh agent as the worker does (worktree, sandbox) and
times ``repository_setup``: *cold* with the repository's cache emptied
first (pip downloads and installs everything, then the hub archives the
output into the cache), *warm* with the entry the cold run left (the hub
restores it and runs nothing). Rounds alternate cold and warm; figures are
medians. The target is warm under 10 % of cold.
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import scratch_django, seed_remote  # noqa: E402


def package_modules(name: str) -> dict[str, str]:
    """A package of five modules of about 10 kB each, as a small real dependency has."""
    package = name.replace("-", "_")
    body = "".join(f"def function_{n}(value):\n    return value * {n}\n\n\n" for n in range(250))
    modules = {f"{package}/__init__.py": 'VERSION = "1.0"\n'}
    modules.update({f"{package}/module_{n}.py": body for n in range(5)})
    return modules


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--packages", type=int, default=20)
    arguments = parser.parse_args()
    from tests.package_index import PackageIndex

    with PackageIndex() as index:
        names = [f"bench-dep-{n:02d}" for n in range(arguments.packages)]
        for name in names:
            index.add(name, "1.0", package_modules(name))
        scratch_django(FLOTILLA_EGRESS_ALLOWLIST=index.address)
        from gates.toolchain import toolchain_ensure

        toolchain_ensure()
        requirements = "".join(f"{name}==1.0\n" for name in names)
        setup = f'[setup]\ncommands = ["{index.pip_install()}"]\n'
        remote = seed_remote(
            Path(tempfile.mkdtemp(prefix="bench-remote-")),
            {"requirements.txt": requirements, ".flotilla.toml": setup},
        )
        result = run_rounds(arguments.rounds, str(remote), index)
    result["packages"] = arguments.packages
    print(json.dumps(result, indent=2))


def run_rounds(rounds: int, repository: str, index) -> dict:
    from django.conf import settings

    from agents import runner
    from agents.leases import agents_claim
    from agents.models import AgentEvent
    from agents.services import SpawnRequest, agent_cleanup, agent_spawn
    from agents.setup import repository_setup
    from agents.setup.cache import repository_cache_dir

    def measure(*, warm: bool) -> tuple[float, dict]:
        if not warm:
            shutil.rmtree(repository_cache_dir(repository), ignore_errors=True)
        request = SpawnRequest(
            task_id="bench-setup",
            agent_type="worker",
            runtime="script",
            script="true",
            repository=repository,
            base_branch="main",
        )
        agent_spawn(request=request, requested_by="bench")
        # Claimed as a node supervisor claims it (queued → spawning, a lease).
        (agent,) = agents_claim(node=settings.FLOTILLA_NODE_NAME, limit=1)
        context = runner._prepare(runner.AgentRun(agent=agent))
        try:
            started = time.perf_counter()
            repository_setup(context=context)
            elapsed = time.perf_counter() - started
        finally:
            agent.refresh_from_db()
            agent_cleanup(agent=agent)
        logs = AgentEvent.objects.filter(agent_id=agent.id, kind="log").order_by("id")
        details = [event.data["setup"] for event in logs if "setup" in event.data][-1]
        assert details["cache"] == ("hit" if warm else "stored"), details
        return elapsed, details

    measure(warm=False)  # the page cache, pip's first start, the imports
    cold_times, warm_times, restores, downloads = [], [], [], []
    stored: dict = {}
    for number in range(rounds):
        for warm in (False, True) if number % 2 == 0 else (True, False):
            before = sum(index.downloads.values())
            elapsed, details = measure(warm=warm)
            downloads.append((warm, sum(index.downloads.values()) - before))
            if warm:
                warm_times.append(elapsed)
                restores.append(details["restore_ms"])
            else:
                cold_times.append(elapsed)
                stored = details
    cold, warm = statistics.median(cold_times), statistics.median(warm_times)
    return {
        "benchmark": "setup_cache",
        "rounds": rounds,
        "cold_median_ms": round(cold * 1000, 1),
        "warm_median_ms": round(warm * 1000, 1),
        "warm_pct_of_cold": round(100 * warm / cold, 2),
        "target_pct": 10,
        "within_target": warm < cold * 0.10,
        # The restore alone (archive to worktree), as the warm run's event reports it.
        "restore_median_ms": statistics.median(restores),
        "cached_files": stored.get("files"),
        "cached_bytes": stored.get("bytes"),
        "downloads_cold": [n for warm, n in downloads if not warm],
        "downloads_warm": [n for warm, n in downloads if warm],
        "cold_ms": [round(t * 1000, 1) for t in cold_times],
        "warm_ms": [round(t * 1000, 1) for t in warm_times],
    }


if __name__ == "__main__":
    main()
