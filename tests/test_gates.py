"""Quality gates on real worktrees, real bwrap sandboxes, real ruff/pytest and real HTTP servers.

These call the delivery functions the runner and the Claude runtime use
(``agent_commit``, ``agent_push``) in-process, on an agent prepared exactly as
the worker prepares one; tests/test_gated_runs.py drives whole runs through the
API and the django-q2 worker.
"""

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from agents import runner, workspace
from agents.delivery import agent_commit, agent_push
from agents.lifecycle import agent_transition
from agents.models import Agent, AgentEvent, AgentState
from agents.runtimes.base import RunOutcome
from audit.models import AuditEvent
from gates.base import GateContext
from gates.checks.ai_review import AiReviewGate
from gates.config import gate_config_parse
from gates.diffs import diff_added_lines, diff_files
from gates.errors import GateConfigError
from gates.models import GateRun
from gates.services import gates_run
from tests.conftest import git, make_remote
from tests.gating import (
    gated_agent_preparer,
    result_of,
    retitled_on_both_sides,
    someone_else_pushes,
    write,
)
from tests.messages_server import error_reply, raw_reply, text_reply, tool_use_reply

CALC = "def add(a, b):\n    return a + b\n"
TEST_CALC = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
PYTHON_PROJECT = {
    "calc.py": CALC,
    "test_calc.py": TEST_CALC,
    ".flotilla.toml": '[gates]\nlint = "ruff check ."\ntests = "python -m pytest -q"\n',
}

# Made-up credentials in each provider's format; none of them is real. They are
# assembled at run time so that this file itself holds no secret-shaped string.
SECRET_VALUES = {
    "aws": "AKIA" + "Q3EGRYWVZB7HKP4N",
    "github": "ghp_" + "R8mT2vXq9LkPz4WcYh7NbJs3FdGu6Ea1Qo5K",
    "anthropic": "sk-ant-" + "api03-Zq8Xv2Lm5Rt9Kp3Wy7Nb4Hc6Jd1Fg0Se-AbCdEfGhIjKlMnOpQrStUv",
    "private_key": "MIIEowIBAAKCAQEA7yq3",
}
SECRETS = {
    "aws": f'AWS_ACCESS_KEY_ID = "{SECRET_VALUES["aws"]}"\n',
    "github": f'TOKEN = "{SECRET_VALUES["github"]}"\n',
    "anthropic": f'ANTHROPIC = "{SECRET_VALUES["anthropic"]}"\n',
    "private_key": "KEY = '''-----BEGIN RSA "
    + "PRIVATE KEY-----\n"
    + SECRET_VALUES["private_key"]
    + "\n'''\n",
}


@pytest.fixture
def prepare(db, sandbox_toolchain, prepared_agents):
    """An agent prepared as the worker prepares one: worktree, bwrap sandbox, run context."""
    return gated_agent_preparer(
        prepared_agents, task_id="task-gates", instructions="Keep the tests green."
    )


def remote_head(remote: Path, branch: str) -> str | None:
    listing = git(remote, "branch", "--list", branch)
    return git(remote, "rev-parse", branch) if listing else None


def local_command(command: str, timeout_s: float):
    """Runs a command on the host, for gate tests that need no sandbox."""
    done = subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, text=True, timeout=timeout_s
    )
    return SimpleNamespace(
        exit_code=done.returncode,
        timed_out=False,
        output_tail=done.stdout + done.stderr,
        duration_s=0.0,
    )


def gate_context(**overrides) -> GateContext:
    values = {
        "agent_id": "6f1c7c52-3c57-4a43-9d0e-4a4de6d4a0a1",
        "task": "Add a greeting.",
        "diff": "--- a/app.py\n+++ b/app.py\n@@ -0,0 +1 @@\n+print('hi')\n",
        "run_command": local_command,
    }
    return GateContext(**{**values, **overrides})


# --- pre-commit: tests, lint, secrets ------------------------------------------------------


