"""WebSocket gateways of the dashboard: agents (event streams) and projects (watched states).

A client connects with ``?after=<last event id it saw>``. The consumer joins
its group, reads the relay's watermark, replays ``(after, watermark]`` from the
table and from then on forwards the relay's batches, dropping anything at or
below what it already sent. So a page that reconnects, to this process or to
another one, gets every event once.

Project pages and the hub's banners follow states rather than events
(``watch.py``): a full snapshot on connect, then only the rows that changed.

Ownership (DESIGN.md): an agent's or a project's stream opens only for
someone who may see it (``agent_visible_get``, ``project_visible_get``), and
the two list streams show a non-staff user only their own agents and projects.
"""

import json
import uuid
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import async_to_sync
from channels.generic.websocket import WebsocketConsumer
from django.conf import settings
from django.db.models import QuerySet

from agents.errors import AgentNotFound
from agents.models import Agent
from agents.selectors import agent_visible_get, agents_owned_by, viewer_owner
from dashboard.relay import BOARD_GROUP, BOARD_KINDS, agent_group, frame_text, relay_get
from dashboard.selectors import agent_summaries, event_page
from dashboard.watch import HUB_TOPIC, board_topic, topic_group, watch_get
from dashboard.watch import frame_text as watch_frame
from taskqueue.errors import ProjectNotFound
from taskqueue.selectors import project_visible_get

REPLAY_PAGE = 500
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
# How many agents' "may this user see it" a list stream remembers before it starts afresh.
SEEN_MAX = 10_000


# Channels ships no type hints, so its consumers are Any to mypy.
class EventStreamConsumer(WebsocketConsumer):  # type: ignore[misc]
    """Base: subclasses say which group they follow and which events they replay."""

    group = ""
    agent_id: uuid.UUID | None = None
    kinds: list[str] | None = None
    # Only these agents' events, when set (a non-staff user's list stream).
    visible: QuerySet[Agent] | None = None

    def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not self.resolve():
            self.close(code=CLOSE_NOT_FOUND)
            return
        self.accept()
        self.sent_upto = self._after()
        async_to_sync(self.channel_layer.group_add)(self.group, self.channel_name)
        watermark = async_to_sync(relay_get().ensure_running)()
        # The first frame always comes at once: it tells the page it is current.
        self.replay(until=watermark, at_least_one_frame=True)

    def resolve(self) -> bool:
        return True

    def disconnect(self, code: int) -> None:
        if self.group:
            async_to_sync(self.channel_layer.group_discard)(self.group, self.channel_name)

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # The stream is one-way; a client's "ping" only keeps proxies from idling it out.
        if text_data == "ping":
            self.send(text_data='{"type":"pong"}')

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # A sync consumer's base_send is wrapped for threads; keep the raw one
        # for the fast path below, which runs on the event loop.
        self._loop_send = send
        await super().__call__(scope, receive, send)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # The hot path, a relay batch that simply continues the stream, is
        # forwarded on the event loop: a hop to the consumers' shared sync
        # thread for every frame to every client would cap the fan-out.
        # Everything else (connect, replay, repair) runs synchronously.
        if message["type"] == "relay.batch" and self._continues(message):
            await self._loop_send({"type": "websocket.send", "text": message["text"]})
            self.sent_upto = message["last_id"]
            return
        await super().dispatch(message)

    def _continues(self, message: dict[str, Any]) -> bool:
        sent_upto = getattr(self, "sent_upto", None)
        return sent_upto is not None and message["since"] <= sent_upto < message["first_id"]

    def relay_batch(self, message: dict[str, Any]) -> None:
        last_id = message["last_id"]
        if last_id <= self.sent_upto:
            return
        if message["since"] > self.sent_upto or message["first_id"] <= self.sent_upto:
            # A batch went missing (a full channel) or overlaps the replay:
            # the table is the truth, so read this stretch from it.
            self.replay(until=last_id)
            return
        self.forward(message)
        self.sent_upto = last_id

    def forward(self, message: dict[str, Any]) -> None:
        """Send a relay batch that continues the stream."""
        self.send(text_data=message["text"])

    def replay(self, *, until: int, at_least_one_frame: bool = False) -> None:
        if at_least_one_frame and self.sent_upto >= until:
            self.send(text_data=frame_text(events=[], agents={}, last_id=self.sent_upto))
        while self.sent_upto < until:
            # Pages bounded in bytes: a huge log must never make a frame that
            # a browser or a client library refuses, or that takes seconds.
            events, page_end = event_page(
                after=self.sent_upto,
                until=until,
                agent_id=self.agent_id,
                kinds=self.kinds,
                max_bytes=settings.FLOTILLA_EVENTS_PAGE_BYTES,
                limit=REPLAY_PAGE,
                agents=self.visible,
            )
            changed = [event["agent_id"] for event in events if event["kind"] in BOARD_KINDS]
            agents = agent_summaries(agent_ids=changed)
            self.send(text_data=frame_text(events=events, agents=agents, last_id=page_end))
            self.sent_upto = page_end

    def _after(self) -> int:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        try:
            return max(0, int(query.get("after", ["0"])[0]))
        except ValueError:
            return 0


