"""Gates on repositories as they really are: old lint errors, long suites, hostile file names.

Issue 16 ("Real repositories"): a one-line change must not be refused for the
151 lint errors a repository already had, coverage must not run the suite a
second time, and a push stops at its first failing gate. Each test builds a
real repository, prepares an agent as the worker does (worktree, bwrap
sandbox) and commits and pushes through ``agent_commit`` / ``agent_push``.
"""

from pathlib import Path

import pytest

from agents import workspace
from agents.delivery import agent_commit, agent_push
from gates.baseline import findings_new
from gates.config import gate_config_parse
from gates.errors import GateConfigError
from gates.models import GateRun
from tests.conftest import make_remote
from tests.gating import (
    gated_agent_preparer,
    result_of,
    retitled_on_both_sides,
    write,
)

CALC = "def add(a, b):\n    return a + b\n"
TEST_CALC = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
# 100 findings ruff reports by default (F841, a local assigned and never used).
LEGACY = "".join(f"def legacy_{n}():\n    unused_{n} = {n}\n\n\n" for n in range(100))
DOCSTRING = '"""Arithmetic for the sample project."""\n'


def toml(**gates: str) -> str:
    return "[gates]\n" + "".join(f"{name} = {value}\n" for name, value in gates.items())


def legacy_project(**gates: str) -> dict[str, str]:
    return {"calc.py": CALC, "legacy.py": LEGACY, ".flotilla.toml": toml(**gates)}


@pytest.fixture
def prepare(db, sandbox_toolchain, prepared_agents):
    """An agent prepared as the worker prepares one: worktree, bwrap sandbox, run context."""
    return gated_agent_preparer(
        prepared_agents,
        task_id="task-real-repositories",
        instructions="Keep the repository healthy.",
    )


# --- lint judges the change, not the whole tree --------------------------------------------


def test_the_whole_tree_lint_refuses_a_docstring_change_for_errors_the_repository_already_had(
    prepare, tmp_path
):
    """The finding as reported: ``ruff check .`` blames a one-line change for old errors."""
    context = prepare(make_remote(tmp_path, legacy_project(lint='"ruff check ."')))
    write(context, "calc.py", DOCSTRING + CALC)

    report = agent_commit(context=context, message="document calc")

    assert not report.approved
    assert "Found 100 errors" in result_of(report, "lint").output


def test_lint_of_the_changed_files_passes_a_one_line_change_in_a_repository_with_100_errors(
    prepare, tmp_path
):
    context = prepare(make_remote(tmp_path, legacy_project(lint='"ruff check {changed_files}"')))
    write(context, "calc.py", DOCSTRING + CALC)

    report = agent_commit(context=context, message="document calc")

    assert report.approved, report.text
    lint = result_of(report, "lint")
    assert lint.outcome == "passed"
    assert lint.details["command"] == "ruff check calc.py"


def test_lint_of_the_changed_files_fails_a_change_that_adds_a_lint_error(prepare, tmp_path):
    context = prepare(make_remote(tmp_path, legacy_project(lint='"ruff check {changed_files}"')))
    write(context, "calc.py", "import os\n" + CALC)

    report = agent_commit(context=context, message="import os")

    lint = result_of(report, "lint")
    assert not report.approved and lint.outcome == "failed"
    assert "calc.py:1:8" in lint.output and "F401" in lint.output
    assert "legacy.py" not in lint.output


def test_lint_passes_without_running_when_no_changed_file_matches_its_globs(prepare, tmp_path):
    # A command that would fail if it ran at all.
    context = prepare(make_remote(tmp_path, legacy_project(lint='"false {changed_files}"')))
    write(context, "README.md", "# sample\n")

    report = agent_commit(context=context, message="readme")

    assert report.approved, report.text
    lint = result_of(report, "lint")
    assert lint.outcome == "passed"
    assert "no changed files to check" in lint.summary
    assert lint.details["changed_files"] == []


