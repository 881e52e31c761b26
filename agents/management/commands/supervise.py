"""Run this node's supervisor: claim queued agents and run them (agents/supervisor.py)."""

import signal
from typing import Any

from django.core.management.base import BaseCommand

from agents.supervisor import NodeSupervisor, SupervisorConfig


class Command(BaseCommand):
    help = (
        "Claim queued agents from the database, up to FLOTILLA_NODE_CAPACITY at once, and run "
        "them; SIGTERM hands running agents back to the queue. `runhub --role worker|all` "
        "starts it."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        config = SupervisorConfig.from_settings()
        supervisor = NodeSupervisor(config)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: supervisor.stop())
        self.stdout.write(
            f"node supervisor of {config.node} starting: capacity {config.capacity}, "
            f"lease {config.lease_s:g} s"
        )
        supervisor.serve(ready=self._ready)
        self.stdout.write("node supervisor stopped")

    def _ready(self) -> None:
        self.stdout.write("supervising")
        self.stdout.flush()
