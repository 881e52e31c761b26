from django.db import models


class GateStage(models.TextChoices):
    PRE_COMMIT = "pre-commit"
    PRE_PUSH = "pre-push"


class GateOutcome(models.TextChoices):
    PASSED = "passed"
    FAILED = "failed"
    WARNING = "warning"
    SKIPPED = "skipped"
    NOT_CONFIGURED = "not_configured"


class GateRun(models.Model):
    """One gate's verdict on one agent's change.

    ``agent_id`` is a plain UUID rather than a foreign key: gates sit below
    agents in the layering (DESIGN.md) and must not know the Agent model.
    """

    id = models.BigAutoField(primary_key=True)
    agent_id = models.UUIDField(db_index=True)
    stage = models.CharField(max_length=20, choices=GateStage.choices)
    profile = models.CharField(max_length=20)
    gate = models.CharField(max_length=50)
    outcome = models.CharField(max_length=20, choices=GateOutcome.choices)
    passed = models.BooleanField(help_text="False only when this gate blocked the change.")
    summary = models.CharField(max_length=500, blank=True)
    output_tail = models.TextField(blank=True)
    duration_s = models.FloatField(default=0)
    confidence = models.FloatField(null=True, blank=True, help_text="AI review only, in [0, 1].")
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["agent_id", "id"])]

    def __str__(self) -> str:
        return f"{self.agent_id} {self.stage} {self.gate}: {self.outcome}"
