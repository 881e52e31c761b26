"""Start a hub on one machine: daphne (web) and the django-q2 cluster (worker)."""

import io
import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

ROLES = ("all", "web", "worker")


class Command(BaseCommand):
    help = "Start the hub: the web server and the worker cluster; Ctrl-C stops both."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--role",
            choices=ROLES,
            default="all",
            help="start only the web server or only the worker",
        )

    def handle(self, *args, host: str, port: int, role: str, **options) -> None:
        if not 0 < port < 65536:
            raise CommandError(f"--port must be between 1 and 65535, not {port}")
        children: dict[str, subprocess.Popen] = {}
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

    def _start(self, argv: list[str]) -> subprocess.Popen:
        # Each child leads its own process group, so stopping it also stops
        # whatever it started (daphne's and django-q2's own subprocesses).
        return subprocess.Popen(argv, cwd=settings.BASE_DIR, start_new_session=True)

    def _supervise(self, children: dict[str, subprocess.Popen]) -> None:
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

    def _stop(self, children: dict[str, subprocess.Popen]) -> None:
        for child in children.values():
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
