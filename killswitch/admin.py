from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from agents.models import Agent
from killswitch.models import HubHalt
from killswitch.services import agent_kill

# Django's admin classes are generic only in the stubs; subscripting them at
# run time would fail, so the parametrised bases exist for the type checker.
if TYPE_CHECKING:
    _AgentAdmin = admin.ModelAdmin[Agent]
    _HubHaltAdminBase = admin.ModelAdmin[HubHalt]
else:
    _AgentAdmin = _HubHaltAdminBase = admin.ModelAdmin


@admin.action(description="Kill selected agents", permissions=["change"])
def kill_selected_agents(
    modeladmin: _AgentAdmin, request: HttpRequest, queryset: QuerySet[Agent]
) -> None:
    actor = f"user:{request.user.get_username()}"
    killed = 0
    for agent in queryset:
        if agent_kill(agent_id=agent.id, reason="killed from the admin", actor=actor).terminated:
            killed += 1
    modeladmin.message_user(
        request,
        f"Killed {killed} of {queryset.count()} agents.",
        messages.SUCCESS if killed else messages.WARNING,
    )


@admin.register(HubHalt)
class HubHaltAdmin(_HubHaltAdminBase):
    list_display = ["halted", "reason", "actor", "changed_at"]
    readonly_fields = ["halted", "reason", "actor", "changed_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: HubHalt | None = None) -> bool:
        return False
