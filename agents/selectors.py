"""Reads on agents."""

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from agents.errors import AgentNotFound
from agents.models import LIVE_STATES, Agent, AgentEvent


def agent_get(*, agent_id: Any) -> Agent:
    try:
        return Agent.objects.get(id=agent_id)
    except (Agent.DoesNotExist, ValidationError, ValueError):
        raise AgentNotFound(f"no agent with id {agent_id}") from None


def agent_list(*, state: str | None = None, task_id: str | None = None) -> QuerySet[Agent]:
    agents = Agent.objects.all()
    if state:
        agents = agents.filter(state=state)
    if task_id:
        agents = agents.filter(task_id=task_id)
    return agents


def live_agent_ids() -> list[Any]:
    return list(Agent.objects.filter(state__in=LIVE_STATES).values_list("id", flat=True))


def agent_events_after(*, agent_id: Any, after: int = 0, limit: int = 500) -> QuerySet[AgentEvent]:
    return AgentEvent.objects.filter(agent_id=agent_id, id__gt=after).order_by("id")[:limit]


def agent_events_range(
    *,
    after: int,
    until: int | None = None,
    agent_id: Any = None,
    kinds: list[str] | None = None,
    limit: int = 1000,
) -> QuerySet[AgentEvent]:
    """Events of one agent or of all, with ``after < id <= until``, oldest first."""
    events = AgentEvent.objects.filter(id__gt=after)
    if until is not None:
        events = events.filter(id__lte=until)
    if agent_id is not None:
        events = events.filter(agent_id=agent_id)
    if kinds:
        events = events.filter(kind__in=kinds)
    return events.order_by("id")[:limit]


def agent_event_last_id() -> int:
    return AgentEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