def test_a_change_that_breaks_the_tests_is_not_committed_and_names_the_failing_test(
    prepare, tmp_path
):
    remote = make_remote(tmp_path, PYTHON_PROJECT)
    context = prepare(remote)
    write(context, "calc.py", CALC.replace("a + b", "a - b"))
    head = git(context.worktree, "-c", "safe.directory=*", "rev-parse", "HEAD")

    report = agent_commit(context=context, message="break add")

    assert not report.approved and report.sha is None
    assert git(context.worktree, "-c", "safe.directory=*", "rev-parse", "HEAD") == head
    tests = result_of(report, "tests")
    assert tests.outcome == "failed"
    assert "test_calc.py::test_add" in tests.summary
    assert "test_calc.py::test_add" in report.text
    assert "assert -1 == 5" in report.text
    lint = result_of(report, "lint")
    assert lint.outcome == "passed"
    runs = GateRun.objects.filter(agent_id=context.agent.id, stage="pre-commit")
    assert {run.gate: run.passed for run in runs} == {
        "secret_scan": True,
        "lint": True,
        "tests": False,
    }
    events = AgentEvent.objects.filter(agent_id=context.agent.id, kind="gate")
    assert {event.data["gate"] for event in events} == {"secret_scan", "lint", "tests"}


def test_a_change_that_passes_ruff_and_pytest_in_the_sandbox_is_committed(prepare, tmp_path):
    remote = make_remote(tmp_path, PYTHON_PROJECT)
    context = prepare(remote)
    write(context, "calc.py", CALC + "\n\ndef sub(a, b):\n    return a - b\n")

    report = agent_commit(context=context, message="add sub")

    assert report.approved, report.text
    assert git(context.worktree, "-c", "safe.directory=*", "rev-parse", "HEAD") == report.sha
    # The gates left nothing behind, as the hub's own (jailed) git sees the worktree.
    assert not workspace.worktree_changed(path=context.worktree)
    assert "sub" in git(context.worktree, "-c", "safe.directory=*", "show", "HEAD:calc.py")


def test_a_lint_error_found_by_ruff_rejects_the_commit(prepare, tmp_path):
    remote = make_remote(tmp_path, PYTHON_PROJECT)
    context = prepare(remote)
    write(context, "calc.py", "import os\n" + CALC)

    report = agent_commit(context=context, message="unused import")

    lint = result_of(report, "lint")
    assert not report.approved and lint.outcome == "failed"
    assert "F401" in lint.output


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_a_change_that_adds_a_secret_is_not_committed_and_the_report_hides_it(
    prepare, tmp_path, kind
):
    remote = make_remote(tmp_path, {"README.md": "# sample\n"})
    context = prepare(remote)
    write(context, "config/settings.py", "DEBUG = False\n" + SECRETS[kind])
    head = git(context.worktree, "-c", "safe.directory=*", "rev-parse", "HEAD")

    report = agent_commit(context=context, message="add config")

    assert not report.approved
    assert git(context.worktree, "-c", "safe.directory=*", "rev-parse", "HEAD") == head
    scan = result_of(report, "secret_scan")
    finding = scan.details["findings"][0]
    assert finding["file"] == "config/settings.py" and finding["line"] == 2
    assert finding["kind"]
    secret = SECRET_VALUES[kind]
    stored = [
        json.dumps(report.as_dict()),
        report.text,
        json.dumps(list(GateRun.objects.values()), default=str),
        json.dumps(list(AgentEvent.objects.values("data")), default=str),
    ]
    for text in stored:
        assert secret not in text


def test_the_secret_scan_reads_only_added_lines(db):
    remote_diff = (
        "diff --git a/keys.py b/keys.py\n--- a/keys.py\n+++ b/keys.py\n@@ -1,2 +1,2 @@\n"
        f"-{SECRETS['aws']}"
        " unchanged = 1\n+fixed = 2\n"
    )

    report = gates_run(
        stage="pre-commit", profile="minimal", context=gate_context(diff=remote_diff)
    )

    scan = next(result for result in report.results if result.gate == "secret_scan")
    assert scan.outcome == "passed"
    assert diff_added_lines(remote_diff) == {"keys.py": [(2, "fixed = 2")]}
    assert diff_files(remote_diff) == ["keys.py"]


# --- profiles and configuration ------------------------------------------------------------


def test_strict_fails_on_a_gate_the_repository_does_not_configure(prepare, tmp_path):
    remote = make_remote(tmp_path, PYTHON_PROJECT)
    context = prepare(remote, profile="strict")
    write(context, "calc.py", CALC + "\n\ndef sub(a, b):\n    return a - b\n")

    report = agent_commit(context=context, message="add sub")

    assert not report.approved
    typecheck = result_of(report, "typecheck")
    assert typecheck.outcome == "not_configured" and typecheck.blocking
    assert "typecheck: not configured" in report.text
    assert {r.gate for r in report.gates.failures} == {"typecheck"}


