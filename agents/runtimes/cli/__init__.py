"""CLI agents: the coding agents' own command-line programs, run in the sandbox (docs/agents.md)."""

from django.utils.module_loading import import_string

from agents.runtimes import RUNTIMES
from agents.runtimes.cli.install import CliPackage


def cli_packages() -> list[CliPackage]:
    """The npm package of every registered CLI runtime, for ``manage.py agent_clis``."""
    from agents.runtimes.cli.base import CliRuntime

    runtimes = [import_string(path) for path in RUNTIMES.values()]
    return [runtime.cli for runtime in runtimes if issubclass(runtime, CliRuntime)]
