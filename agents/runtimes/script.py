"""The script runtime: one shell command in the sandbox, bounded by the task's timeout."""

from agents.runtimes.base import AgentRuntime, RunContext, RunOutcome

_OOM_STATUS = 137


class ScriptRuntime(AgentRuntime):
    name = "script"

    def run(self, context: RunContext) -> RunOutcome:
        timeout_s = context.agent.timeout_s
        result = context.sandbox.exec(
            context.handle, context.agent.script, timeout_s=timeout_s, on_output=context.output
        )
        details = {
            "exit_code": result.exit_code,
            "output_tail": result.output_tail,
            "duration_s": round(result.duration_s, 3),
        }
        if result.timed_out:
            return RunOutcome(False, error=f"timed out after {timeout_s} s", result=details)
        if result.exit_code != 0:
            reason = f"script exited with status {result.exit_code}"
            if result.exit_code == _OOM_STATUS:
                reason += " (killed: out of memory or by signal 9)"
            return RunOutcome(False, error=reason, result=details)
        return RunOutcome(True, summary="script exited with status 0", result=details)
