from typing import TYPE_CHECKING

from django.contrib import admin
from django.http import HttpRequest

from audit.models import AuditEvent

# Django's admin classes are generic only in the stubs; subscripting them at
# run time would fail, so the parametrised base exists for the type checker.
if TYPE_CHECKING:
    _AuditEventAdminBase = admin.ModelAdmin[AuditEvent]
else:
    _AuditEventAdminBase = admin.ModelAdmin


@admin.register(AuditEvent)
class AuditEventAdmin(_AuditEventAdminBase):
    list_display = ["created_at", "actor", "action", "target", "reason"]
    list_filter = ["action", "created_at"]
    search_fields = ["actor", "action", "target", "reason"]
    date_hierarchy = "created_at"

    # The audit trail is append-only: nobody edits or deletes it, not even staff.
    def has_add_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False
