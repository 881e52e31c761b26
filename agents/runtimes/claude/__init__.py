"""The ``claude`` runtime: the agent the product exists for (docs/claude.md)."""

from agents.runtimes.claude.runtime import ClaudeRuntime

__all__ = ["ClaudeRuntime"]
