from typing import Any

from audit.models import AuditEvent


def audit_record(
    *,
    actor: str,
    action: str,
    target: str = "",
    reason: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        actor=actor[:200], action=action, target=target[:200], reason=reason, data=data or {}
    )
