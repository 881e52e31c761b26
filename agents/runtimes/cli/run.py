"""The loop of a CLI agent: prompt, run the CLI, gate; a rejection goes back to the same session.

Round one runs the CLI on the task. When it exits 0 the hub commits through
the pre-commit gates and pushes through the pre-push gates and the conflict
check, as for every runtime. A rejection goes back to the CLI's own session
(its resume option) as the next prompt, up to ``options.gate_retries`` more
rounds; the agent then fails with the last report. When the gateway refuses
a model call for budget, the CLI is stopped and the run ends ``paused`` with
its session id in the agent's result, so a resume continues that session.
"""

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connection

from agents import workspace
from agents.delivery import DeliveryReport, agent_commit, agent_push
from agents.gateway.service import gateway_budget_exhausted
from agents.lifecycle import agent_transition
from agents.limits import agent_limits
from agents.models import AgentEventKind, AgentState, AgentType
from agents.runtimes.base import RunContext, RunOutcome
from agents.runtimes.claude.accounting import agent_budget_usd
from agents.runtimes.cli import prompts
from agents.runtimes.cli.base import CliRuntime
from agents.runtimes.cli.framing import FramedLines, framed_command
from agents.runtimes.cli.home import cli_home_write
from agents.runtimes.cli.install import cli_binary
from agents.runtimes.cli.rounds import CliRound, TranscriptBound, clipped, redacted

DEFAULT_GATE_RETRIES = 2
PROMPT_FILE = ".flotilla-prompt"
_BUDGET_POLL_S = 0.05
# How long a CLI refused for budget may take to end by itself. A CLI killed
# mid-write can lose the last turns of its session file, which the resume needs.
BUDGET_GRACE_S = 10.0
_STDERR_TAIL_LINES = 20
_STOPPED = RunOutcome(False, error="stopped: the agent left the running state")


class _Stopped(Exception):
    """The agent left the state this run expects (killed, timed out by the watch)."""


