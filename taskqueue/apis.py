"""REST endpoints for projects: parse, call one service, shape the answer."""

from typing import Any

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.idempotency import idempotent
from agents.selectors import viewer_principal
from taskqueue import branches
from taskqueue.artifacts import project_artifacts_archive
from taskqueue.errors import ProjectInvalid
from taskqueue.models import Project, ProjectState, Task
from taskqueue.planner import project_plan
from taskqueue.selectors import (
    project_get,
    project_list,
    project_progress,
    project_result,
    project_tasks,
    project_visible_get,
    projects_visible_to,
)
from taskqueue.serializers import BRANCH, ProjectInputSerializer, errors_flatten
from taskqueue.services import (
    project_cancel,
    project_create,
    project_pause,
    project_resume,
    task_retry,
)


def principal(request: Request) -> str:
    return viewer_principal(request.user)


class TaskOutputSerializer(serializers.Serializer[Task]):
    key = serializers.CharField()
    title = serializers.CharField()
    state = serializers.CharField()
    priority = serializers.IntegerField()
    depends_on = serializers.ListField(source="dependency_keys", child=serializers.CharField())
    agent_type = serializers.CharField()
    runtime = serializers.CharField()
    repository = serializers.CharField()
    branch = serializers.CharField()
    attempts = serializers.IntegerField()
    max_retries = serializers.IntegerField()
    retry_at = serializers.DateTimeField(allow_null=True)
    not_before = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField()
    agent_id = serializers.SerializerMethodField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_agent_id(self, task: Task) -> str | None:
        attempt = task.last_attempt
        return str(attempt.agent_id) if attempt and attempt.agent_id else None


class ProjectSummarySerializer(serializers.Serializer[Project]):
    id = serializers.IntegerField()
    name = serializers.CharField()
    mode = serializers.CharField()
    state = serializers.CharField()
    failure_policy = serializers.CharField()
    max_parallel = serializers.IntegerField()
    webhook_url = serializers.CharField()
    webhook_state = serializers.CharField()
    created_by = serializers.CharField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class ProjectDetailSerializer(ProjectSummarySerializer):
    progress = serializers.JSONField()
    tasks = TaskOutputSerializer(many=True)


def project_detail(project_id: int) -> dict[str, Any]:
    data = dict(ProjectSummarySerializer(project_get(project_id=project_id)).data)
    data["progress"] = project_progress(project_id=project_id)
    tasks = project_tasks(project_id=project_id)
    # The stubs type a serializer's instance as one object, even with many=True.
    data["tasks"] = TaskOutputSerializer(tasks, many=True).data  # type: ignore[arg-type]
    return data