def test_standard_only_warns_about_an_unconfigured_gate(prepare, tmp_path):
    remote = make_remote(tmp_path, {"README.md": "# sample\n"})
    context = prepare(remote)
    write(context, "notes.txt", "hello\n")

    report = agent_commit(context=context, message="notes")

    assert report.approved, report.text
    outcomes = {result.gate: result.outcome for result in report.gates.results}
    assert outcomes == {
        "secret_scan": "passed",
        "lint": "not_configured",
        "tests": "not_configured",
    }
    assert "a warning under this profile" in report.text


def test_spawn_options_override_the_repository_commands(prepare, tmp_path):
    remote = make_remote(tmp_path, PYTHON_PROJECT)
    context = prepare(remote, gates={"tests": "echo overridden; exit 4", "lint": ""})
    write(context, "notes.txt", "hello\n")

    report = agent_commit(context=context, message="notes")

    tests = result_of(report, "tests")
    assert tests.outcome == "failed" and "overridden" in tests.output
    lint = result_of(report, "lint")
    assert lint.outcome == "not_configured"


def test_an_agent_cannot_weaken_its_gates_by_editing_the_config_file(prepare, tmp_path):
    remote = make_remote(tmp_path, PYTHON_PROJECT)
    context = prepare(remote)
    write(context, ".flotilla.toml", '[gates]\ntests = "true"\n')
    write(context, "calc.py", CALC.replace("a + b", "a - b"))

    report = agent_commit(context=context, message="sneaky")

    assert not report.approved
    assert "test_calc.py::test_add" in report.text


def test_a_malformed_config_rejects_the_change_with_the_reason(db):
    report = gates_run(
        stage="pre-commit", profile="standard", context=gate_context(config_text="[gates\nlint = 1")
    )

    assert not report.passed
    assert report.results[0].gate == "config"
    assert "not valid TOML" in report.results[0].summary


def test_config_reads_commands_threshold_and_timeout_with_overrides_winning():
    config = gate_config_parse(
        text='[gates]\nlint = "ruff check ."\ntimeout_s = 30\n'
        '[gates.coverage]\ncommand = "pytest --cov"\nthreshold = 70\n',
        overrides={"lint": "flake8", "coverage_threshold": 90},
    )

    assert config.commands == {"lint": "flake8", "coverage": "pytest --cov"}
    assert config.coverage_threshold == 90 and config.timeout_s == 30
    with pytest.raises(GateConfigError, match="gates.tests must be a command"):
        gate_config_parse(text="[gates]\ntests = 3\n")
    with pytest.raises(GateConfigError, match="not a known gate setting"):
        gate_config_parse(text='[gates]\nfuzz = "x"\n')


def test_a_gate_command_past_its_timeout_fails_the_gate(prepare, tmp_path):
    remote = make_remote(tmp_path, {"README.md": "# sample\n"})
    context = prepare(remote, gates={"tests": "sleep 30", "timeout_s": 1})
    write(context, "notes.txt", "hello\n")

    report = agent_commit(context=context, message="notes")

    tests = result_of(report, "tests")
    assert tests.outcome == "failed" and "timed out after 1 s" in tests.summary


# --- pre-push: coverage, conflicts ---------------------------------------------------------

COVERAGE_PROJECT = {
    **PYTHON_PROJECT,
    ".flotilla.toml": '[gates]\ntests = "python -m pytest -q"\n'
    'coverage = { command = "python -m pytest -q --cov=calc --cov-report=term", '
    "threshold = 85 }\n",
}
UNTESTED = (
    "\n\ndef grade(score):\n"
    + "".join(f"    if score > {n}:\n        return {n}\n" for n in range(90, 0, -10))
    + "    return 0\n"
)


def test_coverage_below_the_threshold_blocks_the_push(prepare, tmp_path):
    remote = make_remote(tmp_path, COVERAGE_PROJECT)
    context = prepare(remote)
    write(context, "calc.py", CALC + UNTESTED)
    assert agent_commit(context=context, message="add grade").approved

    report = agent_push(context=context, summary="added grade")

    assert not report.approved and report.sha is None
    coverage = result_of(report, "coverage")
    assert coverage.outcome == "failed"
    assert coverage.details["percent"] < 85
    assert "below the threshold of 85%" in coverage.summary
    assert remote_head(remote, context.agent.work_branch) is None


