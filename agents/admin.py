from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest
from django.utils.module_loading import import_string

from agents.models import Agent, AgentEvent

# Django's admin classes are generic only in the stubs; subscripting them at
# run time would fail, so the parametrised bases exist for the type checker.
if TYPE_CHECKING:
    _AgentAdminBase = admin.ModelAdmin[Agent]
    _AgentEventAdminBase = admin.ModelAdmin[AgentEvent]
    _AgentEventInlineBase = admin.TabularInline[AgentEvent, Agent]
else:
    _AgentAdminBase = _AgentEventAdminBase = admin.ModelAdmin
    _AgentEventInlineBase = admin.TabularInline

_EVENT_FIELDS = ("id", "kind", "data", "created_at")


class AgentEventInline(_AgentEventInlineBase):
    model = AgentEvent
    fields = _EVENT_FIELDS
    readonly_fields = _EVENT_FIELDS
    extra = 0
    can_delete = False
    ordering = ["-id"]
    max_num = 0
    show_change_link = False


@admin.register(Agent)
class AgentAdmin(_AgentAdminBase):
    list_display = [
        "id",
        "task_id",
        "state",
        "progress",
        "runtime",
        "agent_type",
        "repository",
        "work_branch",
        "node",
        "origin",
        "created_at",
    ]
    list_filter = [
        "state",
        "runtime",
        "agent_type",
        "sandbox_backend",
        "network",
        "node",
        "origin",
    ]
    search_fields = ["id", "task_id", "repository", "work_branch", "requested_by", "error"]
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in Agent._meta.fields]
    inlines = [AgentEventInline]

    # Higher layers contribute actions by dotted path (the kill switch adds
    # "kill selected agents"), so this app never imports them.
    def get_actions(
        self, request: HttpRequest
    ) -> dict[str, tuple[Callable[..., str], str, str] | None]:
        actions = super().get_actions(request)
        for path in settings.FLOTILLA_AGENT_ADMIN_ACTIONS:
            action = import_string(path)
            actions[action.__name__] = (
                action,
                action.__name__,
                getattr(action, "short_description", action.__name__),
            )
        return actions

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(AgentEvent)
class AgentEventAdmin(_AgentEventAdminBase):
    list_display = ["id", "agent", "kind", "created_at"]
    list_filter = ["kind"]
    search_fields = ["agent__id", "agent__task_id"]
    readonly_fields = ["id", "agent", "kind", "data", "created_at"]
    list_select_related = ["agent"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AgentEvent | None = None) -> bool:
        return False
