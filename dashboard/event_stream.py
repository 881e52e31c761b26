"""``GET /api/v1/agents/{id}/events/stream``: an agent's events as Server-Sent Events.

For API clients (a coordinator), which cannot use the dashboard's session
WebSockets. Authentication is the REST API's own (DRF's configured classes:
a token), and ownership is ``agent_visible_get``'s: another user gets 404.

Each event is one SSE message, ``id:`` its event id, ``event:`` its kind and
``data:`` the same JSON the events API and the dashboard give. A client
resumes with ``Last-Event-ID`` (what ``EventSource`` sends when it
reconnects) or ``?after=``: the events after that id follow, none twice and
none missing, exactly as the dashboard's consumers replay (``consumers.py``).
A comment goes out every ``FLOTILLA_EVENT_STREAM_HEARTBEAT_S`` when nothing
else does, so proxies keep the connection open. The stream ends after the
agent's final state event; asking again after it is answered 204, which tells
an ``EventSource`` to stop reconnecting.

Why here, and not a Django view: the stream is woken by this process's event
relay (``relay.py``), which only this layer may use, through a channel-layer
group as the WebSocket consumers are. And it is a plain ASGI application
routed before Django (``orchestrator_site/asgi.py``): Django's handler keeps a
thread for every request until its response ends, which for a stream is its
whole life. Here an open stream holds no thread, only a coroutine; database
reads (authentication, replay) borrow one of a few shared threads.
"""

import asyncio
import contextlib
import functools
import io
import json
import logging
import time
import uuid
from asyncio import FIRST_COMPLETED
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.db import DatabaseError, close_old_connections
from django.urls import path
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request
from rest_framework.settings import api_settings

from agents.errors import AgentNotFound
from agents.models import FINAL_STATES, AgentEventKind  # the states' vocabulary, not a query
from agents.selectors import agent_event_last_id, agent_events_range, agent_visible_get
from dashboard.relay import agent_group, relay_get
from dashboard.selectors import event_page

logger = logging.getLogger(__name__)

REPLAY_PAGE = 500
HEARTBEAT = b": keep-alive\n\n"
# How long an EventSource waits before it reconnects after a dropped connection.
RETRY_MS = 1000
_MAX_EVENT_ID = 2**63 - 1
# Authentication and replays are short reads; a few threads serve every stream.
_DATABASE = ThreadPoolExecutor(max_workers=4, thread_name_prefix="event-stream-db")


