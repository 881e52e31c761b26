from django.core.management.base import BaseCommand, CommandError, CommandParser

from gates.toolchain import ToolchainError, toolchain_ensure


class Command(BaseCommand):
    help = "Build the virtualenv of gate tools (ruff, pytest, coverage) that sandboxes run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true", help="rebuild even if up to date")

    def handle(self, *args: object, force: bool, **options: object) -> None:
        try:
            report = toolchain_ensure(force=force)
        except ToolchainError as error:
            raise CommandError(str(error)) from None
        verb = "built" if report.built else "already up to date"
        self.stdout.write(f"sandbox toolchain {verb}: {report.path}")
