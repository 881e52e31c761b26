"""Whole agent runs through the gates: API → django-q2 worker → bwrap → ruff/pytest → git."""

import json
import time

from agents.models import AgentEvent, AgentState
from gates.models import GateRun
from tests.conftest import git, make_remote, spawn_body, wait_for_state
from tests.test_gates import COVERAGE_PROJECT, PYTHON_PROJECT, SECRET_VALUES, UNTESTED


def branches(remote) -> str:
    return git(remote, "branch", "--list")


def spawn(api, remote, script: str, **options) -> str:
    response = api.post("/api/v1/agents", spawn_body(remote, script, **options), format="json")
    assert response.status_code == 202, response.content
    return response.json()["agent_id"]


def test_a_script_that_breaks_the_tests_fails_with_the_failing_test_and_commits_nothing(
    hub, api, tmp_path, sandbox_toolchain
):
    remote = make_remote(tmp_path, PYTHON_PROJECT)

    agent_id = spawn(api, remote, "sed -i 's/a + b/a - b/' calc.py")
    agent = wait_for_state(agent_id, AgentState.FAILED, timeout=60)

    assert agent.error.startswith("not committed: the pre-commit gates rejected the change")
    assert "test_calc.py::test_add" in agent.error
    assert agent.result["gates"]["gates"]["passed"] is False
    assert agent.result["pushed_commit"] is None
    assert f"flotilla/{agent_id}" not in branches(remote)
    events = api.get(f"/api/v1/agents/{agent_id}/events").json()["events"]
    gate_events = {e["data"]["gate"]: e["data"]["outcome"] for e in events if e["kind"] == "gate"}
    assert gate_events == {"secret_scan": "passed", "lint": "passed", "tests": "failed"}
    transitions = [e["data"]["to"] for e in events if e["kind"] == "state"]
    assert transitions[-2:] == ["gating", "failed"]


def test_a_script_whose_change_passes_every_gate_is_committed_and_pushed(
    hub, api, tmp_path, sandbox_toolchain
):
    remote = make_remote(tmp_path, COVERAGE_PROJECT)
    script = (
        "printf '\\n\\ndef double(a):\\n    return add(a, a)\\n' >> calc.py && "
        "printf '\\n\\ndef test_double():\\n    from calc import double\\n\\n"
        "    assert double(2) == 4\\n' >> test_calc.py"
    )

    agent_id = spawn(api, remote, script)
    agent = wait_for_state(agent_id, AgentState.COMPLETED, timeout=60)

    assert git(remote, "rev-parse", f"flotilla/{agent_id}") == agent.result["pushed_commit"]
    assert "def double" in git(remote, "show", f"flotilla/{agent_id}:calc.py")
    runs = GateRun.objects.filter(agent_id=agent_id)
    assert [(run.stage, run.gate, run.outcome) for run in runs] == [
        ("pre-commit", "secret_scan", "passed"),
        ("pre-commit", "lint", "not_configured"),
        ("pre-commit", "tests", "passed"),
        ("pre-push", "merge_conflicts", "passed"),
        ("pre-push", "coverage", "passed"),
    ]


def test_a_script_that_adds_an_aws_key_fails_and_the_key_appears_nowhere(hub, api, tmp_path):
    remote = make_remote(tmp_path, {"README.md": "# sample\n"})
    key = SECRET_VALUES["aws"]

    agent_id = spawn(api, remote, f"echo 'AWS_ACCESS_KEY_ID = \"{key}\"' > deploy.py")
    agent = wait_for_state(agent_id, AgentState.FAILED, timeout=60)

    assert "AWS Access Key at deploy.py:1" in agent.error
    assert f"flotilla/{agent_id}" not in branches(remote)
    detail = api.get(f"/api/v1/agents/{agent_id}").content.decode()
    events = api.get(f"/api/v1/agents/{agent_id}/events").content.decode()
    stored = json.dumps(list(GateRun.objects.filter(agent_id=agent_id).values()), default=str)
    for text in (detail, events, stored):
        assert key not in text


def test_coverage_below_the_threshold_fails_the_run_without_pushing(
    hub, api, tmp_path, sandbox_toolchain
):
    remote = make_remote(tmp_path, COVERAGE_PROJECT)
    untested = UNTESTED.replace("\n", "\\n")

    agent_id = spawn(api, remote, f"printf '{untested}' >> calc.py")
    agent = wait_for_state(agent_id, AgentState.FAILED, timeout=60)

    assert agent.error.startswith(f"not pushed: the pre-push gates rejected flotilla/{agent_id}")
    assert "below the threshold of 85%" in agent.error
    assert f"flotilla/{agent_id}" not in branches(remote)
    assert "grade" not in git(remote, "show", "main:calc.py")
    # The run cleans up after it fails; the committed work stays on a kept branch.
    deadline = time.monotonic() + 10
    while not any(
        "kept" in event.data.get("message", "")
        for event in AgentEvent.objects.filter(agent_id=agent_id, kind="log")
    ):
        assert time.monotonic() < deadline, "the branch with the gated commit was not kept"
        time.sleep(0.05)


def test_spawn_rejects_malformed_gate_options(api, remote_repo):
    body = spawn_body(remote_repo, "true", gates={"coverage_threshold": 150, "tests": 3})

    response = api.post("/api/v1/agents", body, format="json")

    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert "options.gates.coverage_threshold" in fields
