"""The event relay: tails the ``AgentEvent`` table and fans events out to WebSocket groups.

One relay runs inside each web process, on its event loop. Every tick it runs
one query for the events after its watermark, whoever wrote them (a worker
process, another web process), and sends each batch once per group: the
agents board (``dashboard.agents``, state changes only) and one group per agent
(``dashboard.agent.<hex>``, everything). Consumers never query per tick, so
the cost is one query per tick per process however many browsers watch.

The watermark only moves over a gap-free run of ids. On PostgreSQL ids are
taken at INSERT but become visible at COMMIT, so id 11 may be visible before
id 10; the relay holds back until 10 appears or ``gap_wait_s`` passes (a
rolled-back insert leaves a hole that never fills). A consumer that replays
``(after, watermark]`` from the table and then takes live batches therefore
sees every event exactly once. SQLite serialises writers, so ids commit in
order there and no wait is needed.
"""

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection

from agents.selectors import agent_event_last_id
from dashboard.selectors import agent_summaries, event_rows

logger = logging.getLogger(__name__)

BOARD_GROUP = "dashboard.agents"
BOARD_KINDS = ["state"]
# Per-group "last message" ids let a consumer notice that a message to it was
# dropped (a full channel); a few thousand recent groups are plenty.
_GROUP_MEMORY = 5000


def agent_group(agent_id: uuid.UUID | str) -> str:
    # Frames carry ids as text; a consumer names its agent by its UUID.
    return f"dashboard.agent.{str(agent_id).replace('-', '')}"


def frame_text(
    *, events: list[dict[str, Any]], agents: dict[str, dict[str, Any]], last_id: int
) -> str:
    return json.dumps(
        {"type": "batch", "events": events, "agents": agents, "last_id": last_id},
        separators=(",", ":"),
    )


def frame_chunks(events: list[dict[str, Any]], max_bytes: int) -> list[list[dict[str, Any]]]:
    """``events`` in runs whose JSON stays within ``max_bytes``; an event larger goes alone."""
    chunks: list[list[dict[str, Any]]] = [[]]
    size = 0
    for event in events:
        event_size = len(json.dumps(event, separators=(",", ":")))
        if chunks[-1] and size + event_size > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(event)
        size += event_size
    return chunks


@dataclass
class Batch:
    """What one tick found: events in id order, and summaries of agents that changed state."""

    events: list[dict[str, Any]]
    agents: dict[str, dict[str, Any]]


