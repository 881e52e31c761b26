"""Before a push: the work branch must merge cleanly into its target branch."""

import time

from gates.base import Gate, GateContext, GateResult, gate_failed, gate_passed


class MergeConflictGate(Gate):
    name = "merge_conflicts"

    def is_configured(self, context: GateContext) -> bool:
        return context.conflict_check is not None

    def run(self, context: GateContext) -> GateResult:
        assert context.conflict_check is not None
        started = time.monotonic()
        files = context.conflict_check()
        elapsed = time.monotonic() - started
        target = context.target or "the target branch"
        if files:
            return gate_failed(
                self.name,
                f"conflicts with {target} in: {', '.join(files)}",
                details={"files": files},
                duration_s=elapsed,
            )
        return gate_passed(self.name, f"merges cleanly into {target}", duration_s=elapsed)
