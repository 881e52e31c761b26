"""The body of a project as the API accepts it; the planner checks its proposals with it too."""

from typing import Any

from django.conf import settings
from rest_framework import serializers

from netguard.outbound import url_refusal
from taskqueue import branches
from taskqueue.models import FailurePolicy, ProjectMode
from taskqueue.services import ProjectSpec, TaskSpec

GATE_PROFILES = ["strict", "standard", "minimal"]
AGENT_TYPES = ["worker", "reviewer", "tester"]
RUNTIMES = ["script", "claude"]
BRANCH = r"^(?!/|.*(?:\.\.|//|@\{|\.lock$|/$))[A-Za-z0-9._/-]+$"


class TaskInputSerializer(serializers.Serializer[dict[str, Any]]):
    key = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        error_messages={"invalid": "1-64 letters, digits, _ or -, starting with a letter or digit"},
    )
    title = serializers.CharField(max_length=200, default="", allow_blank=True)
    instructions = serializers.CharField(max_length=100_000, default="", allow_blank=True)
    agent_type = serializers.ChoiceField(choices=AGENT_TYPES, default="worker")
    runtime = serializers.ChoiceField(choices=RUNTIMES, default="script")
    script = serializers.CharField(max_length=100_000, default="", allow_blank=True)
    repository = serializers.CharField(max_length=1000, default="", allow_blank=True)
    branch = serializers.RegexField(BRANCH, max_length=250, default="main")
    depends_on = serializers.ListField(
        child=serializers.CharField(max_length=64), default=list, max_length=1000
    )
    priority = serializers.IntegerField(min_value=1, max_value=10, default=5)
    max_retries = serializers.IntegerField(min_value=0, max_value=20, default=0)
    backoff_base_s = serializers.FloatField(min_value=0, max_value=86400, default=10.0)
    backoff_cap_s = serializers.FloatField(min_value=0, max_value=86400, default=300.0)
    backoff_jitter = serializers.FloatField(min_value=0, max_value=1, default=0.1)
    timeout_s = serializers.IntegerField(
        min_value=1, max_value=settings.FLOTILLA_AGENT_MAX_RUNTIME_S, required=False
    )
    not_before = serializers.DateTimeField(required=False)
    gate_profile = serializers.ChoiceField(choices=GATE_PROFILES, default="standard")

    def validate_repository(self, value: str) -> str:
        problem = branches.repository_problem(repository=value) if value else None
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if data["runtime"] == "script" and not data["script"].strip():
            raise serializers.ValidationError({"script": ["a script task needs a script"]})
        if data["runtime"] == "claude" and not (data["instructions"] or data["title"]).strip():
            raise serializers.ValidationError(
                {"instructions": ["a claude task needs instructions"]}
            )
        return data


class ProjectInputSerializer(serializers.Serializer[dict[str, Any]]):
    name = serializers.CharField(max_length=200)
    mode = serializers.ChoiceField(choices=ProjectMode.choices, default=ProjectMode.DAG)
    failure_policy = serializers.ChoiceField(
        choices=[*FailurePolicy.values, "fail-fast"], default=FailurePolicy.CONTINUE
    )
    max_parallel = serializers.IntegerField(min_value=0, max_value=10_000, default=0)
    webhook_url = serializers.URLField(max_length=1000, default="", allow_blank=True)
    webhook_secret = serializers.CharField(min_length=16, max_length=200, required=False)
    paused = serializers.BooleanField(
        default=False, help_text="Create it paused; resume starts it."
    )
    # djangorestframework-stubs omit the ListSerializer arguments (max_length)
    # that many=True hands on.
    tasks = TaskInputSerializer(many=True, max_length=10_000)  # type: ignore[call-arg]

    def validate_failure_policy(self, value: str) -> str:
        return value.replace("-", "_")

    def validate_webhook_url(self, value: str) -> str:
        # Judged again at each delivery: a name may resolve elsewhere by then.
        problem = url_refusal(value) if value else None
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("webhook_secret") and not data["webhook_url"]:
            raise serializers.ValidationError({"webhook_secret": ["needs a webhook_url"]})
        return data

    def spec(self) -> ProjectSpec:
        data = dict(self.validated_data)
        tasks = [TaskSpec(**task) for task in data.pop("tasks")]
        return ProjectSpec(tasks=tasks, **data)


def errors_flatten(detail: object, prefix: str = "") -> dict[str, list[str]]:
    """Serializer errors as ``{"tasks[2].key": [...]}``, the shape the API answers with."""
    if isinstance(detail, dict):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            if isinstance(key, int):  # a ListSerializer's errors, by item index
                name = f"{prefix}[{key}]"
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            flat.update(errors_flatten(value, name))
        return flat
    if isinstance(detail, list) and any(isinstance(item, dict | list) for item in detail):
        flat = {}
        for index, item in enumerate(detail):
            if item:
                flat.update(errors_flatten(item, f"{prefix}[{index}]"))
        return flat
    items = detail if isinstance(detail, list) else [detail]
    return {prefix or "non_field_errors": [str(item) for item in items]}
