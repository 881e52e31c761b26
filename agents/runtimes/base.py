"""What a runtime gets to work with, and what it reports back."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.models import Agent
from agents.sandboxes.base import OutputSink, Sandbox, SandboxHandle


@dataclass
class RunContext:
    agent: Agent
    sandbox: Sandbox
    handle: SandboxHandle
    worktree: Path
    emit: Callable[[str, dict[str, Any]], None]
    output: OutputSink
    is_cancelled: Callable[[], bool]


@dataclass(frozen=True)
class RunOutcome:
    succeeded: bool
    summary: str = ""
    error: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    # The runtime committed and pushed through the gates itself (the Claude
    # ``finish`` tool) and left the agent in ``pushing``: the runner completes it.
    delivered: bool = False
    # The runtime stopped to wait for an operator (budget exhausted) with its
    # state saved; ``error`` says why. The runner keeps the worktree.
    paused: bool = False


class AgentRuntime(ABC):
    name: str

    @abstractmethod
    def run(self, context: RunContext) -> RunOutcome:
        """Do the agent's work in its sandbox; the runner commits and pushes on success."""
