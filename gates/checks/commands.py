"""Gates that run one of the repository's own commands in the agent's sandbox.

A command may name ``{changed_files}`` (gates.commandline), and a gate with
``baseline = true`` fails only on findings the base commit did not already
have (gates.baseline).
"""

import re
from dataclasses import replace
from typing import Any

from gates.base import Gate, GateContext, GateResult, gate_failed, gate_passed
from gates.baseline import findings_count, findings_new
from gates.checks.coverage import coverage_percent
from gates.commandline import (
    CommandPlan,
    CommandRun,
    base_run,
    command_run,
    gate_plan,
    no_changed_files,
    plan_details,
)
from gates.config import PROFILES

# pytest's short summary ("-r fE", on by default) names each failing test.
_FAILING_TEST = re.compile(r"^(?:FAILED|ERROR) (\S+)")
# pytest-cov's --cov-fail-under: the tests passed, the total is for the coverage gate.
_COVERAGE_FAIL_UNDER = re.compile(r"^FAIL Required test coverage of \S+ not reached", re.MULTILINE)
# pytest's closing line counts failures and errors even when "-rN" hides their names.
_PYTEST_FAILURES = re.compile(r"\b\d+ (?:failed|errors?)\b")
# The shell's "cannot execute" and "not found": the command never ran at all.
_DID_NOT_RUN = (126, 127)
_SHOWN_FINDINGS = 50


class CommandGate(Gate):
    """Passes when the configured command exits 0 within the gate timeout."""

    def __init__(self, name: str) -> None:
        self.name = name

    def is_configured(self, context: GateContext) -> bool:
        return self.name in context.config.commands

    def command_source(self, context: GateContext) -> str:
        """The gate whose command (and file globs) this gate runs."""
        return self.name

    def run(self, context: GateContext) -> GateResult:
        source = self.command_source(context)
        plan = gate_plan(context, source)
        details = plan_details(plan)
        if not plan.commands:
            return no_changed_files(self.name, context, source, details)
        run = command_run(context.run_command, plan, context.config.timeout_s)
        details.update(command=run.command, exit_code=run.exit_code)
        verdict = self.judge(context, run, details)
        if verdict.blocking and self.name in context.config.baseline:
            verdict = self.judge_against_base(context, plan, run, details) or verdict
        self.conclude(context, run, verdict)
        return verdict

    def conclude(self, context: GateContext, run: CommandRun, verdict: GateResult) -> None:
        """Called with the final verdict; what a gate keeps of its run goes in its details."""

    def judge(self, context: GateContext, run: CommandRun, details: dict[str, Any]) -> GateResult:
        extra = {"output": run.output_tail, "duration_s": run.duration_s, "details": details}
        if run.timed_out:
            timeout_s = context.config.timeout_s
            return gate_failed(
                self.name, f"`{run.command}` timed out after {timeout_s:g} s", **extra
            )
        if run.exit_code != 0:
            return gate_failed(self.name, self.failure_summary(run, details), **extra)
        return gate_passed(self.name, f"`{run.command}` exited 0", **extra)

    def failure_summary(self, run: CommandRun, details: dict[str, Any]) -> str:
        return f"`{run.command}` exited with status {run.exit_code}"

    def findings(self, lines: list[str]) -> list[str]:
        """What the baseline comparison counts in an output: every line."""
        return lines

    def judge_against_base(
        self, context: GateContext, plan: CommandPlan, run: CommandRun, details: dict[str, Any]
    ) -> GateResult | None:
        """The verdict once the base's findings are set aside; None keeps the plain failure."""
        if run.timed_out or run.exit_code in _DID_NOT_RUN:
            return None
        extra = {"output": run.output_tail, "duration_s": run.duration_s, "details": details}
        problem = _incomparable(run, context)
        base = None if problem else base_run(context, plan, self.command_source(context))
        problem = problem or _incomparable_base(base)
        if problem:
            return gate_failed(
                self.name,
                f"`{run.command}` exited with status {run.exit_code}, and it could not be "
                f"compared with the base: {problem}",
                **extra,
            )
        return self.compare(run, base, details, extra)

    def compare(
        self,
        run: CommandRun,
        base: CommandRun | None,
        details: dict[str, Any],
        extra: dict[str, Any],
    ) -> GateResult:
        """Fail on what the change reports and the base did not (``base`` None: nothing)."""
        base_lines, base_exit = (base.output, base.exit_code) if base else ([], 0)
        theirs = self.findings(base_lines)
        new, known = findings_new(self.findings(run.output), theirs), findings_count(theirs)
        details["baseline"] = {
            "command": base.command if base else "",
            "exit_code": base_exit,
            "new_findings": len(new),
            "known_findings": known,
            "new": new[:_SHOWN_FINDINGS],
        }
        if not new and base_exit == run.exit_code:
            return gate_passed(
                self.name,
                f"`{run.command}` exited {run.exit_code} as it does on the base, and reported "
                f"nothing new ({known} finding(s) there already)",
                **extra,
            )
        if not new:
            return gate_failed(
                self.name,
                f"`{run.command}` exited with status {run.exit_code} where the base exited "
                f"{base_exit}, though it printed nothing new",
                **extra,
            )
        extra["output"] = self.new_findings_output(run, new)
        return gate_failed(self.name, self.new_findings_summary(run, new, known), **extra)

    def new_findings_output(self, run: CommandRun, new: list[str]) -> str:
        """What the agent reads: the new findings alone, not the old ones around them."""
        shown = new[:_SHOWN_FINDINGS]
        more = [f"... and {len(new) - len(shown)} more"] if len(new) > len(shown) else []
        return "\n".join(shown + more)

    def new_findings_summary(self, run: CommandRun, new: list[str], known: int) -> str:
        return (
            f"{len(new)} new finding(s) relative to the base (`{run.command}` exited "
            f"{run.exit_code}; {known} finding(s) were there already)"
        )


