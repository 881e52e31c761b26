"""Gates that run one of the repository's own commands in the agent's sandbox."""

import re

from gates.base import Gate, GateContext, GateResult, gate_failed, gate_passed

# pytest's short summary ("-r fE", on by default) names each failing test.
_FAILING_TEST = re.compile(r"^(?:FAILED|ERROR) (\S+)")


class CommandGate(Gate):
    """Passes when the configured command exits 0 within the gate timeout."""

    def __init__(self, name: str) -> None:
        self.name = name

    def is_configured(self, context: GateContext) -> bool:
        return self.name in context.config.commands

    def run(self, context: GateContext) -> GateResult:
        command = context.config.commands[self.name]
        timeout_s = context.config.timeout_s
        result = context.run_command(command, timeout_s)
        details = {"command": command, "exit_code": result.exit_code}
        extra = {"output": result.output_tail, "duration_s": result.duration_s, "details": details}
        if result.timed_out:
            return gate_failed(self.name, f"`{command}` timed out after {timeout_s:g} s", **extra)
        if result.exit_code != 0:
            return gate_failed(
                self.name,
                self.failure_summary(command, result.exit_code, result.output_tail, details),
                **extra,
            )
        return gate_passed(self.name, f"`{command}` exited 0", **extra)

    def failure_summary(
        self, command: str, exit_code: int | None, output: str, details: dict
    ) -> str:
        return f"`{command}` exited with status {exit_code}"


class TestsGate(CommandGate):
    def __init__(self) -> None:
        super().__init__("tests")

    def failure_summary(
        self, command: str, exit_code: int | None, output: str, details: dict
    ) -> str:
        failing = [m.group(1) for line in output.splitlines() if (m := _FAILING_TEST.match(line))]
        details["failing_tests"] = failing
        if failing:
            more = f" and {len(failing) - 3} more" if len(failing) > 3 else ""
            return f"failing: {', '.join(failing[:3])}{more} (`{command}` exited {exit_code})"
        return f"`{command}` exited with status {exit_code}"


def lint_gate() -> CommandGate:
    return CommandGate("lint")


def typecheck_gate() -> CommandGate:
    return CommandGate("typecheck")


def build_gate() -> CommandGate:
    return CommandGate("build")
