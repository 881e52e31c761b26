"""Projects: DAGs of agent tasks that the hub schedules durably."""

from django.db import models


class ProjectMode(models.TextChoices):
    SEQUENTIAL = "sequential"
    PARALLEL = "parallel"
    DAG = "dag"


class ProjectState(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


PROJECT_OPEN_STATES = (ProjectState.PENDING, ProjectState.RUNNING, ProjectState.PAUSED)


class FailurePolicy(models.TextChoices):
    FAIL_FAST = "fail_fast"
    CONTINUE = "continue"


class WebhookState(models.TextChoices):
    NONE = "none"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Project(models.Model):
    id = models.BigAutoField(primary_key=True)
    name = models.CharField(max_length=200)
    mode = models.CharField(max_length=20, choices=ProjectMode.choices, default=ProjectMode.DAG)
    state = models.CharField(
        max_length=20, choices=ProjectState.choices, default=ProjectState.PENDING, db_index=True
    )
    failure_policy = models.CharField(
        max_length=20, choices=FailurePolicy.choices, default=FailurePolicy.CONTINUE
    )
    max_parallel = models.PositiveIntegerField(
        default=0, help_text="Tasks of this project running at once; 0 means the hub's limit."
    )
    webhook_url = models.URLField(max_length=1000, blank=True)
    webhook_secret = models.CharField(max_length=200, blank=True)
    webhook_state = models.CharField(
        max_length=20, choices=WebhookState.choices, default=WebhookState.NONE
    )
    webhook_attempts = models.PositiveIntegerField(default=0)
    webhook_next_at = models.DateTimeField(null=True, blank=True)
    webhook_error = models.TextField(blank=True)
    webhook_delivered_at = models.DateTimeField(null=True, blank=True)
    # When a waker task is due to dispatch again (a backoff or a not-before
    # time ends); lets the dispatcher avoid queueing a second waker.
    wake_at = models.DateTimeField(null=True, blank=True)
    created_by = models.CharField(max_length=200)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(webhook_url="") | models.Q(webhook_secret=""),
                name="project_webhook_secret_needs_url",
            ),
        ]

    def __str__(self) -> str:
        return f"project {self.id} {self.name} ({self.state})"


class TaskState(models.TextChoices):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


TASK_OPEN_STATES = (TaskState.PENDING, TaskState.READY, TaskState.RUNNING)
TASK_FINAL_STATES = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.SKIPPED)


class Task(models.Model):
    id = models.BigAutoField(primary_key=True)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    key = models.CharField(max_length=64)
    title = models.CharField(max_length=200, blank=True)
    instructions = models.TextField(blank=True)
    agent_type = models.CharField(max_length=20, default="worker")
    runtime = models.CharField(max_length=20, default="script")
    script = models.TextField(blank=True)
    repository = models.CharField(
        max_length=1000, blank=True, help_text="Empty: a scratch repository of the project."
    )
    branch = models.CharField(max_length=250, default="main")
    depends_on = models.ManyToManyField(
        "self", symmetrical=False, related_name="dependents", blank=True
    )
    priority = models.PositiveSmallIntegerField(default=5)
    max_retries = models.PositiveSmallIntegerField(default=0)
    backoff_base_s = models.FloatField(default=10.0)
    backoff_cap_s = models.FloatField(default=300.0)
    backoff_jitter = models.FloatField(
        default=0.1, help_text="Each delay is shortened by up to this fraction, at random."
    )
    timeout_s = models.PositiveIntegerField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True)
    gate_profile = models.CharField(max_length=20, default="standard")
    state = models.CharField(
        max_length=20, choices=TaskState.choices, default=TaskState.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0, help_text="Agents started, in total.")
    failures = models.PositiveIntegerField(
        default=0, help_text="Failed attempts since the task was last (re)started by hand."
    )
    retry_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Not stored: taskqueue.selectors.project_tasks fills these in for pages
    # and answers that show a task's dependencies and latest attempt.
    dependency_keys: list[str]
    last_attempt: "TaskAttempt | None"

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "key"], name="task_key_unique_in_project"),
            models.CheckConstraint(
                condition=models.Q(priority__gte=1, priority__lte=10), name="task_priority_1_to_10"
            ),
        ]
        indexes = [models.Index(fields=["project", "state"])]

    def __str__(self) -> str:
        return f"{self.project_id}/{self.key} ({self.state})"


class AttemptState(models.TextChoices):
    PREPARING = "preparing"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskAttempt(models.Model):
    """One agent run of a task. ``preparing`` means claimed, branch being built, no agent yet."""

    id = models.BigAutoField(primary_key=True)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="attempt_runs")
    number = models.PositiveIntegerField()
    state = models.CharField(
        max_length=20, choices=AttemptState.choices, default=AttemptState.PREPARING, db_index=True
    )
    agent = models.ForeignKey(
        "agents.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    base_branch = models.CharField(max_length=250, blank=True)
    error = models.TextField(blank=True)
    backoff_s = models.FloatField(
        null=True, blank=True, help_text="The delay chosen before the next attempt."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["task_id", "number"]
        constraints = [
            models.UniqueConstraint(fields=["task", "number"], name="attempt_number_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} attempt {self.number} ({self.state})"
