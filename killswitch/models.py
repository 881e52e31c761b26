from django.db import models


class HubHalt(models.Model):
    """The hub's halt switch: one row, id 1. While halted, no new agent may start."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    halted = models.BooleanField(default=False)
    reason = models.TextField(blank=True)
    actor = models.CharField(max_length=200, blank=True)
    changed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="hub_halt_singleton")]

    def __str__(self) -> str:
        return "halted" if self.halted else "running"
