"""Start a hub on one machine: daphne (web), and the node supervisor with its helpers (worker).

Every process runhub starts stays in runhub's process group and receives
SIGTERM when runhub dies, so killing the group (a process manager's stop, an
operator's ``kill -9 -PGID``) or runhub alone leaves nothing of the node
running. The supervisor's sandboxes end with it: each holds a lifeline the
supervisor's death closes (docs/architecture.md).
"""

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from agents.childprocess import parent_death_signal

ROLES = ("all", "web", "worker")
# A stop waits this long past the supervisor's own FLOTILLA_NODE_STOP_S for
# the children to exit by themselves, then kills what is left.
STOP_GRACE_S = 1.0


class Command(BaseCommand):
    help = (
        "Start the hub: the web server, the node supervisor that runs agents, and the "
        "django-q2 cluster for short jobs; Ctrl-C stops them all."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--role",
            choices=ROLES,
            default="all",
            help="start only the web server or only the worker",
        )

    def handle(self, *args: object, host: str, port: int, role: str, **options: object) -> None:
        if not 0 < port < 65536:
            raise CommandError(f"--port must be between 1 and 65535, not {port}")
        children: dict[str, subprocess.Popen[bytes]] = {}
        if role in ("all", "worker"):
            # Repair what a crash may have left on this node (agents whose
            # worker died, orphan sandboxes and worktrees) before new work starts.
            call_command("reconcile", stdout=io.StringIO())
        if role in ("all", "web"):
            children["web"] = self._start(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    host,
                    "-p",
                    str(port),
                    "orchestrator_site.asgi:application",
                ]
            )
        if role in ("all", "worker"):
            children["supervisor"] = self._start([sys.executable, "manage.py", "supervise"])
            children["worker"] = self._start([sys.executable, "manage.py", "qcluster"])
            if connection.vendor == "postgresql":
                # Kills of this node's agents issued by web processes on other
                # machines arrive here (docs/scaling.md).
                children["kill listener"] = self._start(
                    [sys.executable, "manage.py", "kill_listener"]
                )
        if "web" in children:
            shown = f"[{host}]" if ":" in host else host
            self.stdout.write(self.style.SUCCESS(f"Flotilla hub at http://{shown}:{port}/"))
            self.stdout.write(f"  dashboard  http://{shown}:{port}/dashboard/")
            self.stdout.write(f"  admin      http://{shown}:{port}/admin/")
            self.stdout.write(f"  API docs   http://{shown}:{port}/api/v1/docs/")
        self.stdout.write(
            f"node {settings.FLOTILLA_NODE_NAME}, data in {settings.DATA_DIR}; Ctrl-C stops the hub"
        )
        self._supervise(children)

    def _start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        # The child stays in this process group, so a kill of the group reaches
        # it and everything it starts, and it gets SIGTERM should runhub die alone.
        parent = os.getpid()
        return subprocess.Popen(
            argv, cwd=settings.BASE_DIR, preexec_fn=lambda: _terminate_with_parent(parent)
        )

    def _supervise(self, children: dict[str, subprocess.Popen[bytes]]) -> None:
        stopping = False

        def request_stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        exited = ""
        while not stopping and not exited:
            exited = next(
                (name for name, child in children.items() if child.poll() is not None), ""
            )
            time.sleep(0.2)
        self._stop(children)
        if exited:
            raise CommandError(
                f"the {exited} process exited with status "
                f"{children[exited].returncode}; the hub stopped"
            )
        self.stdout.write("hub stopped")

    def _stop(self, children: dict[str, subprocess.Popen[bytes]]) -> None:
        """SIGTERM every child, wait up to STOP_GRACE_S, then SIGKILL whatever of theirs is left."""
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + settings.FLOTILLA_NODE_STOP_S + STOP_GRACE_S
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for pid in [child.pid, *_descendants(child.pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                child.wait()


def _terminate_with_parent(parent: int) -> None:
    """In the child before exec: SIGTERM when runhub dies, however it dies."""
    parent_death_signal(signal.SIGTERM, parent=parent)


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (the django-q2 cluster's workers, say)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found
