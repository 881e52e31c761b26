from django.utils.module_loading import import_string

from agents.runtimes.base import AgentRuntime

RUNTIMES = {
    "script": "agents.runtimes.script.ScriptRuntime",
    "claude": "agents.runtimes.claude.ClaudeRuntime",
}


def runtime_for(name: str) -> AgentRuntime:
    return import_string(RUNTIMES[name])()
