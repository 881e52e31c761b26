"""The limits an agent runs under: what it asked for, held to the operator's maxima.

A spawn may lower a limit, never raise it (DESIGN.md, "Containment rules").
The API refuses a request above a maximum with ``limit_problem``; every
other path that creates agents (a peer's spawn goes through the same API
serializer, a project's task, a management command, a service call) is held
to the maxima where the run starts, by ``agent_limits``, so no sandbox is
ever built past them.
"""

import math
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from agents.models import Agent

# The limits a spawn may ask for, each with the setting of its maximum and of its default.
MAXIMA = {
    "memory_mb": "FLOTILLA_MAX_MEMORY_MB",
    "pids": "FLOTILLA_MAX_PIDS",
    "cpus": "FLOTILLA_MAX_CPUS",
    "timeout_s": "FLOTILLA_MAX_TIMEOUT_S",
}
_DEFAULTS = {
    "memory_mb": "FLOTILLA_SANDBOX_MEMORY_MB",
    "pids": "FLOTILLA_SANDBOX_PIDS",
    "cpus": "FLOTILLA_SANDBOX_CPUS",
    "timeout_s": "FLOTILLA_DEFAULT_TIMEOUT_S",
}


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    pids: int
    cpus: float
    timeout_s: int
    output_bytes: int
    worktree_mb: int
    # What the agent asked for above a maximum, and got the maximum instead:
    # limit name → {"requested": ..., "maximum": ...}.
    held: dict[str, dict[str, float]] = field(default_factory=dict)

    def held_message(self) -> str:
        parts = [
            f"{name} {_number(values['requested'])} → {_number(values['maximum'])} ({MAXIMA[name]})"
            for name, values in self.held.items()
        ]
        return "limits held to the operator's maxima: " + ", ".join(parts)


def limit_maximum(name: str) -> float:
    """The operator's maximum for a spawn limit, read now (settings may change at run time)."""
    maximum: float = getattr(settings, MAXIMA[name])
    return maximum


def limit_problem(name: str, value: float) -> str | None:
    """Why a spawn may not ask for ``value`` as ``name``, or None when it may."""
    maximum = limit_maximum(name)
    if value <= maximum:
        return None
    return f"at most {_number(maximum)} ({MAXIMA[name]})"


def agent_limits(agent: Agent) -> Limits:
    """What ``agent`` asked for (or the default), never above a maximum."""
    options = agent.options or {}
    requested = {
        "memory_mb": options.get("memory_mb"),
        "pids": options.get("pids"),
        "cpus": options.get("cpus"),
        "timeout_s": agent.timeout_s,
    }
    chosen: dict[str, float] = {}
    held: dict[str, dict[str, float]] = {}
    for name, value in requested.items():
        wanted = _positive(value) or getattr(settings, _DEFAULTS[name])
        maximum = limit_maximum(name)
        if wanted > maximum:
            held[name] = {"requested": wanted, "maximum": maximum}
            wanted = maximum
        chosen[name] = wanted
    return Limits(
        memory_mb=int(chosen["memory_mb"]),
        pids=int(chosen["pids"]),
        cpus=float(chosen["cpus"]),
        timeout_s=int(chosen["timeout_s"]),
        output_bytes=settings.FLOTILLA_MAX_OUTPUT_BYTES,
        worktree_mb=settings.FLOTILLA_MAX_WORKTREE_MB,
        held=held,
    )


def _positive(value: Any) -> float | None:
    """A requested number, or None for anything else (absent, zero, malformed)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    usable = math.isfinite(number) and number > 0 and not isinstance(value, bool)
    return number if usable else None


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