class ProjectListApi(APIView):
    class Pagination(LimitOffsetPagination):
        default_limit = 100
        max_limit = 1000

    class FilterSerializer(serializers.Serializer[dict[str, Any]]):
        state = serializers.ChoiceField(choices=ProjectState.choices, required=False)

    @extend_schema(
        parameters=[FilterSerializer],
        responses={200: ProjectSummarySerializer(many=True)},
        operation_id="projects_list",
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        paginator = self.Pagination()
        visible = projects_visible_to(request.user)
        projects = project_list(projects=visible, **filters.validated_data)
        page = paginator.paginate_queryset(projects, request, self)
        # The stubs type a serializer's instance as one object, even with many=True.
        rows = ProjectSummarySerializer(page, many=True)  # type: ignore[arg-type]
        return paginator.get_paginated_response(rows.data)


class ProjectCreateApi(APIView):
    @extend_schema(
        request=ProjectInputSerializer,
        responses={201: ProjectDetailSerializer},
        operation_id="projects_create",
    )
    @idempotent
    def post(self, request: Request) -> Response:
        tasks = request.data.get("tasks") if isinstance(request.data, dict) else None
        limit = settings.FLOTILLA_PROJECT_MAX_TASKS
        if isinstance(tasks, list) and len(tasks) > limit:
            raise ProjectInvalid(
                "The project is too large.",
                fields={
                    "tasks": [f"a project has at most {limit} tasks; this one has {len(tasks)}"]
                },
            )
        serializer = ProjectInputSerializer(data=request.data)
        if not serializer.is_valid():
            # Flattened here so task errors read "tasks[2].key" like the graph's own.
            fields = errors_flatten(serializer.errors)
            raise ProjectInvalid("The project is not valid.", fields=fields)
        project = project_create(spec=serializer.spec(), created_by=principal(request))
        body = project_detail(project.id)
        if project.webhook_url and "webhook_secret" not in serializer.validated_data:
            body["webhook_secret"] = project.webhook_secret  # shown once, when generated
        return Response(body, status=status.HTTP_201_CREATED)


class ProjectCollectionApi(ProjectListApi, ProjectCreateApi):
    """``/projects``: GET lists, POST creates."""


class ProjectDetailApi(APIView):
    @extend_schema(responses={200: ProjectDetailSerializer}, operation_id="projects_retrieve")
    def get(self, request: Request, project_id: int) -> Response:
        project = project_visible_get(viewer=request.user, project_id=project_id)
        return Response(project_detail(project.id))


class ProjectResultApi(APIView):
    @extend_schema(
        responses={
            200: inline_serializer(
                "ProjectResult",
                {
                    "id": serializers.IntegerField(),
                    "state": serializers.CharField(),
                    "tasks": serializers.ListField(child=serializers.DictField()),
                },
            )
        },
        operation_id="projects_result",
    )
    def get(self, request: Request, project_id: int) -> Response:
        project = project_visible_get(viewer=request.user, project_id=project_id)
        return Response(project_result(project_id=project.id))


class ProjectCancelApi(APIView):
    class InputSerializer(serializers.Serializer[dict[str, Any]]):
        reason = serializers.CharField(max_length=1000, default="", allow_blank=True)

    @extend_schema(
        request=InputSerializer,
        responses={200: ProjectDetailSerializer},
        operation_id="projects_cancel",
    )
    def post(self, request: Request, project_id: int) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        project_id = project_visible_get(viewer=request.user, project_id=project_id).id
        project_cancel(
            project_id=project_id,
            actor=principal(request),
            reason=serializer.validated_data["reason"],
        )
        return Response(project_detail(project_id))


class ProjectPauseApi(APIView):
    @extend_schema(
        request=None, responses={200: ProjectDetailSerializer}, operation_id="projects_pause"
    )
    def post(self, request: Request, project_id: int) -> Response:
        project_id = project_visible_get(viewer=request.user, project_id=project_id).id
        project_pause(project_id=project_id, actor=principal(request))
        return Response(project_detail(project_id))


class ProjectResumeApi(APIView):
    @extend_schema(
        request=None, responses={200: ProjectDetailSerializer}, operation_id="projects_resume"
    )
    def post(self, request: Request, project_id: int) -> Response:
        project_id = project_visible_get(viewer=request.user, project_id=project_id).id
        project_resume(project_id=project_id, actor=principal(request))
        return Response(project_detail(project_id))


class TaskRetryApi(APIView):
    @extend_schema(
        request=None, responses={200: ProjectDetailSerializer}, operation_id="projects_task_retry"
    )
    def post(self, request: Request, project_id: int, key: str) -> Response:
        project_id = project_visible_get(viewer=request.user, project_id=project_id).id
        task_retry(project_id=project_id, key=key, actor=principal(request))
        return Response(project_detail(project_id))


class ProjectArtifactsApi(APIView):
    @extend_schema(responses={(200, "application/gzip"): bytes}, operation_id="projects_artifacts")
    def get(self, request: Request, project_id: int) -> HttpResponse:
        project_id = project_visible_get(viewer=request.user, project_id=project_id).id
        archive = project_artifacts_archive(project_id=project_id)
        response = HttpResponse(archive, content_type="application/gzip")
        response["Content-Disposition"] = f'attachment; filename="project-{project_id}.tar.gz"'
        return response


class ProjectPlanApi(APIView):
    class InputSerializer(serializers.Serializer[dict[str, Any]]):
        goal = serializers.CharField(max_length=20_000)
        repository = serializers.CharField(max_length=1000)
        branch = serializers.RegexField(BRANCH, max_length=250, default="main")

        def validate_repository(self, value: str) -> str:
            problem = branches.repository_problem(repository=value)
            if problem:
                raise serializers.ValidationError(problem)
            return value

    @extend_schema(
        request=InputSerializer,
        responses={200: ProjectInputSerializer},
        operation_id="projects_plan",
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response(project_plan(**serializer.validated_data))
