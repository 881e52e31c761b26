"""Reads the dashboard needs, shaped as the JSON the pages and the relay share."""

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db.models import Count

from agents.selectors import agent_event_last_id, agent_events_range, agent_list
from federation.selectors import peer_list
from killswitch.selectors import hub_halt_get

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
)
_EVENT_FIELDS = ("id", "agent_id", "kind", "data", "created_at")
BOARD_SIZE = 200


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
    agent_id: Any = None,
    kinds: list[str] | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    events = agent_events_range(
        after=after, until=until, agent_id=agent_id, kinds=kinds, limit=limit
    )
    return [event_payload(row) for row in events.values(*_EVENT_FIELDS)]


def board_agents() -> tuple[list[dict[str, Any]], int]:
    """The agents page: the newest agents and the event id the page is current to.

    The id is read first, so anything that changes while the rows are read is
    replayed by the live stream rather than lost.
    """
    last_id = agent_event_last_id()
    rows = agent_list().values(*_SUMMARY_FIELDS)[:BOARD_SIZE]
    return [agent_summary(row) for row in rows], last_id


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
        }
        for peer in peers
    ]
