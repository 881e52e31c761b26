"""Reads the dashboard needs, shaped as the JSON the pages and the relay share."""

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from importlib import metadata
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, QuerySet

from agents.models import Agent, AgentEvent, AgentEventKind
from agents.selectors import (
    agent_event_last_id,
    agent_events_page,
    agent_events_range,
    agent_facets,
    agent_list,
    agents_filtered,
    agents_owned_by,
)
from federation.documents import key_fingerprints
from federation.selectors import peer_list
from killswitch.selectors import hub_halt_get
from taskqueue.models import Project
from taskqueue.selectors import (
    progress_of,
    project_list,
    project_tasks,
    projects_live,
    projects_owned_by,
    projects_progress,
)

# The columns a page needs for one agent; the script and instructions stay behind.
_SUMMARY_FIELDS = (
    "id",
    "task_id",
    "state",
    "progress",
    "agent_type",
    "runtime",
    "repository",
    "base_branch",
    "work_branch",
    "node",
    "origin",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "cost_usd",
)
_EVENT_FIELDS = ("id", "agent_id", "kind", "data", "created_at")
# Agents per page of the agents list.
AGENTS_PAGE_SIZE = 50
# What a watched topic holds (dashboard/watch.py): section → row id → row.
Snapshot = dict[str, dict[str, Any]]


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def agent_summary(agent: Any) -> dict[str, Any]:
    """One agent as the pages show it; ``agent`` is a model or a ``values()`` row."""
    row = agent if isinstance(agent, dict) else {f: getattr(agent, f) for f in _SUMMARY_FIELDS}
    return {
        **{field: row[field] for field in _SUMMARY_FIELDS if not field.endswith("_at")},
        "id": str(row["id"]),
        "error": (row["error"] or "")[:300],
        "created_at": _iso(row["created_at"]),
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
        "cost_usd": f"{row['cost_usd'] or 0:.2f}",
    }


def agent_summaries(*, agent_ids: Iterable[Any]) -> dict[str, dict[str, Any]]:
    ids = list(set(agent_ids))
    if not ids:
        return {}
    rows = agent_list().filter(id__in=ids).values(*_SUMMARY_FIELDS)
    return {str(row["id"]): agent_summary(row) for row in rows}


def event_payload(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "agent_id": str(row["agent_id"]),
        "kind": row["kind"],
        "data": row["data"],
        "created_at": _iso(row["created_at"]),
    }


