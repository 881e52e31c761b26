"""What every CLI agent shares: the interface one CLI module fills in, and the runner's hooks.

A CLI runtime runs a coding agent's own command-line program (Claude Code,
Codex) inside the sandbox, in ``/workspace``, as the sandbox user. It never
sees a real API key: the runner opens the agent's model gateway
(agents/gateway) before the sandbox starts, and the CLI is pointed at it
through the socket bridge with a token that dies with the run. The loop
(``agents.runtimes.cli.run``) feeds it the task, turns its structured output
into ``transcript`` events, runs the gates, hands a rejection back to the
same session and pauses the agent when the gateway refuses for budget.

A CLI module (docs/agents.md, "Adding a CLI") says which npm package to
install, how to point the CLI at the gateway, its command lines, and how to
read one line of its output.
"""

from abc import abstractmethod
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.conf import settings

from agents.gateway.server import ModelUsage
from agents.gateway.service import gateway_close, gateway_open, gateway_socket_path
from agents.models import Agent, AgentEventKind
from agents.reconnect import database_retrying
from agents.runtimes.base import AgentRuntime, RunContext, RunOutcome
from agents.runtimes.claude.accounting import (
    Usage,
    agent_budget_usd,
    agent_usage_add,
    model_price,
)
from agents.runtimes.cli.home import cli_home_prepare
from agents.runtimes.cli.install import CliPackage, cli_missing
from agents.runtimes.cli.rounds import CliRound
from agents.sandboxes.base import AGENT_HOME
from agents.services import agent_event_append

# The gateway counts what it forwards; these keep the CLIs from calling
# anything else (telemetry, update checks, error reports), which the sandbox
# could not reach anyway.
QUIET_ENVIRONMENT = {"DO_NOT_TRACK": "1", "NO_UPDATE_NOTIFIER": "1"}
# The prices the gateway charges each provider's models at.
_PRICES = {"anthropic": "FLOTILLA_CLAUDE_PRICES", "openai": "FLOTILLA_OPENAI_PRICES"}


class CliRuntime(AgentRuntime):
    """A runtime that runs one agent CLI; subclasses are one module each."""

    cli: CliPackage
    # The gateway's provider: "anthropic" (Messages API) or "openai" (Responses API).
    provider: str

    @abstractmethod
    def default_model(self) -> str:
        """The model when the spawn names none; it needs a price, so the budget can be kept."""

    @abstractmethod
    def environment(self, *, token: str) -> dict[str, str]:
        """The CLI's environment: the gateway as its endpoint, the token as its key."""

    @abstractmethod
    def arguments(self, *, model: str, session_id: str, network: str) -> list[str]:
        """The CLI's arguments after its command; a new session when ``session_id`` is ''.

        The prompt arrives on standard input. ``session_id`` was read from the
        CLI's own output and checked to be a UUID.
        """

    @abstractmethod
    def transcript(self, event: dict[str, Any], round_: CliRound) -> list[dict[str, Any]]:
        """One line of the CLI's structured output as transcript events (may be none).

        Notes on ``round_`` what the run needs: the session id, the final
        message, the CLI's own report of a failure.
        """

    # --- the runtime ----------------------------------------------------------

    def model(self, agent: Agent) -> str:
        return (agent.options or {}).get("model") or self.default_model()

    def unavailable(self) -> str | None:
        return cli_missing(self.cli)

    def model_problem(self, model: str) -> str | None:
        setting = _PRICES[self.provider]
        if model_price(model, getattr(settings, setting)) is None:
            return f"no price is configured for {model} ({setting}), so its budget cannot be kept"
        return None

    def run(self, context: RunContext) -> RunOutcome:
        from agents.runtimes.cli.run import CliRun

        return CliRun(self, context).run()

    # --- the runner's hooks ---------------------------------------------------

    def sandbox_extras(self, agent: Agent, *, resuming: bool) -> dict[str, Any]:
        """Open the agent's gateway and make its home; what its SandboxSpec needs for them."""
        agent_id = str(agent.id)
        home = cli_home_prepare(agent_id=agent_id, fresh=not resuming)
        socket_path = gateway_socket_path(agent_id=agent_id)
        token = gateway_open(
            agent_id=agent_id,
            provider=self.provider,
            socket_path=socket_path,
            budget_usd=agent_budget_usd(agent),
            spent_usd=Decimal(agent.cost_usd or 0),
            on_usage=_usage_recorder(agent, self.name),
        )
        environment = {**QUIET_ENVIRONMENT, **self.environment(token=token), "HOME": AGENT_HOME}
        return {"model_socket": str(socket_path), "home": str(home), "env": environment}

    def sandbox_release(self, agent: Agent) -> None:
        """The token dies and open streams are cut, however the run ended."""
        gateway_close(agent_id=str(agent.id))


def _usage_recorder(agent: Agent, runtime: str) -> Callable[[ModelUsage], None]:
    """What the gateway calls after each model call: the agent's usage grows, an event says so."""
    agent_id = agent.id

    def record(usage: ModelUsage) -> None:
        counted = Usage(
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            cache_read_tokens=int(usage.get("cache_read_tokens") or 0),
            cache_write_tokens=int(usage.get("cache_write_tokens") or 0),
        )
        cost = Decimal(str(usage.get("cost_usd") or 0))
        # The model is named by the request, so by the agent: stored as plain text only.
        model = str(usage.get("model") or "").replace("\x00", "")[:200]
        data = {
            "cli": runtime,
            "role": "model",
            "text": f"{model}: {counted.input_tokens} tokens in, "
            f"{counted.output_tokens} out, ${cost}",
            "model": model,
            "usage": counted.as_dict(),
            "cost_usd": str(cost),
        }

        def store() -> None:
            agent_usage_add(agent_id=agent_id, usage=counted, cost_usd=cost)
            agent_event_append(agent_id=agent_id, kind=AgentEventKind.TRANSCRIPT, data=data)

        database_retrying(store)

    return record
