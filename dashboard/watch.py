"""Live states for the dashboard: each web process polls what its browsers watch, once per tick.

Task and project states are not ``AgentEvent`` rows: the dispatcher changes
them with conditional UPDATEs in the worker process, and a task finishes in
a django-q2 job that runs *after* its agent's last event. So the event relay
cannot say when a task changed. Rather than add a version column that every
one of the dispatcher's updates would have to bump, the web process polls:

- the topics browsers watch are ``"projects"`` (the projects page as staff
  see it), ``"projects/<principal>"`` (as that user sees it: their own
  projects), ``"<project id>"`` (one project's page) and ``"hub"`` (the halt
  and YOLO banners, on every page; a halt is a row the kill switch writes, not
  an event);
- every ``FLOTILLA_DASHBOARD_WATCH_INTERVAL_S`` one read covers every
  watched topic (three queries for all watched projects, two for each list,
  one for the banners), however many browsers watch them, and only while
  someone does;
- the watch keeps the last snapshot of each topic and sends the rows that
  changed once per topic group, numbered by a per-topic version.

A consumer starts from the watch's own snapshot and version (never from a
read of its own, which could be newer than a change still in flight to it)
and forwards a change only if it continues that version; otherwise it sends
the watch's current snapshot whole. Snapshots are states, not events, so a
reconnecting page simply starts again from a full snapshot.
"""

import asyncio
import hashlib
import json
import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

from dashboard.selectors import hub_banners, projects_board_snapshot, projects_live_snapshots

logger = logging.getLogger(__name__)

BOARD_TOPIC = "projects"
HUB_TOPIC = "hub"
# A snapshot is {section: {row id: row}}: "projects" for the list page,
# "project" (one row) and "tasks" (by key) for a project's page, "banners"
# (one row) for the hub.
Snapshot = dict[str, dict[str, Any]]


def board_topic(owner: str | None) -> str:
    """The projects page's topic: every project (None, for staff), or ``owner``'s."""
    return BOARD_TOPIC if owner is None else f"{BOARD_TOPIC}/{owner}"


def topic_group(topic: str) -> str:
    # A channel group name is a few ASCII characters; a topic naming a user is hashed.
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,60}", topic):
        topic = hashlib.sha256(topic.encode()).hexdigest()[:40]
    return f"dashboard.watch.{topic}"


def frame_text(
    *, kind: str, topic: str, version: int, sections: Snapshot, removed: dict[str, list[str]]
) -> str:
    frame = {"type": kind, "topic": topic, "version": version, "sections": sections}
    if removed:
        frame["removed"] = removed
    return json.dumps(frame, separators=(",", ":"))


def snapshot_changes(old: Snapshot, new: Snapshot) -> tuple[Snapshot, dict[str, list[str]]]:
    """The rows of ``new`` that differ from ``old``, and the row ids ``new`` no longer has."""
    changed: Snapshot = {}
    removed: dict[str, list[str]] = {}
    for section, rows in new.items():
        before = old.get(section, {})
        diff = {key: row for key, row in rows.items() if before.get(key) != row}
        if diff:
            changed[section] = diff
        gone = [key for key in before if key not in rows]
        if gone:
            removed[section] = gone
    return changed, removed


def snapshots_read(topics: list[str]) -> dict[str, Snapshot]:
    project_ids = [int(topic) for topic in topics if topic.isdigit()]
    snapshots: dict[str, Snapshot] = {}
    if project_ids:
        for project_id, snapshot in projects_live_snapshots(project_ids=project_ids).items():
            snapshots[str(project_id)] = snapshot
    for topic in topics:
        if topic == BOARD_TOPIC or topic.startswith(f"{BOARD_TOPIC}/"):
            owner = topic.partition("/")[2] if "/" in topic else None
            snapshots[topic] = projects_board_snapshot(owner=owner)
    if HUB_TOPIC in topics:
        snapshots[HUB_TOPIC] = {"banners": {"hub": hub_banners()}}
    return snapshots


class StateWatch:
    def __init__(self, *, interval_s: float) -> None:
        self.interval_s = interval_s
        self.reads = 0
        self._watchers: Counter[str] = Counter()
        self._snapshots: dict[str, Snapshot] = {}
        self._versions: dict[str, int] = {}
        # Which read each snapshot came from: an older read never overwrites a newer one.
        self._read_of: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        # One thread, hence one database connection, for every poll.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-watch")

    async def watch(self, topic: str) -> tuple[int, Snapshot]:
        """Count one more watcher of ``topic``; return the version and snapshot it starts from."""
        self._watchers[topic] += 1
        if topic not in self._snapshots:
            loop = asyncio.get_running_loop()
            try:
                read, fresh = await loop.run_in_executor(self._executor, self._read, [topic])
            except Exception:
                await self.unwatch(topic)
                raise
            if topic not in self._snapshots:  # another watcher may have read it meanwhile
                self._snapshots[topic], self._versions[topic] = fresh[topic], 0
                self._read_of[topic] = read
        self._ensure_running()
        return self.current(topic)

    def current(self, topic: str) -> tuple[int, Snapshot]:
        return self._versions[topic], self._snapshots[topic]

    async def current_async(self, topic: str) -> tuple[int, Snapshot]:
        return self.current(topic)

    async def unwatch(self, topic: str) -> None:
        self._watchers[topic] -= 1
        if self._watchers[topic] <= 0:
            del self._watchers[topic]
            self._snapshots.pop(topic, None)
            self._versions.pop(topic, None)
            self._read_of.pop(topic, None)

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name="dashboard-state-watch")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        layer = get_channel_layer()
        while True:
            await asyncio.sleep(self.interval_s)
            topics = list(self._watchers)
            if not topics:
                continue
            try:
                read, fresh = await loop.run_in_executor(self._executor, self._read, topics)
            except Exception:
                logger.exception("the dashboard could not read watched states; retrying")
                await asyncio.sleep(max(self.interval_s, 0.5))
                continue
            for topic, snapshot in fresh.items():
                await self._publish(layer, topic, snapshot, read)

    async def _publish(self, layer: Any, topic: str, snapshot: Snapshot, read: int) -> None:
        if topic not in self._snapshots or self._read_of[topic] >= read:
            return  # nobody watches it any more, or a newer read is already there
        self._read_of[topic] = read
        changed, removed = snapshot_changes(self._snapshots[topic], snapshot)
        if not changed and not removed:
            return
        since = self._versions[topic]
        # The version moves before the send: a consumer that joins the group and
        # then reads the version either has this change already or receives it.
        self._snapshots[topic], self._versions[topic] = snapshot, since + 1
        text = frame_text(
            kind="delta", topic=topic, version=since + 1, sections=changed, removed=removed
        )
        await layer.group_send(
            topic_group(topic),
            {"type": "watch.delta", "text": text, "since": since, "version": since + 1},
        )

    def _read(self, topics: list[str]) -> tuple[int, dict[str, Snapshot]]:
        # Runs on the one executor thread, so reads are numbered in the order they ran.
        self.reads += 1
        try:
            return self.reads, snapshots_read(topics)
        except Exception:
            # A broken connection is replaced on the next poll.
            connection.close()
            raise


_watch: StateWatch | None = None


def watch_get() -> StateWatch:
    """This process's state watch, configured from settings."""
    global _watch
    if _watch is None:
        _watch = StateWatch(interval_s=settings.FLOTILLA_DASHBOARD_WATCH_INTERVAL_S)
    return _watch
