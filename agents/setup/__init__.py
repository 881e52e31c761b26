"""Repository setup (``[setup]`` in ``.flotilla.toml``) and its cache; docs/setup.md."""

from agents.setup.service import SetupFailed, repository_setup, setup_config

__all__ = ["SetupFailed", "repository_setup", "setup_config"]