def test_coverage_at_or_above_the_threshold_lets_the_push_through(prepare, tmp_path):
    remote = make_remote(tmp_path, COVERAGE_PROJECT)
    context = prepare(remote)
    write(context, "calc.py", CALC + "\n\ndef double(a):\n    return add(a, a)\n")
    write(
        context,
        "test_calc.py",
        TEST_CALC + "\n\ndef test_double():\n"
        "    from calc import double\n\n    assert double(2) == 4\n",
    )
    assert agent_commit(context=context, message="add double").approved

    report = agent_push(context=context, summary="added double")

    assert report.approved, report.text
    assert remote_head(remote, context.agent.work_branch) == report.sha
    coverage = result_of(report, "coverage")
    assert coverage.details["percent"] == 100


def test_a_merge_conflict_with_the_target_branch_blocks_the_push_and_names_the_file(
    prepare, tmp_path
):
    remote = make_remote(tmp_path, {"README.md": "# sample\n", "other.txt": "x\n"})
    context = prepare(remote)
    retitled_on_both_sides(context, remote, tmp_path)

    report = agent_push(context=context, summary="retitled")

    assert not report.approved
    conflicts = result_of(report, "merge_conflicts")
    assert conflicts.details["files"] == ["README.md"]
    assert "README.md" in report.text
    assert remote_head(remote, context.agent.work_branch) is None


def test_a_branch_that_merges_cleanly_is_pushed(prepare, tmp_path):
    remote = make_remote(tmp_path, {"README.md": "# sample\n", "other.txt": "x\n"})
    context = prepare(remote)
    write(context, "README.md", "# sample by the agent\n")
    assert agent_commit(context=context, message="retitle").approved
    someone_else_pushes(remote, tmp_path, {"other.txt": "y\n"}, "unrelated")

    report = agent_push(context=context, summary="retitled")

    assert report.approved, report.text
    assert remote_head(remote, context.agent.work_branch) == report.sha


# --- YOLO mode -----------------------------------------------------------------------------


def test_yolo_mode_commits_a_change_that_would_fail_and_audits_every_skip(
    prepare, tmp_path, settings, api
):
    settings.YOLO_MODE = True
    remote = make_remote(tmp_path, PYTHON_PROJECT)
    context = prepare(remote)
    write(context, "calc.py", CALC.replace("a + b", "a - b"))

    report = agent_commit(context=context, message="break add, yolo")

    assert report.approved and report.sha
    assert git(context.worktree, "-c", "safe.directory=*", "rev-parse", "HEAD") == report.sha
    outcomes = {result.gate: result.outcome for result in report.gates.results}
    assert outcomes == {"secret_scan": "passed", "lint": "skipped", "tests": "skipped"}
    audits = AuditEvent.objects.filter(action="gate.skipped", target=f"agent:{context.agent.id}")
    assert sorted(audit.data["gate"] for audit in audits) == ["lint", "tests"]
    assert all("YOLO_MODE" in audit.reason for audit in audits)
    assert api.get("/api/v1/health").json()["yolo_mode"] is True


def deliver(context) -> Agent:
    """What the runner does once a script agent's command is done: commit, then push."""
    # The agent was claimed (spawning) when it was prepared.
    assert agent_transition(agent_id=context.agent.id, to=AgentState.RUNNING)
    runner.agent_deliver(context=context, outcome=RunOutcome(succeeded=True, summary="done"))
    return Agent.objects.get(id=context.agent.id)


def shown_anywhere(agent: Agent, staff_api) -> list[str]:
    """Every place a person or a program reads about an agent's run."""
    return [
        agent.error,
        json.dumps(agent.result, ensure_ascii=False),
        staff_api.get(f"/api/v1/agents/{agent.id}").content.decode(),
        staff_api.get(f"/api/v1/agents/{agent.id}/events").content.decode(),
        json.dumps(
            list(AgentEvent.objects.filter(agent_id=agent.id).values("data")), ensure_ascii=False
        ),
        json.dumps(list(GateRun.objects.values()), default=str, ensure_ascii=False),
        json.dumps(list(AuditEvent.objects.values()), default=str, ensure_ascii=False),
    ]


