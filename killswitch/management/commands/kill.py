"""Kill one agent from the command line."""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.errors import AgentError
from killswitch.services import agent_kill


class Command(BaseCommand):
    help = "Kill one agent now: its processes, sandbox and worktree (unpushed work is kept)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent_id")
        parser.add_argument("--reason", required=True)

    def handle(self, *args: object, agent_id: str, reason: str, **options: object) -> None:
        try:
            termination = agent_kill(agent_id=agent_id, reason=reason, actor="cli")
        except AgentError as error:
            raise CommandError(str(error)) from None
        if not termination.terminated:
            raise CommandError(f"agent {agent_id} was already {termination.previous_state}")
        self.stdout.write(
            f"killed {agent_id} (was {termination.previous_state}) "
            f"in {termination.latency_ms:.0f} ms"
        )