class TestsGate(CommandGate):
    """The test command; it runs the coverage command instead when that one runs every test.

    Then the coverage gate judges this very run before the push
    (``GateConfig.tests_run_under_coverage``), and the suite runs once.
    """

    def __init__(self) -> None:
        super().__init__("tests")

    def command_source(self, context: GateContext) -> str:
        wanted = PROFILES.get(context.profile, {"coverage": None})
        if context.config.tests_run_under_coverage and "coverage" in wanted:
            return "coverage"
        return "tests"

    def judge(self, context: GateContext, run: CommandRun, details: dict[str, Any]) -> GateResult:
        verdict = super().judge(context, run, details)
        if self.command_source(context) != "coverage":
            return verdict
        if verdict.passed:
            note = " (the coverage command, whose run the coverage gate judges before the push)"
            return replace(verdict, summary=verdict.summary + note)
        output = "\n".join(run.output)
        only_below_fail_under = (
            run.exit_code == 1
            and not details.get("failing_tests")
            and not _PYTEST_FAILURES.search(output)
            and _COVERAGE_FAIL_UNDER.search(output)
        )
        if only_below_fail_under:
            verdict = gate_passed(
                self.name,
                f"`{run.command}` ran every test and none failed; its coverage total is "
                "below --cov-fail-under, which the coverage gate judges before the push",
                output=run.output_tail,
                duration_s=run.duration_s,
                details=details,
            )
        return verdict

    def conclude(self, context: GateContext, run: CommandRun, verdict: GateResult) -> None:
        """Keep the coverage total of a passing run: the coverage gate judges it before the push."""
        if verdict.passed and self.command_source(context) == "coverage":
            verdict.details["coverage"] = {
                "template": context.config.commands["coverage"],
                "command": run.command,
                "exit_code": run.exit_code,
                "percent": coverage_percent("\n".join(run.output)),
                "tree": context.tree_id() if context.tree_id else None,
            }

    def failure_summary(self, run: CommandRun, details: dict[str, Any]) -> str:
        failing = failing_tests(run.output)
        details["failing_tests"] = failing
        if failing:
            more = f" and {len(failing) - 3} more" if len(failing) > 3 else ""
            return (
                f"failing: {', '.join(failing[:3])}{more} (`{run.command}` exited {run.exit_code})"
            )
        return f"`{run.command}` exited with status {run.exit_code}"

    def findings(self, lines: list[str]) -> list[str]:
        """The failing tests pytest names, or every line when it names none."""
        return failing_tests(lines) or lines

    def new_findings_summary(self, run: CommandRun, new: list[str], known: int) -> str:
        more = f" and {len(new) - 3} more" if len(new) > 3 else ""
        return (
            f"failing: {', '.join(new[:3])}{more}, new relative to the base "
            f"(`{run.command}` exited {run.exit_code}; {known} already failing there)"
        )

    def new_findings_output(self, run: CommandRun, new: list[str]) -> str:
        """The new failures, then the run's tail, where their tracebacks end."""
        return super().new_findings_output(run, new) + "\n\n" + run.output_tail


def _incomparable(run: CommandRun, context: GateContext) -> str:
    if run.output_lines is None:
        return "its output was longer than the hub keeps"
    if context.run_base_command is None:
        return "this hub gave the gate no way to run it on the base"
    return ""


def _incomparable_base(base: CommandRun | None) -> str:
    if base is not None and base.timed_out:
        return "on the base it timed out"
    if base is not None and base.output_lines is None:
        return "on the base its output was longer than the hub keeps"
    return ""


def failing_tests(lines: list[str]) -> list[str]:
    return [match.group(1) for line in lines if (match := _FAILING_TEST.match(line))]


def lint_gate() -> CommandGate:
    return CommandGate("lint")


def typecheck_gate() -> CommandGate:
    return CommandGate("typecheck")


def build_gate() -> CommandGate:
    return CommandGate("build")