def test_changed_files_name_added_and_modified_files_but_not_deleted_ones(prepare, tmp_path):
    lint = "\"printf '[%s]\\\\n' {changed_files}; exit 3\""
    moved = "MOVED = 'a module that moves without a change'\n"
    files = {**legacy_project(lint=lint), "old.py": "", "moved.py": moved}
    context = prepare(make_remote(tmp_path, files))
    write(context, "calc.py", DOCSTRING + CALC)
    write(context, "pkg/new.py", "VALUE = 1\n")
    write(context, "notes.txt", "not python\n")
    (context.worktree / "old.py").unlink()
    (context.worktree / "moved.py").rename(context.worktree / "pkg-moved.py")

    report = agent_commit(context=context, message="add, change, delete")

    lint = result_of(report, "lint")
    named = [line for line in lint.output.splitlines() if line.startswith("[")]
    # A renamed file is named under its new name: its findings are new there.
    assert sorted(named) == ["[calc.py]", "[pkg-moved.py]", "[pkg/new.py]"]


def test_changed_file_globs_of_the_repository_replace_the_default(prepare, tmp_path):
    lint = "{ command = \"printf '[%s]\\\\n' {changed_files}; exit 3\", "
    lint += 'changed_files_globs = ["*.txt", "docs/*"] }'
    context = prepare(make_remote(tmp_path, legacy_project(lint=lint)))
    write(context, "calc.py", DOCSTRING + CALC)
    write(context, "notes.txt", "notes\n")
    write(context, "docs/guide.md", "# guide\n")

    report = agent_commit(context=context, message="notes")

    output = result_of(report, "lint").output
    assert sorted(line for line in output.splitlines() if line.startswith("[")) == [
        "[docs/guide.md]",
        "[notes.txt]",
    ]


HOSTILE_NAMES = [
    "$(touch pwned-dollar).py",
    "`touch pwned-backtick`.py",
    "semi;touch pwned-semicolon;.py",
    "it's quoted.py",
    'say "hi".py',
    "a b\tc.py",
    "-rf.py",
    "new\nline.py",
    "glob*?.py",
    "ünïcode.py",
]


def test_hostile_file_names_reach_the_command_as_single_arguments_and_run_nothing(
    prepare, tmp_path
):
    # A null-separated listing shows exactly which arguments the command got.
    lint = "\"printf '%s\\\\000' {changed_files} > /tmp/args; od -An -c /tmp/args; exit 3\""
    context = prepare(make_remote(tmp_path, legacy_project(lint=lint)))
    for name in HOSTILE_NAMES:
        write(context, name, "VALUE = 1\n")

    report = agent_commit(context=context, message="hostile names")

    lint_result = result_of(report, "lint")
    assert lint_result.outcome == "failed"  # the command ran (and exited 3)
    received = lint_result.details["changed_files"]
    assert sorted(received) == sorted(HOSTILE_NAMES)
    for marker in ("pwned-dollar", "pwned-backtick", "pwned-semicolon"):
        assert not list(context.worktree.glob(f"{marker}*")), marker
    # Printed by the command itself: one NUL-terminated argument per file, the
    # dash-led name behind "./" so no tool reads it as an option.
    printed = "".join(lint_result.output.split())
    assert printed.count("\\0") == len(HOSTILE_NAMES)
    assert "./-rf.py" in printed


def test_a_change_too_long_for_one_command_line_runs_the_command_in_batches(prepare, tmp_path):
    # About 160 000 characters of names: more than Linux takes in one argument.
    names = [f"module_{n:04d}_{'x' * 90}.py" for n in range(1600)]
    lint = "\"echo batch >> /workspace/.batches; printf '%s\\\\n' {changed_files} | wc -l\""
    files = {**legacy_project(lint=lint), ".gitignore": ".batches\n"}
    context = prepare(make_remote(tmp_path, files))
    for name in names:
        write(context, name, "")

    report = agent_commit(context=context, message="many files")

    assert report.approved, report.text
    batches = (context.worktree / ".batches").read_text().split()
    assert len(batches) >= 2
    counted = [int(line) for line in result_of(report, "lint").output.split()]
    assert sum(counted) == len(names)


# --- baseline: only findings new relative to the base fail --------------------------------

# One line per finding and nothing else (no summary lines): what a baseline compares best.
BASELINE_LINT = '{ command = "ruff check --output-format=concise --quiet .", baseline = true }'