def test_yolo_mode_never_skips_the_secret_scan_so_a_live_anthropic_key_is_not_pushed(
    prepare, tmp_path, settings, staff_api
):
    settings.YOLO_MODE = True
    remote = make_remote(tmp_path, {"README.md": "# sample\n"})
    context = prepare(remote)
    write(context, "config/settings.py", "DEBUG = False\n" + SECRETS["anthropic"])

    agent = deliver(context)

    assert agent.state == AgentState.FAILED
    assert "Anthropic API Key at config/settings.py:2" in agent.error
    assert remote_head(remote, agent.work_branch) is None
    assert not AuditEvent.objects.filter(action="gate.skipped", data__gate="secret_scan").exists()
    secret_part = SECRET_VALUES["anthropic"].removeprefix("sk-ant-api03-")
    for text in shown_anywhere(agent, staff_api):
        assert SECRET_VALUES["anthropic"] not in text
        assert not [piece for piece in fragments(secret_part) if piece in text]


def test_a_hard_coded_password_is_not_committed_and_no_part_of_it_is_shown(
    prepare, tmp_path, staff_api
):
    password = "Qv7!zR2#kW9mX4pTé"
    remote = make_remote(tmp_path, {"README.md": "# sample\n"})
    # A test command that prints the file, as a failing test's traceback would.
    context = prepare(remote, gates={"tests": "cat config/settings.py; exit 1"})
    write(context, "config/settings.py", f'DB_PASSWORD = "{password}"\n')

    agent = deliver(context)

    assert agent.state == AgentState.FAILED
    assert "Hard-coded Password at config/settings.py:1" in agent.error
    assert "[redacted secret]" in agent.error  # the tests gate's output, as the agent sees it
    for text in shown_anywhere(agent, staff_api):
        assert not [piece for piece in fragments(password) if piece in text], text[:300]


def fragments(secret: str, size: int = 4) -> set[str]:
    return {secret[start : start + size] for start in range(len(secret) - size + 1)}


# --- AI review -----------------------------------------------------------------------------


def verdict(confidence, summary="looks right", issues=()):
    return tool_use_reply(
        [("submit_review", {"confidence": confidence, "summary": summary, "issues": list(issues)})]
    )


def test_ai_review_with_confidence_095_approves(messages_server, db):
    messages_server.script(verdict(0.95))

    result = AiReviewGate().run(gate_context())

    assert result.outcome == "passed" and result.confidence == 0.95


def test_ai_review_with_confidence_05_rejects(messages_server, db):
    messages_server.script(verdict(0.5, "misses the edge case", ["no test for empty input"]))

    result = AiReviewGate().run(gate_context())

    assert result.outcome == "failed" and result.confidence == 0.5
    assert "0.50 is below 0.90" in result.summary
    assert "no test for empty input" in result.output


@pytest.mark.parametrize(
    "reply",
    [
        raw_reply(b"{not json at all"),
        text_reply("Looks fine to me, ship it!"),
        verdict("very high"),
        verdict(1.7),
        text_reply("I can't help with that.", stop_reason="refusal"),
    ],
    ids=["garbage", "prose", "confidence-not-a-number", "confidence-out-of-range", "refusal"],
)
def test_ai_review_without_a_usable_verdict_rejects(messages_server, db, reply):
    messages_server.script(reply)

    result = AiReviewGate().run(gate_context())

    assert result.outcome == "failed"
    assert "no usable review, so rejected" in result.summary


def test_ai_review_rejects_when_the_api_keeps_failing_after_retries(messages_server, db):
    messages_server.script(error_reply(500), error_reply(500))

    result = AiReviewGate().run(gate_context())

    assert result.outcome == "failed" and "answered 500" in result.summary
    assert len(messages_server.requests) == 2  # ANTHROPIC_MAX_RETRIES = 1
    assert "sk-ant-test" not in result.summary


def test_ai_review_succeeds_when_a_retry_gets_through(messages_server, db):
    messages_server.script(error_reply(529), verdict(0.97))

    result = AiReviewGate().run(gate_context())

    assert result.outcome == "passed" and len(messages_server.requests) == 2