class AgentBoardConsumer(EventStreamConsumer):
    """State changes of the agents the user may see (all, for staff), with their summaries.

    The relay sends every agent's changes to one group; for a non-staff user
    each batch is cut down to their own agents before it is sent on.
    """

    group = BOARD_GROUP
    kinds = BOARD_KINDS

    def resolve(self) -> bool:
        owner = viewer_owner(self.scope["user"])
        if owner is not None:
            self.visible = agents_owned_by(owner)
        self.seen: dict[str, bool] = {}
        return True

    def _continues(self, message: dict[str, Any]) -> bool:
        # A filtered stream never takes the fast path that forwards batches unread.
        return self.visible is None and super()._continues(message)

    def forward(self, message: dict[str, Any]) -> None:
        if self.visible is None:
            super().forward(message)
            return
        frame = json.loads(message["text"])
        shown = self._shown(self.visible, {event["agent_id"] for event in frame["events"]})
        events = [event for event in frame["events"] if event["agent_id"] in shown]
        if events:
            agents = {key: row for key, row in frame["agents"].items() if key in shown}
            self.send(
                text_data=frame_text(events=events, agents=agents, last_id=message["last_id"])
            )

    def _shown(self, visible: QuerySet[Agent], agent_ids: set[str]) -> set[str]:
        """Which of these agents are ``visible`` (an agent's owner never changes: answers keep)."""
        if len(self.seen) > SEEN_MAX:
            self.seen.clear()
        unknown = agent_ids - self.seen.keys()
        if unknown:
            found = {str(i) for i in visible.filter(id__in=unknown).values_list("id", flat=True)}
            self.seen.update({agent_id: agent_id in found for agent_id in unknown})
        return {agent_id for agent_id in agent_ids if self.seen[agent_id]}


class AgentDetailConsumer(EventStreamConsumer):
    """Every event of one agent: transitions, output, gate results, transcript."""

    def resolve(self) -> bool:
        try:
            agent = agent_visible_get(
                viewer=self.scope["user"], agent_id=self.scope["url_route"]["kwargs"]["agent_id"]
            )
        except AgentNotFound:
            return False
        self.agent_id = agent.id
        self.group = agent_group(agent.id)
        return True


class StateStreamConsumer(WebsocketConsumer):  # type: ignore[misc]
    """A watched topic of ``watch.py``: a full snapshot first, then the rows that change."""

    topic = ""

    def connect(self) -> None:
        self.version: int | None = None
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not self.resolve():
            self.close(code=CLOSE_NOT_FOUND)
            return
        self.accept()
        async_to_sync(self.channel_layer.group_add)(topic_group(self.topic), self.channel_name)
        version, snapshot = async_to_sync(watch_get().watch)(self.topic)
        self._send_snapshot(version, snapshot)

    def resolve(self) -> bool:
        return True

    def disconnect(self, code: int) -> None:
        if self.version is None:
            return
        async_to_sync(self.channel_layer.group_discard)(topic_group(self.topic), self.channel_name)
        async_to_sync(watch_get().unwatch)(self.topic)

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data == "ping":
            self.send(text_data='{"type":"pong"}')

    def watch_delta(self, message: dict[str, Any]) -> None:
        if self.version is None or message["version"] <= self.version:
            return
        if message["since"] != self.version:
            # A change went missing (a full channel): start again from the whole state.
            self._send_snapshot(*async_to_sync(watch_get().current_async)(self.topic))
            return
        self.send(text_data=message["text"])
        self.version = message["version"]

    def _send_snapshot(self, version: int, snapshot: dict[str, Any]) -> None:
        text = watch_frame(
            kind="snapshot", topic=self.topic, version=version, sections=snapshot, removed={}
        )
        self.send(text_data=text)
        self.version = version


class ProjectBoardConsumer(StateStreamConsumer):
    """The projects page: the state and progress of every project the user may see."""

    def resolve(self) -> bool:
        self.topic = board_topic(viewer_owner(self.scope["user"]))
        return True


class ProjectDetailConsumer(StateStreamConsumer):
    """One project's page: the project's state and progress, and every task's state."""

    def resolve(self) -> bool:
        try:
            project = project_visible_get(
                viewer=self.scope["user"],
                project_id=self.scope["url_route"]["kwargs"]["project_id"],
            )
        except ProjectNotFound:
            return False
        self.topic = str(project.id)
        return True


class HubConsumer(StateStreamConsumer):
    """Every page: whether the hub is halted (and YOLO mode), for the banners."""

    topic = HUB_TOPIC