def test_baseline_lint_passes_a_change_that_moves_every_old_error_down_a_line(prepare, tmp_path):
    context = prepare(make_remote(tmp_path, legacy_project(lint=BASELINE_LINT)))
    write(context, "legacy.py", DOCSTRING + LEGACY)

    report = agent_commit(context=context, message="document legacy")

    assert report.approved, report.text
    lint = result_of(report, "lint")
    assert lint.outcome == "passed"
    assert lint.details["baseline"]["new_findings"] == 0
    assert lint.details["baseline"]["known_findings"] >= 100
    assert "nothing new" in lint.summary


def test_baseline_lint_fails_a_change_that_adds_one_error_and_shows_only_that_one(
    prepare, tmp_path
):
    context = prepare(make_remote(tmp_path, legacy_project(lint=BASELINE_LINT)))
    added = "def added():\n    unused_added = 1\n\n\n"
    write(context, "legacy.py", DOCSTRING + added + LEGACY)

    report = agent_commit(context=context, message="one more unused variable")

    lint = result_of(report, "lint")
    assert not report.approved and lint.outcome == "failed"
    assert lint.details["baseline"]["new_findings"] == 1
    assert "1 new finding" in lint.summary
    assert lint.output.splitlines() == [
        "legacy.py:3:5: F841 Local variable `unused_added` is assigned to but never used"
    ]


def test_baseline_and_changed_files_together_judge_only_new_errors_in_changed_files(
    prepare, tmp_path
):
    lint = '{ command = "ruff check --output-format=concise --quiet {changed_files}", '
    lint += "baseline = true }"
    context = prepare(make_remote(tmp_path, legacy_project(lint=lint)))
    write(context, "legacy.py", DOCSTRING + LEGACY)
    write(context, "fresh.py", "VALUE = 1\n")

    first = agent_commit(context=context, message="document legacy")

    assert first.approved, first.text
    # The next commit is measured against the first: legacy.py keeps its 100
    # old errors and gains one, fresh.py (now on the base) gains one.
    write(context, "legacy.py", DOCSTRING + LEGACY + "def later():\n    unused_later = 1\n")
    write(context, "fresh.py", "import os\n")
    write(context, "brand_new.py", "import sys\n")

    second = agent_commit(context=context, message="three new errors")

    lint_result = result_of(second, "lint")
    assert lint_result.outcome == "failed"
    assert lint_result.details["baseline"]["new_findings"] == 3
    for new in ("unused_later", "fresh.py:1:8", "brand_new.py:1:8"):
        assert new in lint_result.output


def test_the_base_checkout_is_gone_after_the_gates(prepare, tmp_path, settings):
    remote = make_remote(tmp_path, legacy_project(lint=BASELINE_LINT))
    context = prepare(remote)
    write(context, "legacy.py", DOCSTRING + LEGACY)

    assert agent_commit(context=context, message="document legacy").approved

    baselines = Path(settings.DATA_DIR) / "baselines"
    assert not baselines.exists() or not any(baselines.iterdir())
    assert workspace.worktree_list(str(remote)) == [context.worktree]


def test_a_baseline_never_excuses_a_command_that_cannot_run(prepare, tmp_path):
    lint = '{ command = "no-such-linter .", baseline = true }'
    context = prepare(make_remote(tmp_path, legacy_project(lint=lint)))
    write(context, "calc.py", DOCSTRING + CALC)

    report = agent_commit(context=context, message="document calc")

    lint_result = result_of(report, "lint")
    assert lint_result.outcome == "failed" and "exited with status 127" in lint_result.summary
    assert "baseline" not in lint_result.details


def test_baseline_tests_fail_only_on_tests_the_change_breaks(prepare, tmp_path):
    broken = "\n\ndef test_known_broken():\n    assert add(1, 1) == 3\n"
    tests = '{ command = "python -m pytest -q", baseline = true }'
    files = {
        "calc.py": CALC,
        "test_calc.py": TEST_CALC + broken,
        ".flotilla.toml": toml(tests=tests),
    }
    context = prepare(make_remote(tmp_path, files))
    new_test = "\n\ndef test_new():\n    assert add(0, 0) == 0\n"
    write(context, "test_calc.py", TEST_CALC + broken + new_test)

    first = agent_commit(context=context, message="a new passing test")

    assert first.approved, first.text
    write(context, "calc.py", CALC.replace("a + b", "a + b + 1"))

    second = agent_commit(context=context, message="off by one")

    result = result_of(second, "tests")
    assert result.outcome == "failed"
    assert "test_calc.py::test_add" in result.summary
    assert "test_calc.py::test_new" in result.summary
    assert "test_known_broken" not in result.summary


