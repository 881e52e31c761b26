from django.db import models


class AuditEvent(models.Model):
    """An append-only record of who did what, to what, why and when."""

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.CharField(max_length=200, help_text="user:<name>, peer:<id>, system:<part>")
    action = models.CharField(max_length=100, db_index=True)
    target = models.CharField(max_length=200, blank=True, db_index=True)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target}"
