"""Reads on agents, and who owns them (DESIGN.md, "Ownership").

Every view, consumer and download that shows or acts on an agent for someone
finds it through ``agents_visible_to`` / ``agent_visible_get``: staff see every
agent, anyone else only their own, and an agent of someone else is not found
(404), so its id does not leak. ``agent_get`` and ``agent_list`` are the hub's
own unscoped reads, for services and background work. The diff and the patch
of an agent's work are read from the mirror in ``agents.diff_selectors`` and
re-exported here.
"""

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.db.models import Count, Func, IntegerField, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils.module_loading import import_string

from agents.diff_selectors import AgentDiff as AgentDiff
from agents.diff_selectors import AgentPatch as AgentPatch
from agents.diff_selectors import DiffFile as DiffFile
from agents.diff_selectors import agent_diff as agent_diff
from agents.diff_selectors import agent_diff_text as agent_diff_text
from agents.diff_selectors import agent_patch as agent_patch
from agents.diff_selectors import agent_patch_attempts as agent_patch_attempts
from agents.errors import AgentNotFound
from agents.models import LIVE_STATES, Agent, AgentEvent, AgentEventKind


class Principal(Protocol):
    """Someone the hub acts for who is not a user: a peer hub, which names itself.

    ``federation.authentication.PeerPrincipal`` is one.
    """

    @property
    def is_authenticated(self) -> bool: ...

    @property
    def is_staff(self) -> bool: ...

    def get_username(self) -> str: ...


# Who asks: ``request.user`` of a view (DRF leaves None when no credentials
# came), ``scope["user"]`` of a WebSocket, or a peer's principal.
Viewer = AbstractBaseUser | AnonymousUser | Principal | None


def viewer_principal(viewer: Viewer) -> str:
    """The name work is recorded under: ``user:<username>``, or what a peer calls itself.

    Empty for someone not authenticated, who owns nothing.
    """
    if viewer is None or not viewer.is_authenticated:
        return ""
    if isinstance(viewer, AbstractBaseUser):
        return f"user:{viewer.get_username()}"
    return viewer.get_username()


def viewer_owner(viewer: Viewer) -> str | None:
    """Whose work ``viewer`` sees: None for everyone's (staff), else their principal."""
    if viewer is not None and viewer.is_authenticated and getattr(viewer, "is_staff", False):
        return None
    return viewer_principal(viewer)


def agents_owned_by(owner: str | None) -> QuerySet[Agent]:
    """The agents ``owner`` asked for, directly or through a delegate; every agent for None.

    A delegate spawns agents on someone's behalf under a principal of its
    own: the dispatcher records a project's agents as ``project:<id>``, and
    they belong to whoever created the project. Higher layers name their
    delegates in ``FLOTILLA_AGENT_DELEGATES`` (each a query of principals).
    """
    if owner is None:
        return Agent.objects.all()
    if not owner:
        return Agent.objects.none()
    owned = Q(requested_by=owner)
    for path in settings.FLOTILLA_AGENT_DELEGATES:
        owned |= Q(requested_by__in=import_string(path)(owner=owner))
    return Agent.objects.filter(owned)


def agents_visible_to(viewer: Viewer) -> QuerySet[Agent]:
    return agents_owned_by(viewer_owner(viewer))


def agent_visible_get(*, viewer: Viewer, agent_id: uuid.UUID | str) -> Agent:
    """The agent, if ``viewer`` may see it; otherwise ``AgentNotFound``, as if it did not exist.

    ``agent_id`` may be the text a URL or a peer's request carries: one that is
    no UUID is not found either.
    """
    try:
        return agents_visible_to(viewer).get(id=agent_id)
    except (Agent.DoesNotExist, ValidationError, ValueError):
        raise AgentNotFound(f"no agent with id {agent_id}") from None