class StreamRefused(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


# As the REST API answers when its database is restarting (orchestrator_site/errors.py).
_UNAVAILABLE = StreamRefused(
    503, "unavailable", "The hub's database is unavailable; retry shortly.", {"Retry-After": "1"}
)


@dataclass(frozen=True)
class StreamStart:
    agent_id: uuid.UUID
    after: int
    # Set when the agent had already ended: replay up to this event, then stop.
    final_event_id: int | None
    nothing_left: bool = False


async def _database(function: Callable[..., Any], /, **kwargs: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(
        _DATABASE, functools.partial(_with_connection, function, kwargs)
    )


def _with_connection(function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    # No request signals here: drop broken or aged connections as they would.
    close_old_connections()
    try:
        return function(**kwargs)
    finally:
        close_old_connections()


def stream_start(*, scope: dict[str, Any]) -> StreamStart:
    """Who asks, for which agent, from where; raises ``StreamRefused``."""
    request = ASGIRequest(scope, io.BytesIO())
    try:
        request.get_host()
    except DisallowedHost:
        raise StreamRefused(400, "bad_request", "The Host header is not allowed.") from None
    user = _authenticate(request)
    try:
        agent = agent_visible_get(viewer=user, agent_id=scope["url_route"]["kwargs"]["agent_id"])
    except AgentNotFound as error:
        raise StreamRefused(404, error.code, error.message) from None
    after = _resume_point(request)
    if not agent.is_final:
        return StreamStart(agent_id=agent.id, after=after, final_event_id=None)
    final_event_id = _final_event_id(agent_id=agent.id, after=after)
    return StreamStart(
        agent_id=agent.id,
        after=after,
        final_event_id=final_event_id,
        nothing_left=final_event_id is None,
    )


def _authenticate(request: ASGIRequest) -> Any:
    """The REST API's authentication classes, exactly as every API view runs them."""
    # api_settings has imported the dotted paths; the stubs type them as the setting's strings.
    classes = cast(list[type[BaseAuthentication]], api_settings.DEFAULT_AUTHENTICATION_CLASSES)
    authenticators = [auth() for auth in classes]
    # As in DRF's views, the authenticators see DRF's request (which authenticates lazily).
    api_request = Request(request, authenticators=authenticators)
    challenge = next(
        (header for auth in authenticators if (header := auth.authenticate_header(api_request))),
        None,
    )
    headers = {"WWW-Authenticate": challenge} if challenge else {}
    try:
        user = api_request.user
    except exceptions.APIException as error:
        raise StreamRefused(401, error.default_code, str(error.detail), headers) from None
    if user is None or not user.is_authenticated:
        failure = exceptions.NotAuthenticated()
        raise StreamRefused(401, failure.default_code, str(failure.detail), headers)
    return user


def _resume_point(request: ASGIRequest) -> int:
    """The last event id the client saw: ``Last-Event-ID`` first, as a reconnect sends it."""
    value = request.headers.get("Last-Event-ID", "").strip() or request.GET.get("after", "0")
    if not (value.isascii() and value.isdigit() and len(value) <= 19) or int(value) > _MAX_EVENT_ID:
        raise StreamRefused(400, "invalid", "Last-Event-ID and after must be event ids (>= 0).")
    after = int(value)
    if after > agent_event_last_id():
        raise StreamRefused(400, "invalid", f"no event has the id {after} yet")
    return after


def _final_event_id(*, agent_id: uuid.UUID, after: int) -> int | None:
    """The id of the ended agent's final state event, if it comes after ``after``."""
    states = agent_events_range(
        after=after, agent_id=agent_id, kinds=[AgentEventKind.STATE], limit=10_000
    )
    for event_id, data in states.values_list("id", "data"):
        if _ends(AgentEventKind.STATE, data):
            return event_id
    return None


def _ends(kind: str, data: Any) -> bool:
    return (
        kind == AgentEventKind.STATE and isinstance(data, dict) and data.get("to") in FINAL_STATES
    )


def sse_message(event: dict[str, Any]) -> bytes:
    # JSON escapes line breaks inside strings, so the data is one line.
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event['id']}\nevent: {event['kind']}\ndata: {data}\n\n".encode()


@dataclass(frozen=True)
class Rendered:
    body: bytes
    # True when the events end with the agent's final state (and stop there).
    ends: bool


def sse_render(events: list[dict[str, Any]]) -> Rendered:
    messages = []
    for event in events:
        messages.append(sse_message(event))
        if _ends(event["kind"], event["data"]):
            return Rendered(b"".join(messages), ends=True)
    return Rendered(b"".join(messages), ends=False)


# Every stream of an agent receives the same relay batch: it is parsed and
# rendered once, by whichever stream comes first, for all of them.
_RENDERED: OrderedDict[tuple[int, int], Rendered] = OrderedDict()
_RENDERED_KEEP = 64


def batch_render(message: dict[str, Any]) -> Rendered:
    key = (message["first_id"], message["last_id"])
    rendered = _RENDERED.get(key)
    if rendered is None:
        rendered = sse_render(json.loads(message["text"])["events"])
        _RENDERED[key] = rendered
        if len(_RENDERED) > _RENDERED_KEEP:
            _RENDERED.popitem(last=False)
    return rendered


class EventStream:
    """One client's stream: the table up to the relay's watermark, then the relay's batches."""

    def __init__(self, *, send: Callable[[dict[str, Any]], Any], start: StreamStart) -> None:
        self.send = send
        self.agent_id = start.agent_id
        self.final_event_id = start.final_event_id
        # Every event id up to here has been sent or is not this agent's.
        self.sent_upto = start.after
        self.finished = False
        self.last_write = time.monotonic()

    async def run(self, disconnected: asyncio.Future[None]) -> None:
        await self._write(f"retry: {RETRY_MS}\n\n".encode())
        if self.final_event_id is not None:
            await self.replay(until=self.final_event_id)
        else:
            following = asyncio.ensure_future(self._follow())
            heartbeat = asyncio.ensure_future(self._heartbeat())
            try:
                await asyncio.wait({following, disconnected}, return_when=FIRST_COMPLETED)
            finally:
                heartbeat.cancel()
                following.cancel()  # nothing to do when it has ended
                with contextlib.suppress(asyncio.CancelledError):
                    await following  # and if it failed, so does the stream
        if not disconnected.done():
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _follow(self) -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        group = agent_group(self.agent_id)
        # Join first, then read the watermark: a batch after it reaches the group.
        await layer.group_add(group, channel)
        try:
            await self.replay(until=await relay_get().ensure_running())
            while not self.finished:
                await self.relay_batch(await layer.receive(channel))
        finally:
            await layer.group_discard(group, channel)

    async def _heartbeat(self) -> None:
        interval = settings.FLOTILLA_EVENT_STREAM_HEARTBEAT_S
        while True:
            await asyncio.sleep(max(0.0, self.last_write + interval - time.monotonic()))
            if time.monotonic() - self.last_write >= interval:
                await self._write(HEARTBEAT)

    async def relay_batch(self, message: dict[str, Any]) -> None:
        if message["last_id"] <= self.sent_upto:
            return
        if message["since"] > self.sent_upto or message["first_id"] <= self.sent_upto:
            # A batch went missing (a full channel) or overlaps the replay:
            # the table is the truth, so read this stretch from it.
            await self.replay(until=message["last_id"])
            return
        await self._send(batch_render(message))
        self.sent_upto = message["last_id"]

    async def replay(self, *, until: int) -> None:
        while self.sent_upto < until and not self.finished:
            events, page_end = await _database(
                event_page,
                after=self.sent_upto,
                until=until,
                agent_id=self.agent_id,
                max_bytes=settings.FLOTILLA_EVENTS_PAGE_BYTES,
                limit=REPLAY_PAGE,
            )
            await self._send(sse_render([e for e in events if e["id"] > self.sent_upto]))
            self.sent_upto = page_end

    async def _send(self, rendered: Rendered) -> None:
        if rendered.body:
            await self._write(rendered.body)
        if rendered.ends:
            self.finished = True

    async def _write(self, body: bytes) -> None:
        self.last_write = time.monotonic()
        await self.send({"type": "http.response.body", "body": body, "more_body": True})


async def _refuse(send: Callable[[dict[str, Any]], Any], refusal: StreamRefused) -> None:
    body = json.dumps({"error": {"code": refusal.code, "message": refusal.message}}).encode()
    headers = [(b"content-type", b"application/json")]
    headers += [(name.lower().encode(), value.encode()) for name, value in refusal.headers.items()]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _request_read(receive: Callable[[], Any]) -> bool:
    """Read the (empty) request body; False if the client left first."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        if not message.get("more_body"):
            return True


async def _disconnect(receive: Callable[[], Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def agent_event_stream(
    scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[dict[str, Any]], Any]
) -> None:
    """The ASGI application of the stream endpoint."""
    if not await _request_read(receive):
        return
    try:
        if scope["method"] != "GET":
            raise StreamRefused(
                405, "method_not_allowed", f'Method "{scope["method"]}" not allowed.'
            )
        start = await _database(stream_start, scope=scope)
    except StreamRefused as refusal:
        await _refuse(send, refusal)
        return
    except DatabaseError as error:
        logger.warning("event stream: the database is unavailable: %s", error)
        await _refuse(send, _UNAVAILABLE)
        return
    if start.nothing_left:
        # The client has the final event already; 204 tells EventSource to stop.
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        # nginx would otherwise buffer the stream.
        (b"x-accel-buffering", b"no"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    disconnected = asyncio.ensure_future(_disconnect(receive))
    try:
        await EventStream(send=send, start=start).run(disconnected)
    except DatabaseError as error:
        # The client reconnects with Last-Event-ID and misses nothing.
        logger.warning(
            "event stream of %s cut: the database is unavailable: %s", start.agent_id, error
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        disconnected.cancel()


# Routed ahead of Django by orchestrator_site/asgi.py.
http_urlpatterns = [
    # Channels' URLRouter routes to an ASGI application; Django's stubs expect a view.
    path("api/v1/agents/<str:agent_id>/events/stream", agent_event_stream),  # type: ignore[arg-type]
]