class EventRelay:
    def __init__(
        self,
        *,
        interval_s: float,
        batch_size: int,
        gap_wait_s: float,
        frame_bytes: int = 1024 * 1024,
    ) -> None:
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.gap_wait_s = gap_wait_s
        self.frame_bytes = frame_bytes
        self.watermark = 0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._gap: tuple[int, float] | None = None
        self._group_last: OrderedDict[str, int] = OrderedDict()
        # One thread, hence one database connection, for every tail query.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-relay")

    async def ensure_running(self) -> int:
        """Start tailing in this event loop if not yet; return the current watermark."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return self.watermark
        starting = self._starting
        if starting is not None and not starting.done() and starting.get_loop() is loop:
            await asyncio.shield(starting)
            return self.watermark
        self._starting = loop.create_future()
        try:
            self.watermark = await loop.run_in_executor(self._executor, self._last_id)
            self._gap = None
            self._task = loop.create_task(self._run(), name="dashboard-event-relay")
        finally:
            self._starting.set_result(None)
        return self.watermark

    def group_last(self, group: str) -> int:
        return self._group_last.get(group, 0)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        layer = get_channel_layer()
        while True:
            try:
                batch = await loop.run_in_executor(self._executor, self._fetch, self.watermark)
            except Exception:
                logger.exception("the dashboard relay could not read events; retrying")
                await asyncio.sleep(max(self.interval_s, 0.5))
                continue
            self.ticks += 1
            ready = self._gap_free_prefix(batch.events, time.monotonic())
            if ready:
                await self._publish(layer, ready, batch.agents)
            full = len(batch.events) == self.batch_size and len(ready) == len(batch.events)
            await asyncio.sleep(0 if full else self.interval_s)

    def _gap_free_prefix(self, events: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        ready: list[dict[str, Any]] = []
        expected = self.watermark + 1
        for event in events:
            if event["id"] != expected and not self._gap_expired(expected, now):
                break
            ready.append(event)
            expected = event["id"] + 1
            self._gap = None
        return ready

    def _gap_expired(self, missing_id: int, now: float) -> bool:
        if self.gap_wait_s <= 0:
            return True
        if self._gap is None or self._gap[0] != missing_id:
            self._gap = (missing_id, now)
        return now - self._gap[1] >= self.gap_wait_s

    async def _publish(
        self, layer: Any, events: list[dict[str, Any]], agents: dict[str, dict[str, Any]]
    ) -> None:
        previous, last_id = self.watermark, events[-1]["id"]
        # The watermark moves before any send: a consumer that joins its group
        # and then reads the watermark either replays this batch or receives it.
        self.watermark = last_id
        by_agent: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            by_agent.setdefault(event["agent_id"], []).append(event)
        board = [event for event in events if event["kind"] in BOARD_KINDS]
        if board:
            changed = {event["agent_id"] for event in board}
            await self._send(
                layer,
                BOARD_GROUP,
                board,
                {key: agents[key] for key in changed if key in agents},
                previous,
                last_id,
            )
        for agent_id, agent_events in by_agent.items():
            summary = {agent_id: agents[agent_id]} if agent_id in agents else {}
            await self._send(layer, agent_group(agent_id), agent_events, summary, previous, last_id)

    async def _send(
        self,
        layer: Any,
        group: str,
        events: list[dict[str, Any]],
        agents: dict[str, dict[str, Any]],
        previous: int,
        last_id: int,
    ) -> None:
        text = frame_text(events=events, agents=agents, last_id=last_id)
        if len(text) <= self.frame_bytes:
            await self._send_frame(layer, group, text, events[0]["id"], last_id)
            return
        # A burst of big events (a chatty agent, a relay that fell behind) goes
        # out as several frames, each within the bound, chained by their ids.
        chunks = frame_chunks(events, self.frame_bytes)
        for number, chunk in enumerate(chunks):
            upto = last_id if number == len(chunks) - 1 else chunk[-1]["id"]
            named = {event["agent_id"] for event in chunk}
            chunk_agents = {key: value for key, value in agents.items() if key in named}
            text = frame_text(events=chunk, agents=chunk_agents, last_id=upto)
            await self._send_frame(layer, group, text, chunk[0]["id"], upto)

    async def _send_frame(
        self, layer: Any, group: str, text: str, first_id: int, last_id: int
    ) -> None:
        since = self._group_last.pop(group, 0)
        self._group_last[group] = last_id
        if len(self._group_last) > _GROUP_MEMORY:
            self._group_last.popitem(last=False)
        await layer.group_send(
            group,
            {
                "type": "relay.batch",
                "text": text,
                "first_id": first_id,
                "last_id": last_id,
                "since": since,
            },
        )

    def _fetch(self, after: int) -> Batch:
        try:
            events = event_rows(after=after, limit=self.batch_size)
            changed = [event["agent_id"] for event in events if event["kind"] in BOARD_KINDS]
            return Batch(events=events, agents=agent_summaries(agent_ids=changed))
        except Exception:
            # A broken connection is replaced on the next tick.
            connection.close()
            raise

    def _last_id(self) -> int:
        close_old_connections()
        return agent_event_last_id()


_relay: EventRelay | None = None


def relay_get() -> EventRelay:
    """This process's relay, configured from settings."""
    global _relay
    if _relay is None:
        _relay = EventRelay(
            interval_s=settings.FLOTILLA_DASHBOARD_RELAY_INTERVAL_S,
            batch_size=settings.FLOTILLA_DASHBOARD_RELAY_BATCH,
            gap_wait_s=relay_gap_wait_s(),
            frame_bytes=settings.FLOTILLA_EVENTS_PAGE_BYTES,
        )
    return _relay


def relay_gap_wait_s() -> float:
    if connection.vendor == "sqlite":
        return 0.0
    return settings.FLOTILLA_DASHBOARD_GAP_WAIT_S
