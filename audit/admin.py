from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor", "action", "target", "reason"]
    list_filter = ["action", "created_at"]
    search_fields = ["actor", "action", "target", "reason"]
    date_hierarchy = "created_at"

    # The audit trail is append-only: nobody edits or deletes it, not even staff.
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
