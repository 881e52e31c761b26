"""What a gate is handed, what it returns, and the small protocol every gate implements.

Gates never run anything themselves: the agents layer hands them a
``run_command`` callable that executes inside the agent's sandbox, and (before
a push) a ``conflict_check`` callable backed by git. That keeps this app below
``agents`` in the layering and lets the same gates run anywhere a command can.
"""

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gates.config import GateConfig, gate_config_parse
from gates.diffs import diff_added_lines, diff_changed_files, diff_files
from gates.models import GateOutcome


class HubFault(Exception):
    """The hub's own machinery failed (a sandbox that cannot start, a git error).

    It says nothing about the change, so a gate never turns it into a
    rejection: it propagates and the agent ends with it as its error.
    """


class CommandOutcome(Protocol):
    """What ``run_command`` returns; the sandboxes' ``ExecResult`` has this shape.

    A runner that keeps every line the command printed also gives them as
    ``output_lines`` (``None`` when it had to drop some): the baseline
    comparison needs all of them, where a tail would hide a finding.
    """

    # Read-only properties, so that a frozen dataclass has this shape too.
    @property
    def exit_code(self) -> int | None: ...
    @property
    def timed_out(self) -> bool: ...
    @property
    def output_tail(self) -> str: ...
    @property
    def duration_s(self) -> float: ...


RunCommand = Callable[[str, float], CommandOutcome]


def outcome_lines(outcome: CommandOutcome) -> list[str] | None:
    """Every line ``outcome`` printed, or None when the runner kept only its tail."""
    lines = getattr(outcome, "output_lines", None)
    return None if lines is None else list(lines)


@dataclass(frozen=True)
class ChangedFile:
    """A file the change adds or modifies (deleted files are no longer there to check)."""

    path: str
    added: bool  # the base has no such file


@dataclass(frozen=True)
class GateContext:
    agent_id: str
    task: str
    diff: str
    run_command: RunCommand
    config_text: str | None = None
    config_overrides: dict[str, Any] | None = None
    conflict_check: Callable[[], list[str]] | None = None
    # The branch the change is headed for, and the task's id, for messages
    # and the external coordinator.
    target: str = ""
    task_id: str = ""
    # The files the change adds or modifies, for ``{changed_files}``; read
    # from the diff when the caller gives no such list.
    changed_files_list: Callable[[], list[ChangedFile]] | None = None
    # Runs a command as ``run_command`` does, in a checkout of the commit the
    # change is measured against (``baseline = true``, gates.baseline).
    run_base_command: RunCommand | None = None
    # The id of the tree being judged: coverage reuses the tests gate's
    # measurement only for the tree that run measured.
    tree_id: Callable[[], str] | None = None
    # Set by ``gates_run``: the profile this stage runs under.
    profile: str = ""

    @functools.cached_property
    def added_lines(self) -> dict[str, list[tuple[int, str]]]:
        return diff_added_lines(self.diff)

    @functools.cached_property
    def files(self) -> list[str]:
        return diff_files(self.diff)

    @functools.cached_property
    def changed_files(self) -> list[ChangedFile]:
        if self.changed_files_list is not None:
            return self.changed_files_list()
        return [ChangedFile(path, added) for path, added in diff_changed_files(self.diff)]

    @functools.cached_property
    def config(self) -> GateConfig:
        return gate_config_parse(text=self.config_text, overrides=self.config_overrides)


@dataclass(frozen=True)
class GateResult:
    gate: str
    outcome: GateOutcome
    summary: str
    output: str = ""
    duration_s: float = 0.0
    confidence: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    blocking: bool = False
    # Secret values a gate found, used to redact every other gate's output;
    # never serialised, never stored.
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)
    # False for a gate the stage never ran because an earlier gate failed: it
    # did not block the change, and it did not pass either.
    ran: bool = True

    @property
    def passed(self) -> bool:
        return self.ran and not self.blocking

    def as_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "outcome": str(self.outcome),
            "passed": self.passed,
            "summary": self.summary,
            "output": self.output,
            "duration_s": round(self.duration_s, 3),
            "confidence": self.confidence,
            "details": self.details,
        }


def gate_passed(gate: str, summary: str, **extra: Any) -> GateResult:
    return GateResult(gate, GateOutcome.PASSED, summary, **extra)


def gate_failed(gate: str, summary: str, **extra: Any) -> GateResult:
    return GateResult(gate, GateOutcome.FAILED, summary, blocking=True, **extra)


def gate_not_run(gate: str, reason: str) -> GateResult:
    return GateResult(gate, GateOutcome.SKIPPED, f"not run: {reason}", ran=False)


_MARKS = {
    GateOutcome.PASSED: "PASS",
    GateOutcome.FAILED: "FAIL",
    GateOutcome.WARNING: "WARN",
    GateOutcome.SKIPPED: "SKIP",
    GateOutcome.NOT_CONFIGURED: "NONE",
}


@dataclass(frozen=True)
class GateReport:
    stage: str
    profile: str
    results: list[GateResult]
    yolo: bool = False

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def failures(self) -> list[GateResult]:
        """The gates that blocked the change (not those that never ran)."""
        return [result for result in self.results if result.blocking]

    @property
    def text(self) -> str:
        """The report as a person (or a model) reads it: verdict first, then each gate."""
        verdict = "passed" if self.passed else "REJECTED"
        failed = ", ".join(result.gate for result in self.failures)
        lines = [
            f"{self.stage} gates ({self.profile} profile): {verdict}"
            + (f" by {failed}" if failed else "")
            + (" (YOLO mode: gates skipped)" if self.yolo else "")
        ]
        for result in self.results:
            blocking = " (blocking)" if result.blocking and result.outcome != "failed" else ""
            lines.append(f"[{_MARKS[result.outcome]}] {result.gate}: {result.summary}{blocking}")
            if result.blocking and result.output:
                lines.extend(f"    {line}" for line in result.output.splitlines())
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "profile": self.profile,
            "passed": self.passed,
            "yolo": self.yolo,
            "results": [result.as_dict() for result in self.results],
            "text": self.text,
        }


class Gate(ABC):
    """One check. ``is_configured`` False means the repository did not ask for it."""

    name: str

    def is_configured(self, context: GateContext) -> bool:
        return True

    @abstractmethod
    def run(self, context: GateContext) -> GateResult:
        """Judge the change; never raise for a bad change, only return a failed result."""