def agent_get(*, agent_id: uuid.UUID | str) -> Agent:
    """The agent, or ``AgentNotFound``; ``agent_id`` may be text (a command line, a signal)."""
    try:
        return Agent.objects.get(id=agent_id)
    except (Agent.DoesNotExist, ValidationError, ValueError):
        raise AgentNotFound(f"no agent with id {agent_id}") from None


def agent_list(
    *,
    state: str | None = None,
    task_id: str | None = None,
    agents: QuerySet[Agent] | None = None,
) -> QuerySet[Agent]:
    """``agents`` (every agent when None) in ``state`` and of ``task_id``, when given."""
    agents = Agent.objects.all() if agents is None else agents
    if state:
        agents = agents.filter(state=state)
    if task_id:
        agents = agents.filter(task_id=task_id)
    return agents


def live_agent_ids() -> list[uuid.UUID]:
    return list(Agent.objects.filter(state__in=LIVE_STATES).values_list("id", flat=True))


def agent_events_after(
    *, agent_id: uuid.UUID, after: int = 0, limit: int = 500
) -> QuerySet[AgentEvent]:
    return AgentEvent.objects.filter(agent_id=agent_id, id__gt=after).order_by("id")[:limit]


def agent_events_range(
    *,
    after: int,
    until: int | None = None,
    agent_id: uuid.UUID | None = None,
    kinds: list[str] | None = None,
    limit: int = 1000,
) -> QuerySet[AgentEvent]:
    """Events of one agent or of all, with ``after < id <= until``, oldest first."""
    return _events_between(after=after, until=until, agent_id=agent_id, kinds=kinds)[:limit]


def _events_between(
    *,
    after: int,
    until: int | None,
    agent_id: uuid.UUID | None,
    kinds: list[str] | None,
    agents: QuerySet[Agent] | None = None,
) -> QuerySet[AgentEvent]:
    events = AgentEvent.objects.filter(id__gt=after)
    if until is not None:
        events = events.filter(id__lte=until)
    if agent_id is not None:
        events = events.filter(agent_id=agent_id)
    if agents is not None:
        events = events.filter(agent__in=agents.values("id"))
    if kinds:
        events = events.filter(kind__in=kinds)
    return events.order_by("id")


class JsonBytes(Func):
    """The size in bytes of a JSON column as the database holds it, measured by the database.

    Django stores JSON on SQLite as ASCII text with escapes, and PostgreSQL's
    ``jsonb::text`` adds spaces, so this is never less than the compact UTF-8
    JSON a client receives: a page measured with it is never larger than said.
    """

    output_field = IntegerField()
    template = "LENGTH(CAST(%(expressions)s AS BLOB))"

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler, connection, template="OCTET_LENGTH((%(expressions)s)::text)", **extra
        )


# What an event adds to its data in a page: id, kind, agent, time, keys and punctuation.
EVENT_ENVELOPE_BYTES = 200


@dataclass(frozen=True)
class EventPage:
    """Events in id order, and where the next page starts: ask again ``after=next_after``."""

    events: QuerySet[AgentEvent]
    next_after: int
    has_more: bool


def agent_events_page(
    *,
    after: int,
    max_bytes: int,
    until: int | None = None,
    agent_id: uuid.UUID | None = None,
    kinds: list[str] | None = None,
    limit: int = 1000,
    agents: QuerySet[Agent] | None = None,
) -> EventPage:
    """Events after ``after`` until their data would pass ``max_bytes``; at least one.

    Only events of ``agents`` when given (a viewer's, ``agents_visible_to``).
    The sizes are read first (ids and lengths only), so an old log with one
    huge row is never loaded whole just to find out that it is too big.
    """
    matching = _events_between(
        after=after, until=until, agent_id=agent_id, kinds=kinds, agents=agents
    )
    sizes = list(matching.annotate(size=JsonBytes("data")).values_list("id", "size")[: limit + 1])
    taken, total = 0, 0
    last_id = after
    for event_id, size in sizes[:limit]:
        total += (size or 0) + EVENT_ENVELOPE_BYTES
        if taken and total > max_bytes:
            break
        taken, last_id = taken + 1, event_id
    return EventPage(
        events=matching.filter(id__lte=last_id) if taken else matching.none(),
        next_after=last_id,
        has_more=taken < len(sizes),
    )


