"""WebSocket gateways of the dashboard: agents (event streams) and projects (watched states).

A client connects with ``?after=<last event id it saw>``. The consumer joins
its group, reads the relay's watermark, replays ``(after, watermark]`` from the
table and from then on forwards the relay's batches, dropping anything at or
below what it already sent. So a page that reconnects, to this process or to
another one, gets every event once.

Project pages and the hub's banners follow states rather than events
(``watch.py``): a full snapshot on connect, then only the rows that changed.
"""

from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import async_to_sync
from channels.generic.websocket import WebsocketConsumer

from agents.errors import AgentNotFound
from agents.selectors import agent_get
from dashboard.relay import BOARD_GROUP, BOARD_KINDS, agent_group, frame_text, relay_get
from dashboard.selectors import agent_summaries, event_rows
from dashboard.watch import BOARD_TOPIC, HUB_TOPIC, topic_group, watch_get
from dashboard.watch import frame_text as watch_frame
from taskqueue.errors import ProjectNotFound
from taskqueue.selectors import project_get

REPLAY_PAGE = 500
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class EventStreamConsumer(WebsocketConsumer):
    """Base: subclasses say which group they follow and which events they replay."""

    group = ""
    agent_id: Any = None
    kinds: list[str] | None = None

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

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
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
        self.send(text_data=message["text"])
        self.sent_upto = last_id

    def replay(self, *, until: int, at_least_one_frame: bool = False) -> None:
        if at_least_one_frame and self.sent_upto >= until:
            self.send(text_data=frame_text(events=[], agents={}, last_id=self.sent_upto))
        while self.sent_upto < until:
            events = event_rows(
                after=self.sent_upto,
                until=until,
                agent_id=self.agent_id,
                kinds=self.kinds,
                limit=REPLAY_PAGE,
            )
            page_end = events[-1]["id"] if len(events) == REPLAY_PAGE else until
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
    """State changes of every agent, with the changed agents' summaries."""

    group = BOARD_GROUP
    kinds = BOARD_KINDS


class AgentDetailConsumer(EventStreamConsumer):
    """Every event of one agent: transitions, output, gate results, transcript."""

    def resolve(self) -> bool:
        try:
            agent = agent_get(agent_id=self.scope["url_route"]["kwargs"]["agent_id"])
        except AgentNotFound:
            return False
        self.agent_id = agent.id
        self.group = agent_group(agent.id)
        return True


class StateStreamConsumer(WebsocketConsumer):
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
    """The projects page: every shown project's state and progress."""

    topic = BOARD_TOPIC


class ProjectDetailConsumer(StateStreamConsumer):
    """One project's page: the project's state and progress, and every task's state."""

    def resolve(self) -> bool:
        try:
            project = project_get(project_id=self.scope["url_route"]["kwargs"]["project_id"])
        except ProjectNotFound:
            return False
        self.topic = str(project.id)
        return True


class HubConsumer(StateStreamConsumer):
    """Every page: whether the hub is halted (and YOLO mode), for the banners."""

    topic = HUB_TOPIC
