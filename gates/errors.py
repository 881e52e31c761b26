"""Domain errors of the gates app; the API error handler reads ``code`` and ``http_status``."""

from typing import Any


class GateError(Exception):
    code = "gate_error"
    http_status = 400

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class GateConfigError(GateError):
    """The repository's ``.flotilla.toml`` or the spawn's gate options are malformed."""

    code = "gate_config_invalid"


class GateRejected(GateError):
    """The gates refused a commit or a push; ``report`` says which and why."""

    code = "gate_rejected"
    http_status = 409

    def __init__(self, message: str, *, report: Any = None) -> None:
        super().__init__(message)
        self.report = report
