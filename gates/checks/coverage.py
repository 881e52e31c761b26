"""Coverage: the configured command must pass and report a total at or above the threshold.

When the tests gate ran the coverage command on this very tree before the
commit (``GateConfig.tests_run_under_coverage``), the gate judges that run's
total instead of running the suite a second time.
"""

import re
from typing import Any

from gates.base import Gate, GateContext, GateResult, gate_failed, gate_passed
from gates.commandline import command_run, gate_plan, no_changed_files, plan_details
from gates.selectors import tests_coverage_run_get

# coverage.py's report ends with "TOTAL  <stmts> <miss> ... <pct>%"; pytest-cov's
# --cov-fail-under adds "Total coverage: 61.54%". Either names the total.
_TOTAL = re.compile(r"^TOTAL\s.*?(\d+(?:\.\d+)?)%\s*$", re.MULTILINE)
_TOTAL_PYTEST_COV = re.compile(r"Total coverage: (\d+(?:\.\d+)?)%")


def coverage_percent(output: str) -> float | None:
    found = _TOTAL.findall(output) or _TOTAL_PYTEST_COV.findall(output)
    return float(found[-1]) if found else None


class CoverageGate(Gate):
    name = "coverage"

    def is_configured(self, context: GateContext) -> bool:
        return "coverage" in context.config.commands

    def run(self, context: GateContext) -> GateResult:
        measured = self.measured_by_tests(context)
        if measured is not None:
            return measured
        plan = gate_plan(context, self.name)
        details = plan_details(plan)
        if not plan.commands:
            return no_changed_files(self.name, context, self.name, details)
        run = command_run(context.run_command, plan, context.config.timeout_s)
        details.update(command=run.command, exit_code=run.exit_code)
        return self.judge(
            context,
            command=run.command,
            exit_code=run.exit_code,
            timed_out=run.timed_out,
            percent=coverage_percent("\n".join(run.output)),
            details=details,
            extra={"output": run.output_tail, "duration_s": run.duration_s},
        )

    def measured_by_tests(self, context: GateContext) -> GateResult | None:
        """The verdict on the tests gate's run of this tree, if that run measured coverage."""
        if not context.config.tests_run_under_coverage or context.tree_id is None:
            return None
        tests_run = tests_coverage_run_get(agent_id=context.agent_id, tree=context.tree_id())
        if tests_run is None:
            return None
        measured = tests_run.details["coverage"]
        if measured.get("template") != context.config.commands["coverage"]:
            return None  # measured with another coverage command than this one
        details = {
            "command": measured["command"],
            "exit_code": measured["exit_code"],
            "measured_by": "tests",
            "tree": measured["tree"],
        }
        return self.judge(
            context,
            command=measured["command"],
            exit_code=measured["exit_code"],
            timed_out=False,
            percent=measured["percent"],
            details=details,
            extra={"output": tests_run.output_tail},
            source=" (measured by the tests gate's run of this tree before the commit)",
        )

    def judge(
        self,
        context: GateContext,
        *,
        command: str,
        exit_code: int | None,
        timed_out: bool,
        percent: float | None,
        details: dict[str, Any],
        extra: dict[str, Any],
        source: str = "",
    ) -> GateResult:
        threshold = context.config.coverage_threshold
        details.update(percent=percent, threshold=threshold)
        extra = {**extra, "details": details}
        if timed_out:
            return gate_failed(self.name, f"`{command}` timed out", **extra)
        if percent is None:
            return gate_failed(
                self.name,
                f"no coverage total in the output of `{command}` (exit status {exit_code})"
                + source,
                **extra,
            )
        if percent < threshold:
            return gate_failed(
                self.name,
                f"coverage {percent:g}% is below the threshold of {threshold:g}%{source}",
                **extra,
            )
        if exit_code != 0:
            return gate_failed(
                self.name, f"`{command}` exited with status {exit_code}{source}", **extra
            )
        return gate_passed(
            self.name, f"coverage {percent:g}% (threshold {threshold:g}%){source}", **extra
        )