def test_ai_review_sees_only_the_task_and_the_diff(messages_server, db):
    messages_server.script(verdict(0.95))
    diff = "--- a/app.py\n+++ b/app.py\n@@ -0,0 +1 @@\n+print('hello')\n"

    AiReviewGate().run(gate_context(task="Print a greeting.", diff=diff))

    body = messages_server.requests[0]["body"]
    assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
    assert "Print a greeting." in body["messages"][0]["content"]
    assert diff in body["messages"][0]["content"]
    assert body["tool_choice"] == {"type": "tool", "name": "submit_review"}


def test_strict_with_every_gate_configured_runs_the_ai_review_before_the_push(messages_server, db):
    messages_server.script(verdict(0.92))
    overrides = {
        "coverage": "echo 'TOTAL 10 0 100%'",
        "build": "true",
        "lint": "true",
        "typecheck": "true",
        "tests": "true",
    }

    report = gates_run(
        stage="pre-push",
        profile="strict",
        context=gate_context(config_overrides=overrides, conflict_check=lambda: []),
    )

    assert report.passed, report.text
    assert [r.gate for r in report.results] == ["merge_conflicts", "coverage", "build", "ai_review"]
    review = GateRun.objects.get(gate="ai_review")
    assert review.confidence == 0.92 and review.passed


def test_strict_without_an_api_key_fails_the_ai_review_as_not_configured(db, settings):
    settings.ANTHROPIC_API_KEY = None
    overrides = {"coverage": "echo 'TOTAL 10 0 100%'", "build": "true"}

    report = gates_run(
        stage="pre-push",
        profile="strict",
        context=gate_context(config_overrides=overrides, conflict_check=lambda: []),
    )

    review = next(result for result in report.results if result.gate == "ai_review")
    assert review.outcome == "not_configured" and not report.passed


# --- external coordinator ------------------------------------------------------------------


class Coordinator:
    """A real HTTP coordinator on 127.0.0.1 answering with scripted (status, body) pairs."""

    def __init__(self, answers):
        self.answers, self.requests = list(answers), []
        coordinator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                coordinator.requests.append((self.path, body))
                status, answer = coordinator.answers.pop(0)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def coordinator(settings):
    settings.FLOTILLA_COORDINATOR_BACKOFF_S = 0.01
    servers = []

    def start(*answers):
        server = Coordinator(answers)
        settings.FLOTILLA_COORDINATOR_URL = server.url
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.server.shutdown()
        server.server.server_close()


def test_the_coordinator_gate_posts_the_change_and_follows_the_verdict(db, coordinator):
    server = coordinator(
        (
            200,
            {"approved": False, "gate": "design", "message": "wrong layer", "details": {"rule": 7}},
        )
    )

    report = gates_run(
        stage="pre-push",
        profile="minimal",
        context=gate_context(task_id="T-9", conflict_check=lambda: []),
    )

    path, body = server.requests[0]
    assert path == "/api/quality/check"
    assert body == {
        "taskId": "T-9",
        "agentId": "6f1c7c52-3c57-4a43-9d0e-4a4de6d4a0a1",
        "files": ["app.py"],
        "diffSummary": "app.py +1 -0",
    }
    result = next(result for result in report.results if result.gate == "coordinator")
    assert not report.passed and "'design' rejected: wrong layer" in result.summary


def test_the_coordinator_gate_retries_server_errors_then_accepts(db, coordinator):
    server = coordinator(
        (503, {}),
        (500, {}),
        (200, {"approved": True, "gate": "qa", "message": "ok", "details": {}}),
    )

    report = gates_run(
        stage="pre-push", profile="minimal", context=gate_context(conflict_check=lambda: [])
    )

    assert report.passed, report.text
    assert len(server.requests) == 3


def test_an_unreachable_coordinator_rejects_the_push(db, settings):
    settings.FLOTILLA_COORDINATOR_URL = "http://127.0.0.1:9"
    settings.FLOTILLA_COORDINATOR_BACKOFF_S = 0.01
    settings.FLOTILLA_COORDINATOR_RETRIES = 1

    report = gates_run(
        stage="pre-push", profile="minimal", context=gate_context(conflict_check=lambda: [])
    )

    result = next(result for result in report.results if result.gate == "coordinator")
    assert not report.passed and "cannot reach the coordinator" in result.summary
    assert "after 2 attempt(s)" in result.summary