class CliRun:
    def __init__(self, runtime: CliRuntime, context: RunContext) -> None:
        self.runtime = runtime
        self.context = context
        self.agent = context.agent
        self.model = runtime.model(self.agent)
        self.deadline = time.monotonic() + self.agent.timeout_s
        self.rounds_allowed = int(
            (self.agent.options or {}).get("gate_retries", DEFAULT_GATE_RETRIES)
        )
        saved = (self.agent.result or {}).get("cli") or {}
        # A paused agent continues its session; a retried attempt starts over.
        resumed = saved.get("attempt") == self.agent.attempt and saved.get("session_id")
        self.session_id = saved["session_id"] if resumed else ""
        self.gate_rounds = int(saved.get("gate_rounds") or 0) if resumed else 0
        self.summary = ""
        self.transcript = TranscriptBound(
            store=context.emit, max_bytes=agent_limits(self.agent).output_bytes
        )

    def run(self) -> RunOutcome:
        prompt = prompts.CONTINUE_PROMPT if self.session_id else prompts.task_prompt(self.agent)
        try:
            while True:
                ran = self._round(prompt)
                if ran is not None:
                    return ran
                report = self._deliver(self.summary)
                if report.approved:
                    result = {**self._result(), "pushed_commit": report.sha}
                    return RunOutcome(True, summary=self.summary, delivered=True, result=result)
                if self.gate_rounds >= self.rounds_allowed or not self.session_id:
                    return self._gates_failed(report)
                self.gate_rounds += 1
                prompt = prompts.gate_feedback_prompt(
                    report.text, round_number=self.gate_rounds, rounds=self.rounds_allowed
                )
        except _Stopped:
            return _STOPPED
        finally:
            self.transcript.finish()

    # --- one round --------------------------------------------------------------

    def _round(self, prompt: str) -> RunOutcome | None:
        """Run the CLI on ``prompt``; an outcome when the run ends here, None to go on and gate."""
        if self.context.is_cancelled():
            return _STOPPED
        budget = agent_budget_usd(self.agent)
        self.agent.refresh_from_db(fields=["cost_usd"])
        if budget is not None and self.agent.cost_usd >= budget:
            return self._paused()
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return self._failed(f"timed out after {self.agent.timeout_s} s")
        self._emit({"role": "user", "text": prompt})
        round_ = self._invoke(prompt, timeout_s=remaining)
        if self.context.is_cancelled():
            return _STOPPED
        if gateway_budget_exhausted(agent_id=str(self.agent.id)):
            return self._paused()
        if round_.timed_out:
            return self._failed(f"timed out after {self.agent.timeout_s} s")
        if round_.exit_code != 0 or round_.error:
            said = round_.error or round_.stderr_tail or "no message"
            return self._failed(
                f"{self.runtime.cli.title} exited with status {round_.exit_code}: {said}"
            )
        self.summary = (round_.final_text or "").strip()[:4000] or "agent work"
        return None

    def _invoke(self, prompt: str, *, timeout_s: float) -> CliRound:
        """Run the CLI once in the sandbox, its output becoming events as it arrives."""
        round_ = CliRound()
        prompt_path = cli_home_write(agent_id=str(self.agent.id), name=PROMPT_FILE, text=prompt)
        argv = [
            str(cli_binary(self.runtime.cli)),
            *self.runtime.arguments(
                model=self.model, session_id=self.session_id, network=self.agent.network
            ),
        ]
        stderr: list[str] = []

        def plain(lines: list[str]) -> None:
            stderr.extend(lines)
            del stderr[:-_STDERR_TAIL_LINES]
            self.context.output(lines)

        sink = FramedLines(on_line=lambda line: self._on_line(line, round_), on_plain=plain)
        watch = _BudgetWatch(str(self.agent.id), on_exhausted=self._stop_cli)
        watch.start()
        try:
            result = self.context.sandbox.exec(
                self.context.handle,
                framed_command(argv=argv, prompt_path=prompt_path),
                timeout_s=timeout_s,
                on_output=sink,
            )
        finally:
            watch.stop()
        round_.exit_code, round_.timed_out = result.exit_code, result.timed_out
        round_.stderr_tail = "\n".join(stderr)[-2000:]
        if round_.session_id:
            self.session_id = round_.session_id
        return round_

    def _on_line(self, line: str, round_: CliRound) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            self.context.output([line])
            return
        if not isinstance(event, dict):
            self.context.output([line])
            return
        for data in self.runtime.transcript(event, round_):
            self._emit(data)

    def _stop_cli(self) -> None:
        """The gateway refused for budget and the CLI goes on retrying: it ends now."""
        self.context.emit(
            AgentEventKind.LOG, {"message": "the model budget is spent: stopping the CLI"}
        )
        self.context.sandbox.kill(self.context.handle)

    # --- delivery ---------------------------------------------------------------

    def _deliver(self, summary: str) -> DeliveryReport:
        """Commit and push through the gates, as the claude runtime's finish does."""
        self._advance(AgentState.GATING)
        if self.agent.agent_type != AgentType.REVIEWER and workspace.worktree_changed(
            path=self.context.worktree
        ):
            committed = agent_commit(context=self.context, message=self._commit_message(summary))
            if not committed.approved:
                self._advance(AgentState.RUNNING)
                return committed
        pushed = agent_push(
            context=self.context,
            summary=summary,
            on_approved=lambda: self._advance(AgentState.PUSHING),
            # A conflict with the base is left in the worktree; the next prompt names it.
            resolves_conflicts=self.agent.agent_type != AgentType.REVIEWER,
        )
        if not pushed.approved:
            self._advance(AgentState.RUNNING)
        return pushed

    def _advance(self, to: AgentState) -> None:
        if not agent_transition(agent_id=self.agent.id, to=to, lease_held=self.context.lease):
            raise _Stopped()

    def _commit_message(self, summary: str) -> str:
        agent = self.agent
        return f"{summary}\n\nAgent: {agent.id}\nTask: {agent.task_id}\nRuntime: {agent.runtime}\n"

    # --- endings ----------------------------------------------------------------

    def _gates_failed(self, report: DeliveryReport) -> RunOutcome:
        result = {**self._result(), "pushed_commit": None, "gates": report.as_dict()}
        return RunOutcome(False, error=report.text, result=result)

    def _paused(self) -> RunOutcome:
        self.agent.refresh_from_db(fields=["cost_usd"])
        reason = (
            f"budget exhausted: spent ${self.agent.cost_usd} of ${agent_budget_usd(self.agent)}"
        )
        return RunOutcome(False, error=reason, paused=True, result=self._result())

    def _failed(self, reason: str) -> RunOutcome:
        return RunOutcome(False, error=reason, result=self._result())

    def _result(self) -> dict[str, Any]:
        return {
            "cli": {
                "runtime": self.runtime.name,
                "version": self.runtime.cli.version,
                "session_id": self.session_id,
                "attempt": self.agent.attempt,
                "gate_rounds": self.gate_rounds,
            },
            "model": self.model,
        }

    def _emit(self, data: dict[str, Any]) -> None:
        self.transcript(redacted(clipped({"cli": self.runtime.name, **data})))


class _BudgetWatch:
    """Asks the gateway, while the CLI runs, whether it refused a call for budget."""

    def __init__(self, agent_id: str, *, on_exhausted: Callable[[], None]) -> None:
        self.agent_id = agent_id
        self.on_exhausted = on_exhausted
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="cli-budget-watch")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def _watch(self) -> None:
        try:
            while not self.stopped.wait(_BUDGET_POLL_S):
                if gateway_budget_exhausted(agent_id=self.agent_id):
                    # The CLI is told so (a 429 it must not retry) and usually ends at
                    # once, saving its session; only one still running is stopped.
                    if not self.stopped.wait(BUDGET_GRACE_S):
                        self.on_exhausted()
                    return
        finally:
            # on_exhausted wrote an event from this thread.
            connection.close()
