"""Kill every live agent from the command line."""

import json

from django.core.management.base import BaseCommand, CommandParser

from killswitch.services import agent_kill_all, hub_halt


class Command(BaseCommand):
    help = "Kill every live agent on this hub; --halt also refuses new spawns until released."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reason", required=True)
        parser.add_argument("--halt", action="store_true", help="halt the hub first")

    def handle(self, *args: object, reason: str, halt: bool, **options: object) -> None:
        if halt:
            hub_halt(reason=reason, actor="cli")
        self.stdout.write(json.dumps(agent_kill_all(reason=reason, actor="cli")))
