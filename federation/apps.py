from typing import TYPE_CHECKING, Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate, post_save

if TYPE_CHECKING:
    from agents.models import AgentEvent


class FederationConfig(AppConfig):
    name = "federation"
    verbose_name = "Federation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # agents must not import federation, so federation listens for its events.
        post_save.connect(
            _agent_event_saved, sender="agents.AgentEvent", dispatch_uid="federation.relay"
        )
        post_migrate.connect(_after_migrate, sender=self, dispatch_uid="federation.setup")


def _agent_event_saved(
    sender: type["AgentEvent"], instance: "AgentEvent", created: bool, **kwargs: Any
) -> None:
    if created and not kwargs.get("raw"):
        from federation.relay import relay_event_recorded

        relay_event_recorded(agent_id=instance.agent_id)


def _after_migrate(sender: AppConfig, **kwargs: Any) -> None:
    """A new hub gets its signing key and its housekeeping schedules right after migrate."""
    from federation.identity import instance_key_ensure
    from orchestrator_site.schedules import schedule_ensure

    instance_key_ensure()
    for name, func, minutes in (
        ("federation-nonces-prune", "federation.tasks.nonces_prune", 5),
        ("federation-pending-peers-expire", "federation.tasks.pending_peers_expire", 60),
    ):
        schedule_ensure(name=name, func=func, minutes=minutes, update=False)
