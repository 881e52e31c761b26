"""Domain errors of the kill switch; ``orchestrator_site.errors`` turns them into the error body."""


class AgentAlreadyFinal(Exception):
    """A kill of an agent that has already ended: nothing was killed."""

    code = "already_final"
    http_status = 409
