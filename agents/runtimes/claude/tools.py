"""The tools a Claude agent may call, their definitions, and what each one does.

Names and input fields are a contract: coordinators and tests depend on them.
A tool never raises for a bad call: a malformed input, a refused path or a
rejected commit is an error result the model reads and acts on.
"""

import collections
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from django.conf import settings

from agents import workspace
from agents.delivery import agent_commit, agent_push
from agents.lifecycle import agent_transition
from agents.models import AgentState, AgentType
from agents.runtimes.base import RunContext
from agents.runtimes.claude.files import FileToolError, Worktree

_STRING = {"type": "string"}

DEFINITIONS: dict[str, dict[str, Any]] = {
    "read_file": {
        "description": "Read a text file of the repository.",
        "properties": {"path": {**_STRING, "description": "Path relative to the repository root."}},
        "required": ["path"],
    },
    "write_file": {
        "description": "Create or overwrite a file with the given content.",
        "properties": {"path": _STRING, "content": _STRING},
        "required": ["path", "content"],
    },
    "edit_file": {
        "description": (
            "Replace old_text with new_text in a file. old_text must occur exactly once; "
            "include enough surrounding text to make it unique."
        ),
        "properties": {"path": _STRING, "old_text": _STRING, "new_text": _STRING},
        "required": ["path", "old_text", "new_text"],
    },
    "list_files": {
        "description": "List the files below a directory, recursively ('.' is the root).",
        "properties": {"path": _STRING},
        "required": ["path"],
    },
    "search": {
        "description": "Search files below a path for a regular expression (Python syntax).",
        "properties": {"pattern": _STRING, "path": _STRING},
        "required": ["pattern", "path"],
    },
    "run_command": {
        "description": (
            "Run a shell command in the sandbox, in the repository root. Returns the exit code "
            "and the tail of the output."
        ),
        "properties": {
            "command": _STRING,
            "timeout_s": {"type": "integer", "minimum": 1, "description": "Seconds; optional."},
        },
        "required": ["command"],
    },
    "commit": {
        "description": (
            "Commit everything changed so far. The pre-commit gates run first; the commit "
            "happens only if they pass. Returns the gate report either way."
        ),
        "properties": {"message": _STRING},
        "required": ["message"],
    },
    "finish": {
        "description": (
            "End the run: uncommitted changes are committed through the gates, the base "
            "branch is merged in, then the pre-push gates run and the branch is pushed. Returns "
            "the report; on a rejection the run goes on (a merge conflict is left in the files "
            "it names, between conflict markers, for you to resolve)."
        ),
        "properties": {"summary": _STRING},
        "required": ["summary"],
    },
}

_READ_ONLY = ("read_file", "list_files", "search", "run_command", "finish")


def tool_names(agent_type: str) -> list[str]:
    """A reviewer reports findings and cannot change the repository: no write, edit or commit."""
    if agent_type == AgentType.REVIEWER:
        return list(_READ_ONLY)
    return list(DEFINITIONS)


def tool_definitions(agent_type: str) -> list[dict[str, Any]]:
    tools = [
        {
            "name": name,
            "description": DEFINITIONS[name]["description"],
            "input_schema": {
                "type": "object",
                "properties": DEFINITIONS[name]["properties"],
                "required": DEFINITIONS[name]["required"],
            },
        }
        for name in tool_names(agent_type)
    ]
    # One cache breakpoint after the last tool caches every definition.
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    return tools


@dataclass
class ToolResult:
    text: str
    is_error: bool = False
    finished: bool = False
    data: dict[str, Any] = field(default_factory=dict)


class RunStopped(Exception):
    """The agent left the state this run needs (it was killed): stop at once."""


