from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from taskqueue.errors import ProjectError
from taskqueue.models import Project, Task, TaskAttempt
from taskqueue.services import project_cancel, project_pause, project_resume, task_retry


def _each(request: HttpRequest, items: QuerySet, action, label: str) -> None:
    done = 0
    for item in items:
        try:
            action(item)
            done += 1
        except ProjectError as error:
            messages.warning(request, str(error))
    messages.info(request, f"{label}: {done}")


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
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
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
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
    def pause(self, request: HttpRequest, queryset: QuerySet) -> None:
        _each(
            request,
            queryset,
            lambda p: project_pause(project_id=p.id, actor=self.actor(request)),
            "paused",
        )

    @admin.action(description="Resume the selected projects")
    def resume(self, request: HttpRequest, queryset: QuerySet) -> None:
        _each(
            request,
            queryset,
            lambda p: project_resume(project_id=p.id, actor=self.actor(request)),
            "resumed",
        )


class TaskAttemptInline(admin.TabularInline):
    model = TaskAttempt
    extra = 0
    can_delete = False
    fields = [
        "number",
        "state",
        "agent",
        "base_branch",
        "backoff_s",
        "error",
        "created_at",
        "finished_at",
    ]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
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
    def retry(self, request: HttpRequest, queryset: QuerySet) -> None:
        actor = f"user:{request.user.get_username()}"
        _each(
            request,
            queryset,
            lambda t: task_retry(project_id=t.project_id, key=t.key, actor=actor),
            "retried",
        )