# --- coverage judges the tests gate's run ---------------------------------------------------

# The suite counts its own runs in the worktree (ignored, so never committed).
COUNTING_CONFTEST = (
    "def pytest_sessionstart(session):\n"
    "    with open('/workspace/.suite-runs', 'a') as runs:\n"
    "        runs.write('run\\n')\n"
)
COVERAGE_CONFIG = toml(
    tests='"python -m pytest -q"',
    coverage='{ command = "python -m pytest -q --cov=calc --cov-report=term", threshold = 85 }',
)
COUNTED_PROJECT = {
    "calc.py": CALC,
    "test_calc.py": TEST_CALC,
    "conftest.py": COUNTING_CONFTEST,
    ".gitignore": ".suite-runs\n",
    ".flotilla.toml": COVERAGE_CONFIG,
}
DOUBLE = "\n\ndef double(a):\n    return add(a, a)\n"
TEST_DOUBLE = "\n\ndef test_double():\n    from calc import double\n\n    assert double(2) == 4\n"


def suite_runs(context) -> int:
    runs = context.worktree / ".suite-runs"
    return len(runs.read_text().split()) if runs.exists() else 0


def test_tests_and_coverage_run_the_suite_once_for_a_commit_and_its_push(prepare, tmp_path):
    context = prepare(make_remote(tmp_path, COUNTED_PROJECT))
    write(context, "calc.py", CALC + DOUBLE)
    write(context, "test_calc.py", TEST_CALC + TEST_DOUBLE)

    committed = agent_commit(context=context, message="add double")
    pushed = agent_push(context=context, summary="added double")

    assert committed.approved and pushed.approved, pushed.text
    assert suite_runs(context) == 1
    coverage = result_of(pushed, "coverage")
    assert coverage.outcome == "passed" and coverage.details["percent"] == 100
    assert coverage.details["measured_by"] == "tests"
    assert "measured by the tests gate" in coverage.summary


def test_coverage_from_the_tests_run_still_blocks_a_push_below_the_threshold(prepare, tmp_path):
    untested = "".join(f"\n\ndef f{n}(a):\n    return a * {n}\n" for n in range(10))
    context = prepare(make_remote(tmp_path, COUNTED_PROJECT))
    write(context, "calc.py", CALC + untested)

    assert agent_commit(context=context, message="untested code").approved
    pushed = agent_push(context=context, summary="untested")

    assert not pushed.approved
    coverage = result_of(pushed, "coverage")
    assert coverage.outcome == "failed" and "below the threshold of 85%" in coverage.summary
    assert suite_runs(context) == 1


def test_a_coverage_fail_under_option_does_not_fail_the_tests_gate_at_commit(prepare, tmp_path):
    config = toml(
        tests='"python -m pytest -q"',
        coverage='{ command = "python -m pytest -q --cov=calc --cov-fail-under=85", '
        "threshold = 85 }",
    )
    untested = "".join(f"\n\ndef f{n}(a):\n    return a * {n}\n" for n in range(10))
    context = prepare(make_remote(tmp_path, {**COUNTED_PROJECT, ".flotilla.toml": config}))
    write(context, "calc.py", CALC + untested)

    committed = agent_commit(context=context, message="untested code")
    pushed = agent_push(context=context, summary="untested")

    assert committed.approved, committed.text
    assert not pushed.approved and result_of(pushed, "coverage").outcome == "failed"
    assert suite_runs(context) == 1


def test_a_failing_test_is_not_taken_for_a_coverage_shortfall_when_its_name_is_hidden(
    prepare, tmp_path
):
    # "-rN" drops pytest's short summary, so no FAILED line names the test.
    config = toml(
        tests='"python -m pytest -q -rN"',
        coverage='{ command = "python -m pytest -q -rN --cov=calc --cov-fail-under=85", '
        "threshold = 85 }",
    )
    untested = "".join(f"\n\ndef f{n}(a):\n    return a * {n}\n" for n in range(10))
    context = prepare(make_remote(tmp_path, {**COUNTED_PROJECT, ".flotilla.toml": config}))
    write(context, "calc.py", CALC.replace("a + b", "a - b") + untested)

    committed = agent_commit(context=context, message="broken and untested")

    assert not committed.approved
    assert result_of(committed, "tests").outcome == "failed"


