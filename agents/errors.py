"""Domain errors of the agents app.

Each carries the error code and HTTP status the API answers with; the one
exception handler in ``orchestrator_site.errors`` reads them.
"""


class AgentError(Exception):
    code = "agent_error"
    http_status = 400

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class AgentNotFound(AgentError):
    code = "not_found"
    http_status = 404


class SpawnRefused(AgentError):
    """A spawn guard said no (for example: the hub is halted)."""

    code = "spawn_refused"
    http_status = 409


class ConcurrencyLimitReached(AgentError):
    code = "concurrency_limit"
    http_status = 429


class InvalidTransition(AgentError):
    code = "invalid_transition"
    http_status = 409


class InvalidBudget(AgentError):
    code = "invalid_budget"
    http_status = 400