def event_rows(
    *,
    after: int,
    until: int | None = None,
    agent_id: uuid.UUID | None = None,
    kinds: list[str] | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    events = agent_events_range(
        after=after, until=until, agent_id=agent_id, kinds=kinds, limit=limit
    )
    return [event_payload(row) for row in events.values(*_EVENT_FIELDS)]


def event_page(
    *,
    after: int,
    until: int,
    max_bytes: int,
    agent_id: uuid.UUID | None = None,
    kinds: list[str] | None = None,
    limit: int = 1000,
    agents: QuerySet[Agent] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Events in ``(after, until]`` whose data stays within ``max_bytes`` (at least one).

    Only events of ``agents`` when given. Returns them and the id the page
    reaches: ``until`` when nothing is left.
    """
    page = agent_events_page(
        after=after,
        until=until,
        agent_id=agent_id,
        kinds=kinds,
        max_bytes=max_bytes,
        limit=limit,
        agents=agents,
    )
    rows = [event_payload(row) for row in page.events.values(*_EVENT_FIELDS)]
    return rows, page.next_after if page.has_more else until


# The model turns the usage chart reads at most (a run may take 10,000 turns).
MAX_USAGE_TURNS = 20_000
# The retries an agent's page links to.
MAX_RETRIES_LISTED = 20


@dataclass(frozen=True)
class UsageTurn:
    """What one model reply used and cost, and when the hub recorded it."""

    at: datetime
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _cost(value: Any) -> Decimal:
    try:
        cost = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)
    return cost if cost.is_finite() and cost > 0 else Decimal(0)


def agent_usage_turns(*, agent_id: uuid.UUID, limit: int = MAX_USAGE_TURNS) -> list[UsageTurn]:
    """The agent's model turns in order, each with its usage and cost.

    Every runtime that talks to a model records a ``transcript`` event per
    reply with ``usage`` (``Usage.as_dict()``) and ``cost_usd``: the claude
    runtime per assistant turn, the CLI runtimes per call through the model
    gateway. A CLI's own closing report carries usage but no cost and is
    not a turn. Only those two keys are read, not the transcript's text.
    """
    rows = (
        AgentEvent.objects.filter(
            agent_id=agent_id, kind=AgentEventKind.TRANSCRIPT, data__has_key="cost_usd"
        )
        .order_by("id")
        .values_list("created_at", "data__usage", "data__cost_usd")[:limit]
    )
    turns = []
    for at, usage, cost in rows:
        usage = usage if isinstance(usage, dict) else {}
        turns.append(
            UsageTurn(
                at=at,
                input_tokens=_count(usage.get("input_tokens")),
                output_tokens=_count(usage.get("output_tokens")),
                cache_read_tokens=_count(usage.get("cache_read_input_tokens")),
                cache_write_tokens=_count(usage.get("cache_creation_input_tokens")),
                cost_usd=_cost(cost),
            )
        )
    return turns


def agent_retry_links(*, agents: QuerySet[Agent], agent: Agent) -> dict[str, Any]:
    """Where ``agent`` came from (``options.retry_of``) and the retries of it, among ``agents``.

    ``agents`` is what the viewer may see (``agents_owned_by``); a retry keeps
    its agent's task id, so the lookup of retries stays on the task id index.
    """
    retry_of = str((agent.options or {}).get("retry_of") or "")
    try:
        origin = agents.filter(id=retry_of).values("id", "state").first() if retry_of else None
    except ValidationError:
        origin = None  # not an agent id: nothing to link to
    retries = (
        agents.filter(task_id=agent.task_id, options__retry_of=str(agent.id))
        .order_by("created_at", "id")
        .values("id", "state")[:MAX_RETRIES_LISTED]
    )
    return {
        "retry_of": _agent_link(origin) if origin else None,
        "retries": [_agent_link(row) for row in retries],
    }


def _agent_link(row: Mapping[str, Any]) -> dict[str, str]:
    return {"id": str(row["id"]), "state": row["state"]}


def board_agents(*, owner: str | None, filters: dict[str, Any]) -> dict[str, Any]:
    """The agents page: one page of ``owner``'s agents (everyone's for None) that pass ``filters``.

    Also the event id the page is current to (read first, so anything that
    changes while the rows are read is replayed by the live stream rather
    than lost) and what the filters offer. A count, one page of rows and
    three small DISTINCT queries, however many agents there are.
    """
    last_id = agent_event_last_id()
    visible = agents_owned_by(owner)
    chosen = agents_filtered(
        agents=visible,
        state=filters["state"],
        runtime=filters["runtime"],
        repository=filters["repository"],
        owner=filters["owner"],
        origin=filters["origin"],
        task_search=filters["task"],
    )
    page = Paginator(chosen.values(*_SUMMARY_FIELDS), AGENTS_PAGE_SIZE).get_page(filters["page"])
    return {
        "agents": [agent_summary(row) for row in page.object_list],
        "page": page,
        "last_event_id": last_id,
        "facets": agent_facets(agents=visible),
    }


def hub_footer() -> dict[str, str]:
    """What every page's footer names: the hub's version and this node."""
    return {"version": hub_version(), "node": settings.FLOTILLA_NODE_NAME}


def hub_version() -> str:
    try:
        return metadata.version("flotilla")
    except metadata.PackageNotFoundError:
        return "unknown"


def hub_banners() -> dict[str, Any]:
    halt = hub_halt_get()
    return {
        "yolo_mode": bool(getattr(settings, "YOLO_MODE", False)),
        "halted": halt.halted,
        "halt_reason": halt.reason,
        "halt_actor": halt.actor,
    }


def board_peers() -> list[dict[str, Any]]:
    """The peers page: every peer with how many of our agents it runs for us."""
    peers = peer_list().annotate(remote_agent_count=Count("remote_agents")).order_by("name")
    return [
        {
            "id": str(peer.id),
            "instance_id": peer.instance_id,
            "name": peer.name,
            "url": peer.url,
            "state": peer.state,
            "last_seen": peer.last_seen,
            "remote_agents": peer.remote_agent_count,
            # Compared with the peer's operator before an accept.
            "keys": key_fingerprints(peer.keys),
        }
        for peer in peers
    ]


# --- Projects -----------------------------------------------------------------

PROJECTS_BOARD_SIZE = 100


def _project_row(project: Any, progress: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": project.id,
        "name": project.name,
        "mode": project.mode,
        "state": project.state,
        "created_by": project.created_by,
        "created_at": _iso(project.created_at),
        "task_count": progress["total"],
        "progress": progress,
    }


def board_projects(*, owner: str | None) -> list[dict[str, Any]]:
    """The projects page: ``owner``'s newest projects (everyone's for None) and their progress.

    Two queries.
    """
    projects = list(project_list(projects=projects_owned_by(owner))[:PROJECTS_BOARD_SIZE])
    progress = projects_progress(project_ids=[project.id for project in projects])
    return [_project_row(project, progress[project.id]) for project in projects]


def _live_task(task: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": task["key"],
        "state": task["state"],
        "attempts": task["attempts"],
        "error": (task["error"] or "")[:300],
        "retry_at": _iso(task["retry_at"]),
        "agent_id": str(task["agent_id"]) if task["agent_id"] else None,
    }


def _live_project(live: dict[str, Any]) -> dict[str, Any]:
    project, tasks = live["project"], live["tasks"]
    return {
        "id": project["id"],
        "name": project["name"],
        "state": project["state"],
        "error": (project["error"] or "")[:300],
        "started_at": _iso(project["started_at"]),
        "finished_at": _iso(project["finished_at"]),
        "progress": progress_of(Counter(task["state"] for task in tasks.values())),
    }


def projects_live_snapshots(*, project_ids: Iterable[int]) -> dict[int, Snapshot]:
    """Per project, what its page shows live: ``{"project": {id: row}, "tasks": {key: row}}``.

    A project that no longer exists has empty sections. Three queries in all.
    """
    ids = list(project_ids)
    live = projects_live(project_ids=ids)
    snapshots: dict[int, Snapshot] = {}
    for project_id in ids:
        if project_id not in live:
            snapshots[project_id] = {"project": {}, "tasks": {}}
            continue
        tasks = live[project_id]["tasks"]
        snapshots[project_id] = {
            "project": {str(project_id): _live_project(live[project_id])},
            "tasks": {key: _live_task(task) for key, task in tasks.items()},
        }
    return snapshots


def projects_board_snapshot(*, owner: str | None) -> Snapshot:
    return {"projects": {str(row["id"]): row for row in board_projects(owner=owner)}}


def _latest_agent_id(task: Any) -> str | None:
    attempt = task.last_attempt
    return str(attempt.agent_id) if attempt and attempt.agent_id else None


def project_page(*, project: Project) -> dict[str, Any]:
    """A project's page: the project, its progress and every task with its dependencies."""
    tasks = project_tasks(project_id=project.id)
    progress = progress_of(Counter(task.state for task in tasks))
    graph = [
        {
            "key": task.key,
            "title": task.title,
            "state": task.state,
            "depends_on": task.dependency_keys,
            "priority": task.priority,
            "attempts": task.attempts,
            "error": (task.error or "")[:300],
            "agent_id": _latest_agent_id(task),
        }
        for task in tasks
    ]
    return {
        "project": {
            **_project_row(project, progress),
            "failure_policy": project.failure_policy,
            "max_parallel": project.max_parallel,
            "error": project.error,
            "started_at": _iso(project.started_at),
            "finished_at": _iso(project.finished_at),
        },
        "tasks": graph,
    }