class Toolbox:
    def __init__(self, context: RunContext, *, deadline: float) -> None:
        self.context = context
        self.agent = context.agent
        self.deadline = deadline
        self.names = tool_names(self.agent.agent_type)
        self.files = Worktree(context.worktree)

    def call(self, name: str, tool_input: Any) -> ToolResult:
        if name not in self.names:
            return ToolResult(
                f"unknown tool {name!r}; the tools are: {', '.join(self.names)}", is_error=True
            )
        problem = _input_problem(name, tool_input)
        if problem:
            return ToolResult(problem, is_error=True)
        handler: Callable[..., ToolResult] = getattr(self, f"_{name}")
        try:
            return handler(**{key: tool_input[key] for key in _fields(name) if key in tool_input})
        except FileToolError as error:
            return ToolResult(str(error), is_error=True)

    # --- files ----------------------------------------------------------------

    def _read_file(self, path: str) -> ToolResult:
        return ToolResult(self.files.read(path))

    def _write_file(self, path: str, content: str) -> ToolResult:
        return ToolResult(self.files.write(path, content))

    def _edit_file(self, path: str, old_text: str, new_text: str) -> ToolResult:
        return ToolResult(self.files.edit(path, old_text, new_text))

    def _list_files(self, path: str) -> ToolResult:
        return ToolResult(self.files.list(path))

    def _search(self, pattern: str, path: str) -> ToolResult:
        return ToolResult(self.files.search(pattern, path))

    # --- the sandbox ----------------------------------------------------------

    def _run_command(self, command: str, timeout_s: float | None = None) -> ToolResult:
        limit = settings.FLOTILLA_CLAUDE_COMMAND_TIMEOUT_S
        timeout = min(float(timeout_s or limit), limit, max(1.0, self.deadline - time.monotonic()))
        budget = settings.FLOTILLA_CLAUDE_TOOL_RESULT_MAX_CHARS
        tail: collections.deque[str] = collections.deque()
        size = 0

        def collect(lines: list[str]) -> None:
            nonlocal size
            for line in lines:
                tail.append(line)
                size += len(line) + 1
                while size > budget and len(tail) > 1:
                    size -= len(tail.popleft()) + 1
            self.context.output(lines)

        result = self.context.sandbox.exec(
            self.context.handle, command, timeout_s=timeout, on_output=collect
        )
        output = "\n".join(tail) if tail else result.output_tail
        if result.timed_out:
            return ToolResult(f"timed out after {timeout:.0f} s\n{output}", is_error=True)
        return ToolResult(f"exit code {result.exit_code}\n{output}", is_error=not result.ok)

    # --- delivery -------------------------------------------------------------

    def _commit(self, message: str) -> ToolResult:
        if not message.strip():
            return ToolResult("the commit message is empty", is_error=True)
        self._advance(AgentState.GATING)
        try:
            report = agent_commit(context=self.context, message=self._commit_message(message))
        finally:
            self._advance(AgentState.RUNNING)
        return ToolResult(report.text, is_error=not report.approved)

    def _finish(self, summary: str) -> ToolResult:
        if not summary.strip():
            return ToolResult("the summary is empty; say what you did", is_error=True)
        self._advance(AgentState.GATING)
        if self.agent.agent_type != AgentType.REVIEWER and workspace.worktree_changed(
            path=self.context.worktree
        ):
            committed = agent_commit(context=self.context, message=self._commit_message(summary))
            if not committed.approved:
                self._advance(AgentState.RUNNING)
                return ToolResult(f"not finished: {committed.text}", is_error=True)
        pushed = agent_push(
            context=self.context,
            summary=summary,
            on_approved=lambda: self._advance(AgentState.PUSHING),
            # A conflict with the base comes back as this result, left in the worktree to fix.
            resolves_conflicts=self.agent.agent_type != AgentType.REVIEWER,
        )
        if not pushed.approved:
            self._advance(AgentState.RUNNING)
            return ToolResult(f"not finished: {pushed.text}", is_error=True)
        data = {"summary": summary, "pushed_commit": pushed.sha}
        return ToolResult(pushed.text, finished=True, data=data)

    def _advance(self, to: AgentState) -> None:
        if not agent_transition(agent_id=self.agent.id, to=to, lease_held=self.context.lease):
            raise RunStopped()

    def _commit_message(self, message: str) -> str:
        return f"{message.strip()}\n\nAgent: {self.agent.id}\nTask: {self.agent.task_id}\n"


def _fields(name: str) -> list[str]:
    return list(DEFINITIONS[name]["properties"])


def _input_problem(name: str, tool_input: Any) -> str:
    """Why ``tool_input`` does not fit the tool, in words the model can act on; '' if it does.

    The tool's own JSON schema (the one the model is given) decides, with jsonschema.
    """
    if not isinstance(tool_input, dict):
        return f"{name} takes an object with {', '.join(_fields(name))}"
    error = jsonschema.exceptions.best_match(_validator(name).iter_errors(tool_input))
    if error is None:
        return ""
    if error.validator == "required":
        definition = DEFINITIONS[name]
        missing = [key for key in definition["required"] if key not in tool_input]
        return f"{name} needs {', '.join(missing)} (fields: {', '.join(_fields(name))})"
    key = str(error.path[0]) if error.path else ""
    schema = DEFINITIONS[name]["properties"].get(key, {})
    return f"{name}: {key} must be {_described(key, schema)}"


@functools.cache
def _validator(name: str) -> Any:
    definition = DEFINITIONS[name]
    schema = {
        "type": "object",
        "properties": definition["properties"],
        "required": definition["required"],
    }
    return jsonschema.Draft202012Validator(schema)


def _described(key: str, schema: dict[str, Any]) -> str:
    if schema.get("type") == "integer":
        return "a positive number of seconds" if key.endswith("_s") else "a whole number"
    return f"a {schema.get('type', 'value')}"
