from django.db.models import QuerySet

from audit.models import AuditEvent


def audit_events_for(*, target: str, action: str | None = None) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.filter(target=target)
    return events.filter(action=action) if action else events
