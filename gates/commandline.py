"""A gate's command made concrete: ``{changed_files}`` filled in, run in batches, merged.

File names are chosen by the agent, so they are hostile input: each is quoted
with ``shlex.quote`` (a single-quoted shell word, in which nothing expands),
and a name that starts with ``-`` is written ``./-name`` so that no tool reads
it as an option.
"""

import fnmatch
import posixpath
import shlex
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gates.base import ChangedFile, GateContext, GateResult, RunCommand, gate_passed, outcome_lines

CHANGED_FILES = "{changed_files}"
# Linux takes at most 128 KiB in one argument, and the sandbox hands the
# whole command to ``sh -c`` as one: a longer list of files runs in batches.
BATCH_MAX_CHARS = 100_000


@dataclass(frozen=True)
class CommandPlan:
    template: str
    commands: tuple[str, ...]  # empty when ``{changed_files}`` selects no file
    files: tuple[str, ...] = ()  # the files named, in the order given

    @property
    def names_files(self) -> bool:
        return CHANGED_FILES in self.template

    @property
    def shown(self) -> str:
        """The command as a report names it: the first batch, and how many more there were."""
        if not self.commands:
            return self.template
        more = len(self.commands) - 1
        return self.commands[0] + (f" (and {more} more batch(es) of files)" if more else "")


@dataclass(frozen=True)
class CommandRun:
    """One plan's run: every batch's outcome merged into one."""

    command: str
    exit_code: int | None  # the first non-zero status of any batch, else 0
    timed_out: bool
    output_tail: str
    output_lines: tuple[str, ...] | None  # None when a runner kept only a tail
    duration_s: float

    @property
    def output(self) -> list[str]:
        """Every line when known, the tail otherwise."""
        if self.output_lines is not None:
            return list(self.output_lines)
        return self.output_tail.splitlines()


def glob_matches(path: str, glob: str) -> bool:
    """A glob with a "/" matches the whole path; one without matches the file's name."""
    subject = path if "/" in glob else posixpath.basename(path)
    return fnmatch.fnmatchcase(subject, glob)


def changed_files_select(
    files: Iterable[ChangedFile], globs: Iterable[str], *, on_base: bool = False
) -> list[str]:
    """The paths matching any glob; ``on_base``: only those the base commit has too."""
    globs = tuple(globs)
    return [
        changed.path
        for changed in files
        if not (on_base and changed.added) and any(glob_matches(changed.path, g) for g in globs)
    ]


def path_argument(path: str) -> str:
    return shlex.quote(f"./{path}" if path.startswith("-") else path)


def command_plan(template: str, files: list[str]) -> CommandPlan:
    """The command(s) to run: ``template`` itself, or one per batch of ``files``."""
    if CHANGED_FILES not in template:
        return CommandPlan(template, (template,))
    budget = max(BATCH_MAX_CHARS - len(template), 1)
    commands: list[str] = []
    batch: list[str] = []
    size = 0
    for path in files:
        argument = path_argument(path)
        if batch and size + len(argument) + 1 > budget:
            commands.append(template.replace(CHANGED_FILES, " ".join(batch)))
            batch, size = [], 0
        batch.append(argument)
        size += len(argument) + 1
    if batch:
        commands.append(template.replace(CHANGED_FILES, " ".join(batch)))
    return CommandPlan(template, tuple(commands), tuple(files))


def command_run(run_command: RunCommand, plan: CommandPlan, timeout_s: float) -> CommandRun:
    """Run every batch of ``plan`` within ``timeout_s`` in all; stop at a timeout."""
    started = time.monotonic()
    exit_code: int | None = 0
    timed_out = False
    tails: list[str] = []
    lines: list[str] | None = []
    for command in plan.commands:
        remaining = timeout_s - (time.monotonic() - started)
        if remaining <= 0:
            timed_out = True
            break
        outcome = run_command(command, remaining)
        tails.append(outcome.output_tail)
        batch_lines = outcome_lines(outcome)
        lines = None if lines is None or batch_lines is None else lines + batch_lines
        if outcome.timed_out:
            timed_out = True
            break
        if exit_code == 0:
            exit_code = outcome.exit_code
    return CommandRun(
        command=plan.shown,
        exit_code=None if timed_out else exit_code,
        timed_out=timed_out,
        output_tail="\n".join(tail for tail in tails if tail),
        output_lines=None if lines is None else tuple(lines),
        duration_s=time.monotonic() - started,
    )


def gate_plan(context: GateContext, source: str, *, on_base: bool = False) -> CommandPlan:
    """The plan for ``source``'s command; ``on_base``: for the base commit's checkout."""
    template = context.config.commands[source]
    files: list[str] = []
    if CHANGED_FILES in template:
        globs = context.config.globs(source)
        files = changed_files_select(context.changed_files, globs, on_base=on_base)
    return command_plan(template, files)


def plan_details(plan: CommandPlan) -> dict[str, Any]:
    details: dict[str, Any] = {"command": plan.template}
    if plan.names_files:
        details["changed_files"] = list(plan.files[:200])
        details["changed_files_count"] = len(plan.files)
    return details


def no_changed_files(
    gate: str, context: GateContext, source: str, details: dict[str, Any]
) -> GateResult:
    """A gate whose ``{changed_files}`` selects nothing passes without running."""
    globs = ", ".join(context.config.globs(source))
    return gate_passed(
        gate,
        f"no changed files to check (none matches {globs}); `{details['command']}` was not run",
        details=details,
    )


def base_run(context: GateContext, plan: CommandPlan, source: str) -> CommandRun | None:
    """The command on the base commit; None when none of its files is there yet."""
    if context.run_base_command is None:
        raise ValueError("base_run needs a context with run_base_command")
    base_plan = gate_plan(context, source, on_base=True) if plan.names_files else plan
    if not base_plan.commands:
        return None
    return command_run(context.run_base_command, base_plan, context.config.timeout_s)
