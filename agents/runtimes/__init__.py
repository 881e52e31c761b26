from django.utils.module_loading import import_string

from agents.runtimes.base import AgentRuntime

RUNTIMES = {
    "script": "agents.runtimes.script.ScriptRuntime",
    "claude": "agents.runtimes.claude.ClaudeRuntime",
    # CLI agents (agents/runtimes/cli, docs/agents.md): one module each.
    "claude-code": "agents.runtimes.cli.claude_code.ClaudeCodeRuntime",
    "codex": "agents.runtimes.cli.codex.CodexRuntime",
}


def runtime_for(name: str) -> AgentRuntime:
    runtime_class: type[AgentRuntime] = import_string(RUNTIMES[name])
    return runtime_class()


def runtime_unavailable(name: str) -> str | None:
    """Why this hub cannot run ``name`` (a CLI that is not installed, say), or None."""
    if name not in RUNTIMES:
        return f"runtime {name} is not available on this hub"
    return runtime_for(name).unavailable()
