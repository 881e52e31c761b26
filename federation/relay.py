"""Agent events between hubs.

Spoke side: every event of an agent that a peer asked for is pushed back to
that peer (``POST /federation/v1/events``) by a django-q2 task. One push is
in flight per agent (``EventRelay.pending``): the task sends everything after
the last event the hub acknowledged, so bursts of events become one request,
and a failed push is retried in the task (tenacity, briefly) and then
through a django-q2 schedule with backoff.

Hub side: ``events_receive`` mirrors the pushed events onto the local row
that stands for the remote agent, once each, in order.
"""

import logging
import uuid
from datetime import timedelta
from typing import Any

import tenacity
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import async_task, schedule
from rest_framework import serializers

from agents.models import AgentEvent
from agents.selectors import agent_events_after, agent_events_page, agent_get, agent_list
from agents.services import agent_event_append, agent_mirror_state
from federation.client import events_send
from federation.commands import _valid, agent_snapshot
from federation.errors import FederationError, PeerNotFound
from federation.models import EventRelay, Peer, PeerState, RemoteAgent
from federation.services import MAX_BODY_BYTES

logger = logging.getLogger(__name__)

BATCH = 200
# A push must stay under the peer's body limit; the agent's snapshot takes the rest.
PUSH_EVENT_BYTES = MAX_BODY_BYTES // 2
_QUICK_RETRIES_S = (0.1, 0.3, 0.6, 1.2, 2.5)
_BACKOFF_S = (5, 15, 30, 60, 120, 300, 600, 900)
_origins: dict[str, str] = {}


# --- spoke side -----------------------------------------------------------


def _origin_of(agent_id: uuid.UUID) -> str:
    key = str(agent_id)
    if key not in _origins:
        origin = agent_list().filter(id=agent_id).values_list("origin", flat=True).first()
        if origin is None:
            return "local"
        if len(_origins) > 10_000:
            _origins.clear()
        _origins[key] = origin  # an agent's origin never changes
    return _origins[key]


def relay_event_recorded(*, agent_id: uuid.UUID) -> None:
    """An event was written: make sure a push to the agent's origin hub is on its way."""
    origin = _origin_of(agent_id)
    if origin == "local":
        return
    peer = Peer.objects.filter(instance_id=origin).first()
    if peer is None:
        return
    EventRelay.objects.get_or_create(agent_id=agent_id, defaults={"peer": peer})
    if EventRelay.objects.filter(agent_id=agent_id, pending=False).update(pending=True):
        transaction.on_commit(lambda: relay_enqueue(agent_id=agent_id))


def relay_enqueue(*, agent_id: uuid.UUID, attempt: int = 0) -> None:
    async_task(
        "federation.tasks.agent_events_push",
        str(agent_id),
        attempt,
        task_name=f"federation-events-{agent_id}",
        group="federation",
    )


def relay_push(*, agent_id: uuid.UUID, attempt: int = 0) -> None:
    """Push every unacknowledged event of one agent, batch by batch."""
    while True:
        relay = EventRelay.objects.select_related("peer").filter(agent_id=agent_id).first()
        if relay is None:
            return
        if relay.peer.state in (PeerState.DISCONNECTED,):
            EventRelay.objects.filter(agent_id=agent_id).update(
                pending=False, last_error=f"peer {relay.peer.instance_id} is disconnected"
            )
            return
        page = agent_events_page(
            agent_id=agent_id, after=relay.last_sent_id, limit=BATCH, max_bytes=PUSH_EVENT_BYTES
        )
        events = list(page.events)
        if not events:
            EventRelay.objects.filter(agent_id=agent_id).update(pending=False)
            # An event written after the read above found ``pending`` still set
            # and queued nothing; take the flag back if so and go round again.
            more = agent_events_after(agent_id=agent_id, after=relay.last_sent_id, limit=1)
            if not more.exists() or not EventRelay.objects.filter(
                agent_id=agent_id, pending=False
            ).update(pending=True):
                return
            continue
        error = _deliver(relay.peer, _events_body(agent_id, events))
        if error:
            _retry_later(agent_id, attempt, error)
            return
        EventRelay.objects.filter(agent_id=agent_id).update(
            last_sent_id=events[-1].id, attempts=0, last_error=""
        )
        attempt = 0


def _events_body(agent_id: uuid.UUID, events: list[AgentEvent]) -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "instance_id": settings.FLOTILLA_INSTANCE_ID,
        "agent_id": str(agent_id),
        "agent": agent_snapshot(agent_get(agent_id=agent_id)),
        "events": [
            {
                "id": event.id,
                "kind": event.kind,
                "data": event.data,
                "created_at": event.created_at.isoformat(),
            }
            for event in events
        ],
        "timestamp": timezone.now().isoformat(),
    }


class _Undelivered(Exception):
    """A push that failed; another attempt may get through."""


class _Refused(Exception):
    """A push the peer refused for what it is: the same message again cannot help."""


