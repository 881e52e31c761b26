from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from taskqueue.errors import ProjectError
from taskqueue.models import Project, Task, TaskAttempt
from taskqueue.services import project_cancel, project_pause, project_resume, task_retry

# Django's admin classes are generic only in the stubs; subscripting them at
# run time would fail, so the parametrised bases exist for the type checker.
if TYPE_CHECKING:
    _ProjectAdminBase = admin.ModelAdmin[Project]
    _TaskAdminBase = admin.ModelAdmin[Task]
    _TaskAttemptInlineBase = admin.TabularInline[TaskAttempt, Task]
else:
    _ProjectAdminBase = _TaskAdminBase = admin.ModelAdmin
    _TaskAttemptInlineBase = admin.TabularInline

_M = TypeVar("_M", bound=Model)


def _each(
    request: HttpRequest, items: QuerySet[_M], action: Callable[[_M], object], label: str
) -> None:
    done = 0
    for item in items:
        try:
            action(item)
            done += 1
        except ProjectError as error:
            messages.warning(request, str(error))
    messages.info(request, f"{label}: {done}")


@admin.register(Project)
class ProjectAdmin(_ProjectAdminBase):
    list_display = [
        "id",
        "name",
        "mode",
        "state",
        "failure_policy",
        "max_parallel",
        "webhook_state",
        "created_by",
        "created_at",
        "finished_at",
    ]
    list_filter = ["state", "mode", "failure_policy", "webhook_state"]
    search_fields = ["name", "created_by"]
    readonly_fields = [
        field.name for field in Project._meta.fields if field.name not in ("name", "webhook_secret")
    ]
    exclude = ["webhook_secret"]
    actions = ["cancel", "pause", "resume"]

    def actor(self, request: HttpRequest) -> str:
        return f"user:{request.user.get_username()}"

    @admin.action(description="Cancel the selected projects (kills their agents)")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        actor = self.actor(request)
        _each(
            request,
            queryset,
            lambda p: project_cancel(
                project_id=p.id, actor=actor, reason="cancelled from the admin"
            ),
            "cancelled",
        )

    @admin.action(description="Pause the selected projects")
    def pause(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        _each(
            request,
            queryset,
            lambda p: project_pause(project_id=p.id, actor=self.actor(request)),
            "paused",
        )

    @admin.action(description="Resume the selected projects")
    def resume(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        _each(
            request,
            queryset,
            lambda p: project_resume(project_id=p.id, actor=self.actor(request)),
            "resumed",
        )


_ATTEMPT_FIELDS = (
    "number",
    "state",
    "agent",
    "base_branch",
    "backoff_s",
    "error",
    "created_at",
    "finished_at",
)


class TaskAttemptInline(_TaskAttemptInlineBase):
    model = TaskAttempt
    extra = 0
    can_delete = False
    fields = _ATTEMPT_FIELDS
    readonly_fields = _ATTEMPT_FIELDS

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Task)
class TaskAdmin(_TaskAdminBase):
    list_display = [
        "id",
        "project",
        "key",
        "state",
        "priority",
        "attempts",
        "max_retries",
        "retry_at",
        "started_at",
        "finished_at",
    ]
    list_filter = ["state", "runtime", "agent_type"]
    search_fields = ["key", "title", "project__name"]
    list_select_related = ["project"]
    raw_id_fields = ["project"]
    readonly_fields = [
        "project",
        "key",
        "state",
        "attempts",
        "failures",
        "retry_at",
        "error",
        "depends_on",
        "created_at",
        "started_at",
        "finished_at",
    ]
    inlines = [TaskAttemptInline]
    actions = ["retry"]

    @admin.action(description="Retry the selected failed, cancelled or skipped tasks")
    def retry(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        actor = f"user:{request.user.get_username()}"
        _each(
            request,
            queryset,
            lambda t: task_retry(project_id=t.project_id, key=t.key, actor=actor),
            "retried",
        )
