"""Domain errors of federation; each carries its code and HTTP status (DESIGN.md)."""


class FederationError(Exception):
    code = "federation_error"
    http_status = 400

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class SignatureInvalid(FederationError):
    """Missing or bad signature, unknown or expired key, digest mismatch, stale, replayed."""

    code = "signature_invalid"
    http_status = 401


class PeerForbidden(FederationError):
    """The peer is not ACTIVE, or the command is not allowed for it."""

    code = "forbidden"
    http_status = 403


class MessageMalformed(FederationError):
    code = "malformed"
    http_status = 400


class MessageTooLarge(FederationError):
    code = "too_large"
    http_status = 413


class PeerQuotaExceeded(FederationError):
    code = "quota_exceeded"
    http_status = 429


class MessageConflict(FederationError):
    """The same message_id came with another body, or is still being processed."""

    code = "message_conflict"
    http_status = 409


class PeerNotFound(FederationError):
    code = "not_found"
    http_status = 404


class PeerStateConflict(FederationError):
    code = "invalid_peer_state"
    http_status = 409


class PeerKeyConflict(PeerStateConflict):
    """A connect for a known peer that would change it, not signed with a key recorded for it."""

    code = "peer_key_conflict"


class ConnectRateExceeded(PeerQuotaExceeded):
    """Too many connects from one address that no recorded key signed; ``retry_after`` in s."""

    code = "connect_rate_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PeerUnreachable(FederationError):
    """The peer did not answer in time, or not at all."""

    code = "peer_unreachable"
    http_status = 502


class PeerUrlInvalid(FederationError):
    """The peer's URL cannot be requested at all (found by the schemathesis run)."""

    code = "invalid_url"
    http_status = 400


class PeerAnswerInvalid(FederationError):
    """The peer answered, but not with a message signed by its pinned keys."""

    code = "peer_answer_invalid"
    http_status = 502


class PeerCommandFailed(FederationError):
    """The peer refused or failed the command; its status is passed on where it means the same."""

    code = "peer_command_failed"
    http_status = 502

    def __init__(self, message: str, *, status: int, peer_code: str = "") -> None:
        super().__init__(message)
        self.peer_code = peer_code
        if status in (403, 404, 409, 429):
            self.http_status = status


class IdentityUnavailable(FederationError):
    code = "identity_unavailable"
    http_status = 500
