"""Reconcile this node once (call it when the hub starts) and ensure the periodic schedule."""

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from agents.reconciler import agents_reconcile, reconcile_schedule_ensure


class Command(BaseCommand):
    help = (
        "Compare the agents of this node with what really runs (worker processes, "
        "containers, cgroups, worktrees, the queue), repair the difference, print a JSON "
        "report, and make sure the django-q2 schedule that repeats this exists."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-schedule",
            action="store_true",
            help="do not create or update the periodic schedule",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["no_schedule"]:
            reconcile_schedule_ensure()
        report = agents_reconcile(node=settings.FLOTILLA_NODE_NAME)
        self.stdout.write(json.dumps(report.as_dict(), indent=2))