def test_a_coverage_command_that_is_not_the_tests_command_runs_on_its_own():
    config = gate_config_parse(
        text=toml(tests='"python -m pytest -q"', coverage='"make coverage"'), overrides=None
    )
    assert not config.tests_run_under_coverage
    shared = gate_config_parse(
        text=toml(tests='"make test"', coverage='{ command = "make coverage", runs_tests = true }'),
        overrides=None,
    )
    assert shared.tests_run_under_coverage
    prefixed = gate_config_parse(text=COVERAGE_CONFIG, overrides=None)
    assert prefixed.tests_run_under_coverage


# --- pre-push stops at the first failing gate ----------------------------------------------


def test_a_merge_conflict_stops_the_push_before_coverage_and_build_run(prepare, tmp_path):
    config = toml(
        coverage='{ command = "python -m pytest -q --cov=calc --cov-report=term", threshold = 85 }',
        build='"touch /workspace/.built"',
    )
    files = {**COUNTED_PROJECT, ".gitignore": ".suite-runs\n.built\n", ".flotilla.toml": config}
    remote = make_remote(tmp_path, {**files, "README.md": "# sample\n"})
    context = prepare(remote)
    retitled_on_both_sides(context, remote, tmp_path)

    report = agent_push(context=context, summary="retitled")

    assert not report.approved
    assert [r.gate for r in report.gates.failures] == ["merge_conflicts"]
    assert suite_runs(context) == 0 and not (context.worktree / ".built").exists()
    for gate in ("coverage", "build"):
        result = result_of(report, gate)
        assert result.outcome == "skipped" and not result.passed
        assert result.summary == "not run: merge_conflicts failed first"
    stored = GateRun.objects.filter(agent_id=context.agent.id, stage="pre-push")
    assert {run.gate: run.passed for run in stored} == {
        "merge_conflicts": False,
        "coverage": False,
        "build": False,
    }
    assert "[SKIP] coverage: not run: merge_conflicts failed first" in report.text


def test_changed_files_before_a_push_are_those_the_branch_changes(prepare, tmp_path):
    build = "\"printf '[%s]\\\\n' {changed_files}; exit 3\""
    context = prepare(make_remote(tmp_path, legacy_project(build=build)))
    write(context, "calc.py", DOCSTRING + CALC)
    assert agent_commit(context=context, message="document calc").approved
    write(context, "notes.txt", "notes\n")
    assert agent_commit(context=context, message="notes").approved

    report = agent_push(context=context, summary="documented")

    output = result_of(report, "build").output
    assert sorted(line for line in output.splitlines() if line.startswith("[")) == [
        "[calc.py]",
        "[notes.txt]",
    ]


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gates", "message"),
    [
        ('lint = { command = "ruff check .", baseline = "yes" }', "baseline must be true or false"),
        ('lint = { command = "ruff check .", changed_files_globs = "*.py" }', "list of globs"),
        ('lint = { command = "ruff check .", changed_files_globs = [] }', "list of globs"),
        ('lint = { command = "ruff check .", fast = true }', "unknown keys"),
        ('coverage = { command = "pytest --cov", baseline = true }', "unknown keys"),
        ('tests = { command = "pytest", runs_tests = true }', "unknown keys"),
    ],
)
def test_malformed_gate_options_are_refused_with_the_reason(gates, message):
    with pytest.raises(GateConfigError, match=message):
        gate_config_parse(text=f"[gates]\n{gates}\n", overrides=None)


def test_findings_are_compared_without_line_numbers_and_counted():
    base = [
        "legacy.py:12:5: F841 Local variable `unused_1` is assigned to but never used",
        "legacy.py:40:5: F841 Local variable `unused_1` is assigned to but never used",
        "Found 151 errors.",
    ]
    change = [
        "legacy.py:13:5: F841 Local variable `unused_1` is assigned to but never used",
        "legacy.py:41:5: F841 Local variable `unused_1` is assigned to but never used",
        "legacy.py:90:5: F841 Local variable `unused_1` is assigned to but never used",
        "legacy.py:91:5: F841 Local variable `unused_2` is assigned to but never used",
        "",
        "Found 150 errors.",
    ]

    assert findings_new(change, base) == [change[2], change[3]]
