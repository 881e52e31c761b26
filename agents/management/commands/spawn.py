"""Spawn a script agent from the command line."""

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.errors import AgentError
from agents.services import SpawnRequest, agent_spawn
from agents.workspace import repository_problem, repository_scheme


class Command(BaseCommand):
    help = "Spawn a script agent on a repository; prints the new agent's id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("repository", help="path or URL of a git repository")
        parser.add_argument("script", help="shell command to run in the sandbox")
        parser.add_argument("--branch", default="main")
        parser.add_argument("--task-id", default="cli")
        parser.add_argument("--timeout", type=int, default=0, help="seconds")
        parser.add_argument("--sandbox", default="", help="bwrap, docker or process")
        parser.add_argument(
            "--network",
            nargs="?",
            const="on",
            default="off",
            choices=["off", "allowlist", "on"],
            help="the sandbox's network mode; --network alone means on",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        repository = options["repository"]
        if repository_scheme(repository) == "file" and not repository.startswith("file:"):
            # A path on the command line is relative to where the operator stands.
            repository = os.path.abspath(repository)
        problem = repository_problem(repository)
        if problem:
            raise CommandError(problem)
        if options["timeout"] < 0:
            raise CommandError("--timeout must not be negative")
        request = SpawnRequest(
            task_id=options["task_id"],
            agent_type="worker",
            runtime="script",
            repository=repository,
            base_branch=options["branch"],
            script=options["script"],
            timeout_s=options["timeout"],
            sandbox=options["sandbox"],
            network=options["network"],
        )
        try:
            agent = agent_spawn(request=request, requested_by="cli")
        except AgentError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(str(agent.id))