def agent_output_bytes(*, agent_id: uuid.UUID) -> int:
    """How many bytes of output the agent has stored so far (earlier runs included)."""
    stored = AgentEvent.objects.filter(agent_id=agent_id, kind=AgentEventKind.OUTPUT).aggregate(
        total=Sum(JsonBytes("data"))
    )
    return stored["total"] or 0


def agent_event_last_id() -> int:
    return AgentEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


# --- The dashboard's reads: the filtered list, the spawn form, the plots ---


def agents_filtered(
    *,
    agents: QuerySet[Agent],
    state: str = "",
    runtime: str = "",
    repository: str = "",
    owner: str = "",
    origin: str = "",
    task_search: str = "",
) -> QuerySet[Agent]:
    """``agents`` narrowed by each filter that is given, newest first.

    ``owner`` keeps the agents that principal owns, those of its delegates
    included (``agents_owned_by``); ``task_search`` matches part of a task id.
    Only the agents the caller passed in are ever returned, so a filter can
    narrow what a viewer sees but never widen it.
    """
    if state:
        agents = agents.filter(state=state)
    if runtime:
        agents = agents.filter(runtime=runtime)
    if repository:
        agents = agents.filter(repository=repository)
    if origin:
        agents = agents.filter(origin=origin)
    if task_search:
        agents = agents.filter(task_id__icontains=task_search)
    if owner:
        agents = agents & agents_owned_by(owner)
    return agents.order_by("-created_at", "-id")


def agent_facets(*, agents: QuerySet[Agent], limit: int = 200) -> dict[str, list[str]]:
    """The repositories, owners and origins among ``agents``: what the filters offer.

    Three DISTINCT queries, each bounded by ``limit``.
    """

    def distinct(field: str) -> list[str]:
        values = agents.order_by(field).values_list(field, flat=True).distinct()[:limit]
        return [value for value in values if value]

    return {
        "repository": distinct("repository"),
        "owner": distinct("requested_by"),
        "origin": distinct("origin"),
    }


@dataclass(frozen=True)
class RuntimeChoice:
    name: str
    unavailable: str | None  # why this hub cannot run it now, or None


def spawn_choices() -> dict[str, Any]:
    """What a spawn may ask for on this hub: runtimes (and why one is missing), limits.

    Each limit is ``{"default", "maximum", "setting"}`` as ``agents.limits``
    holds it; the API's serializer checks the same maxima.
    """
    # The runtimes import their SDKs; only a page that offers them pays for it.
    from agents.limits import _DEFAULTS, MAXIMA, limit_maximum
    from agents.runtimes import RUNTIMES, runtime_unavailable

    return {
        "runtimes": [RuntimeChoice(name, runtime_unavailable(name)) for name in RUNTIMES],
        "limits": {
            name: {
                "default": getattr(settings, _DEFAULTS[name]),
                "maximum": limit_maximum(name),
                "setting": setting,
            }
            for name, setting in MAXIMA.items()
        },
        "egress_allowlist": settings.FLOTILLA_EGRESS_ALLOWLIST,
    }


def agents_per_day(*, agents: QuerySet[Agent], since: Any) -> list[dict[str, Any]]:
    """Per day (of ``created_at``, from ``since``) and state: how many agents and their cost.

    One grouped query: ``{"day", "state", "count", "cost_usd"}`` rows.
    """
    rows = (
        agents.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .order_by()
        .values("day", "state")
        .annotate(count=Count("id"), cost_usd=Sum("cost_usd"))
        .order_by("day", "state")
    )
    return list(rows)
