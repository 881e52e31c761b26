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
    # The claim this run holds (Agent.lease): the runtime's own transitions
    # pass it, so a run whose agent another node took over changes nothing.
    lease: int | None = None


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

    def model_problem(self, model: str) -> str | None:
        """Why ``options.model`` cannot be used (it has no price, so no budget), or None."""
        from agents.runtimes.claude.accounting import model_price

        if model_price(model) is None:
            return (
                f"no price is configured for {model} (FLOTILLA_CLAUDE_PRICES), so its "
                "budget could not be kept"
            )
        return None

    def unavailable(self) -> str | None:
        """Why this hub cannot run this runtime (a spawn's 400 says it), or None when it can."""
        return None

    def sandbox_extras(self, agent: Agent, *, resuming: bool) -> dict[str, Any]:
        """Fields of the agent's SandboxSpec this runtime needs, made ready before it starts.

        A CLI agent opens its model gateway and its home here (agents/runtimes/cli).
        """
        return {}

    def sandbox_release(self, agent: Agent) -> None:
        """Release what ``sandbox_extras`` opened for the run, however the run ended."""
        return None
