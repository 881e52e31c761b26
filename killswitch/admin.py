from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from killswitch.models import HubHalt
from killswitch.services import agent_kill


@admin.action(description="Kill selected agents", permissions=["change"])
def kill_selected_agents(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet):
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
class HubHaltAdmin(admin.ModelAdmin):
    list_display = ["halted", "reason", "actor", "changed_at"]
    readonly_fields = ["halted", "reason", "actor", "changed_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
