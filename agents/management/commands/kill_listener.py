"""Run this node's kill listener: kills that other processes route here (docs/scaling.md)."""

import contextlib
import os
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from agents.killlistener import NodeKillListener


class Command(BaseCommand):
    help = (
        "Listen for kills of this node's agents (PostgreSQL LISTEN/NOTIFY, with a sweep "
        "every FLOTILLA_KILL_SWEEP_S as the fallback) and execute them here. "
        "`runhub --role worker|all` starts it on PostgreSQL."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("the kill listener needs PostgreSQL (DATABASE_URL=postgres://...)")
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        node = settings.FLOTILLA_NODE_NAME
        # A kill must not wait for the CPU behind the work it stops: on a busy
        # node (a kill-all wakes every worker at once) the listener goes first.
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, -10)
        listener = NodeKillListener(node=node, sweep_every_s=settings.FLOTILLA_KILL_SWEEP_S)
        self.stdout.write(f"kill listener of node {node} starting")
        listener.run(stop=stop, ready=self._ready)

    def _ready(self) -> None:
        self.stdout.write("listening")
        self.stdout.flush()
