from typing import TYPE_CHECKING

from django.contrib import admin
from django.http import HttpRequest

from gates.models import GateRun

# Django's admin classes are generic only in the stubs; subscripting them at
# run time would fail, so the parametrised base exists for the type checker.
if TYPE_CHECKING:
    _GateRunAdminBase = admin.ModelAdmin[GateRun]
else:
    _GateRunAdminBase = admin.ModelAdmin


@admin.register(GateRun)
class GateRunAdmin(_GateRunAdminBase):
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

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: GateRun | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: GateRun | None = None) -> bool:
        return False