def _deliver(peer: Peer, body: dict[str, Any]) -> str:
    """Send one batch, retrying briefly; returns "" on success or the last error."""

    def send() -> None:
        try:
            status, answer = events_send(peer=peer, body={**body, "message_id": str(uuid.uuid4())})
        except FederationError as failure:
            raise _Undelivered(failure.message) from None
        if status == 200 and answer.get("success"):
            return
        error = (
            f"{peer.instance_id} answered {status}: {(answer.get('error') or {}).get('message')}"
        )
        raise (_Refused if status in (400, 401, 403, 413) else _Undelivered)(error)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_Undelivered),
        stop=tenacity.stop_after_attempt(len(_QUICK_RETRIES_S) + 1),
        wait=tenacity.wait_chain(*(tenacity.wait_fixed(delay) for delay in _QUICK_RETRIES_S)),
        reraise=True,
    )
    try:
        retrying(send)
    except (_Undelivered, _Refused) as error:
        return str(error) or "unknown error"
    return ""


def _retry_later(agent_id: uuid.UUID, attempt: int, error: str) -> None:
    EventRelay.objects.filter(agent_id=agent_id).update(attempts=attempt + 1, last_error=error)
    if attempt >= len(_BACKOFF_S):
        logger.warning("giving up pushing events of agent %s: %s", agent_id, error)
        EventRelay.objects.filter(agent_id=agent_id).update(pending=False)
        return
    logger.info("events of agent %s not delivered (%s); retry %d", agent_id, error, attempt + 1)
    schedule(
        "federation.tasks.agent_events_push",
        str(agent_id),
        attempt + 1,
        schedule_type=Schedule.ONCE,
        next_run=timezone.now() + timedelta(seconds=_BACKOFF_S[attempt]),
    )


# --- hub side -------------------------------------------------------------


class _EventSerializer(serializers.Serializer[dict[str, Any]]):
    id = serializers.IntegerField(min_value=1)
    kind = serializers.RegexField(r"^[a-z_]{1,20}$")
    # The stubs see the ``data`` property; DRF's metaclass takes a declared field out of the class.
    data = serializers.DictField()  # type: ignore[assignment]
    created_at = serializers.CharField(max_length=64, required=False)


class EventsSerializer(serializers.Serializer[dict[str, Any]]):
    message_id = serializers.CharField(max_length=200)
    instance_id = serializers.CharField(max_length=100)
    agent_id = serializers.UUIDField()
    agent = serializers.DictField()
    # many=True makes a ListSerializer, which takes max_length; the stubs do not model it.
    events = _EventSerializer(many=True, max_length=1000)  # type: ignore[call-arg]
    timestamp = serializers.CharField(max_length=64)


_STATES = {
    "queued",
    "spawning",
    "running",
    "paused",
    "gating",
    "pushing",
    "completed",
    "failed",
    "killed",
}


def events_receive(*, peer: Peer, body: dict[str, Any]) -> dict[str, Any]:
    data = _valid(EventsSerializer(data=body))
    remote = RemoteAgent.objects.filter(peer=peer, remote_agent_id=data["agent_id"]).first()
    if remote is None:
        raise PeerNotFound(f"no agent {data['agent_id']} of {peer.instance_id} is known here")
    snapshot = data["agent"]
    accepted = 0
    with transaction.atomic():
        last = RemoteAgent.objects.select_for_update().get(pk=remote.pk).last_event_id
        for event in sorted(data["events"], key=lambda item: item["id"]):
            if event["id"] <= last:
                continue
            _mirror(remote.agent_id, event, snapshot)
            last, accepted = event["id"], accepted + 1
        RemoteAgent.objects.filter(pk=remote.pk).update(last_event_id=last)
    return {"accepted": accepted, "last_event_id": last}


def _mirror(agent_id: uuid.UUID, event: dict[str, Any], snapshot: dict[str, Any]) -> None:
    marker = {"remote_event_id": event["id"]}
    to = event["data"].get("to")
    if event["kind"] != "state" or to not in _STATES:
        agent_event_append(agent_id=agent_id, kind=event["kind"], data={**event["data"], **marker})
        return
    fields: dict[str, Any] = {}
    if isinstance(snapshot.get("work_branch"), str) and snapshot["work_branch"]:
        fields["work_branch"] = snapshot["work_branch"][:250]
    if snapshot.get("state") == to:
        # The snapshot was taken when this batch was sent, so it describes the
        # newest state: it carries the result and error that go with it.
        if isinstance(snapshot.get("result"), dict):
            fields["result"] = snapshot["result"]
        if isinstance(snapshot.get("error"), str):
            fields["error"] = snapshot["error"]
        progress = snapshot.get("progress")
        if isinstance(progress, int) and not isinstance(progress, bool) and 0 <= progress <= 100:
            fields["progress"] = progress
    reason = event["data"].get("reason")
    data = {**marker, **({"reason": str(reason)[:2000]} if reason else {})}
    agent_mirror_state(agent_id=agent_id, state=to, data=data, **fields)
