from django.contrib import admin

from gates.models import GateRun


@admin.register(GateRun)
class GateRunAdmin(admin.ModelAdmin):
    """Gate verdicts are evidence: the admin shows them and changes nothing."""

    list_display = (
        "created_at",
        "agent_id",
        "stage",
        "gate",
        "outcome",
        "duration_s",
        "confidence",
    )
    list_filter = ("stage", "gate", "outcome", "profile")
    search_fields = ("agent_id", "summary")
    readonly_fields = [field.name for field in GateRun._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
