"""Install the CLI agents' programs (Claude Code, Codex) at their pinned versions with npm."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.runtimes.cli import cli_packages
from agents.runtimes.cli.install import CliInstallError, clis_install


class Command(BaseCommand):
    help = (
        "Install the pinned npm packages of the CLI runtimes (claude-code, codex) into "
        "FLOTILLA_AGENT_CLIS_DIR, which sandboxes bind read-only. Does nothing when exactly "
        "these versions are installed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true", help="reinstall even if up to date")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = clis_install(packages=cli_packages(), force=options["force"])
        except CliInstallError as error:
            raise CommandError(str(error)) from None
        verb = "installed" if report.built else "already installed"
        self.stdout.write(f"agent CLIs {verb} in {report.path}: {', '.join(report.packages)}")
