"""Coverage: the configured command must pass and report a total at or above the threshold."""

import re

from gates.base import Gate, GateContext, GateResult, gate_failed, gate_passed

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
        command = context.config.commands["coverage"]
        threshold = context.config.coverage_threshold
        result = context.run_command(command, context.config.timeout_s)
        percent = coverage_percent(result.output_tail)
        details = {
            "command": command,
            "exit_code": result.exit_code,
            "percent": percent,
            "threshold": threshold,
        }
        extra = {"output": result.output_tail, "duration_s": result.duration_s, "details": details}
        if result.timed_out:
            return gate_failed(self.name, f"`{command}` timed out", **extra)
        if percent is None:
            return gate_failed(
                self.name,
                f"no coverage total in the output of `{command}` (exit status {result.exit_code})",
                **extra,
            )
        if percent < threshold:
            return gate_failed(
                self.name,
                f"coverage {percent:g}% is below the threshold of {threshold:g}%",
                **extra,
            )
        if result.exit_code != 0:
            return gate_failed(
                self.name, f"`{command}` exited with status {result.exit_code}", **extra
            )
        return gate_passed(self.name, f"coverage {percent:g}% (threshold {threshold:g}%)", **extra)
