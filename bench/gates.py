"""Gate overhead: the pre-commit gates versus the same commands run by hand in the same sandbox.

Usage: ``.venv/bin/python bench/gates.py [--rounds N]``; prints one JSON object.

A sample repository (a module, its tests, a ``.flotilla.toml`` with ruff and
pytest) is checked out into a worktree and a real bwrap sandbox. Each round
runs, in alternating order, (a) ``ruff check .`` and ``python -m pytest -q``
through ``sandbox.exec`` directly, and (b) ``gates_run`` for the pre-commit
stage of the standard profile, which runs the same two commands in the same
sandbox plus the secret scan, and records its GateRun rows. The overhead is
the difference of the medians; the target is under 10 % plus 50 ms.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import scratch_django, seed_remote  # noqa: E402

CALC = "def add(a, b):\n    return a + b\n" + "".join(
    f"\n\ndef times_{n}(a):\n    return a * {n}\n" for n in range(40)
)
TESTS = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
CONFIG = '[gates]\nlint = "ruff check ."\ntests = "python -m pytest -q"\n'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    rounds = parser.parse_args().rounds
    # The sandbox user reaches its worktree below DATA_DIR.
    scratch_django().chmod(0o755)
    from django.conf import settings

    from agents import workspace
    from agents.delivery import _GATE_ENV
    from agents.sandboxes import sandbox_backend
    from agents.sandboxes.base import SandboxSpec
    from gates.base import GateContext
    from gates.toolchain import toolchain_ensure

    toolchain_ensure()
    remote = seed_remote(
        Path(tempfile.mkdtemp(prefix="bench-remote-")),
        {"calc.py": CALC, "test_calc.py": TESTS, ".flotilla.toml": CONFIG},
    )
    agent_id = str(uuid.uuid4())
    path = workspace.worktree_path(agent_id=agent_id, task_id="bench")
    workspace.worktree_create(
        repository=str(remote), base_branch="main", work_branch=f"flotilla/{agent_id}", path=path
    )
    (path / "calc.py").write_text(CALC + "\n\ndef sub(a, b):\n    return a - b\n")
    diff = workspace.worktree_stage(path=path)
    sandbox = sandbox_backend("bwrap")
    handle = sandbox.start(SandboxSpec(agent_id=agent_id, workspace=path))
    try:
        result = run_rounds(
            rounds,
            sandbox,
            handle,
            diff,
            agent_id,
            _GATE_ENV,
            GateContext,
            workspace.branch_file_read(
                repository=str(remote), base_branch="main", path=".flotilla.toml"
            ),
        )
    finally:
        sandbox.remove(handle)
        workspace.worktree_remove(
            repository=str(remote), path=path, work_branch=f"flotilla/{agent_id}"
        )
    result["sandbox"] = "bwrap"
    result["toolchain"] = str(settings.FLOTILLA_SANDBOX_TOOLCHAIN)
    print(json.dumps(result, indent=2))


def run_rounds(rounds, sandbox, handle, diff, agent_id, gate_env, GateContext, config_text):
    from gates.services import gates_run

    commands = ["ruff check .", "python -m pytest -q"]

    in_commands = [0.0]

    def run_command(command: str, timeout_s: float):
        started = time.perf_counter()
        result = sandbox.exec(handle, gate_env + command, timeout_s=timeout_s)
        in_commands[0] += time.perf_counter() - started
        return result

    def by_hand() -> float:
        started = time.perf_counter()
        for command in commands:
            assert run_command(command, 120).exit_code == 0
        return time.perf_counter() - started

    def gated() -> float:
        context = GateContext(
            agent_id=agent_id,
            task="bench",
            diff=diff,
            run_command=run_command,
            config_text=config_text,
        )
        in_commands[0] = 0.0
        started = time.perf_counter()
        report = gates_run(stage="pre-commit", profile="standard", context=context)
        elapsed = time.perf_counter() - started
        assert report.passed, report.text
        own_times.append(elapsed - in_commands[0])
        return elapsed

    own_times: list[float] = []
    by_hand(), gated()  # warm the page cache and the imports
    own_times.clear()
    hand_times, gate_times = [], []
    for index in range(rounds):
        order = (by_hand, gated) if index % 2 == 0 else (gated, by_hand)
        for measure in order:
            (hand_times if measure is by_hand else gate_times).append(measure())
    hand, gates = statistics.median(hand_times), statistics.median(gate_times)
    overhead_ms = (gates - hand) * 1000
    budget_ms = hand * 1000 * 0.10 + 50
    return {
        "benchmark": "gate_overhead",
        "rounds": rounds,
        "commands": commands,
        "by_hand_median_ms": round(hand * 1000, 1),
        "gates_median_ms": round(gates * 1000, 1),
        "overhead_ms": round(overhead_ms, 1),
        "overhead_pct": round(100 * (gates - hand) / hand, 2),
        "target_ms": round(budget_ms, 1),
        "within_target": overhead_ms < budget_ms,
        # Time gates_run spends outside the commands themselves (config parsing,
        # secret scan, reporting, GateRun rows): the overhead without the noise
        # of two timings of slow commands on a shared machine.
        "gates_own_median_ms": round(statistics.median(own_times) * 1000, 2),
        "gates_own_within_target": statistics.median(own_times) * 1000 < budget_ms,
        "by_hand_ms": [round(t * 1000, 1) for t in hand_times],
        "gates_ms": [round(t * 1000, 1) for t in gate_times],
    }


if __name__ == "__main__":
    main()
