"""Which gates a profile asks for, and which commands a repository gives them.

Commands come from the ``[gates]`` table of the target repository's
``.flotilla.toml`` (read from the base branch, so an agent cannot weaken its
own gates by editing the file) and may be overridden per spawn::

    [gates]
    lint = "ruff check ."
    typecheck = "mypy ."
    tests = "python -m pytest -q"
    build = "python -m build"
    timeout_s = 600
    coverage = { command = "python -m pytest -q --cov=.", threshold = 85 }
"""

import enum
import tomllib
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from gates.errors import GateConfigError
from gates.models import GateStage

COMMAND_GATES = ("lint", "typecheck", "tests", "coverage", "build")


class Requirement(enum.Enum):
    # The profile needs this gate: unconfigured is "not configured", which
    # fails under strict and warns otherwise.
    REQUIRED = "required"
    # The gate runs when configured and is silently absent otherwise: a
    # repository that sets a coverage threshold wants it enforced.
    IF_CONFIGURED = "if_configured"


_R, _C = Requirement.REQUIRED, Requirement.IF_CONFIGURED

# Gates in the order they run. Cheap checks come first in each stage; the AI
# review comes last because it costs money and sees the diff.
STAGE_GATES: dict[str, tuple[str, ...]] = {
    GateStage.PRE_COMMIT: ("secret_scan", "lint", "typecheck", "tests"),
    GateStage.PRE_PUSH: ("merge_conflicts", "coverage", "build", "coordinator", "ai_review"),
}

PROFILES: dict[str, dict[str, Requirement]] = {
    "strict": {
        "secret_scan": _R,
        "lint": _R,
        "typecheck": _R,
        "tests": _R,
        "coverage": _R,
        "build": _R,
        "ai_review": _R,
        "merge_conflicts": _R,
        "coordinator": _C,
    },
    "standard": {
        "secret_scan": _R,
        "lint": _R,
        "tests": _R,
        "typecheck": _C,
        "coverage": _C,
        "build": _C,
        "merge_conflicts": _R,
        "coordinator": _C,
    },
    "minimal": {"secret_scan": _R, "tests": _R, "merge_conflicts": _R, "coordinator": _C},
}

CONFIG_FILE = ".flotilla.toml"


@dataclass(frozen=True)
class GateConfig:
    commands: dict[str, str] = field(default_factory=dict)
    coverage_threshold: float = 85.0
    timeout_s: float = 600.0


def profile_gates(profile: str, stage: str) -> list[tuple[str, Requirement]]:
    if profile not in PROFILES:
        raise GateConfigError(f"unknown gate profile {profile!r}; use {', '.join(PROFILES)}")
    wanted = PROFILES[profile]
    return [(name, wanted[name]) for name in STAGE_GATES[stage] if name in wanted]


def gate_config_parse(*, text: str | None, overrides: dict[str, Any] | None = None) -> GateConfig:
    """Merge the repository's ``[gates]`` table with the spawn's overrides (which win)."""
    table: dict[str, Any] = {}
    if text:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise GateConfigError(f"{CONFIG_FILE} is not valid TOML: {error}") from None
        table = document.get("gates") or {}
        if not isinstance(table, dict):
            raise GateConfigError(f"{CONFIG_FILE}: [gates] must be a table")
    commands: dict[str, str] = {}
    threshold = float(settings.FLOTILLA_COVERAGE_THRESHOLD)
    timeout_s = float(settings.FLOTILLA_GATE_TIMEOUT_S)
    for source_name, source in ((CONFIG_FILE, table), ("spawn options", overrides or {})):
        for key, value in source.items():
            where = f"{source_name}: gates.{key}"
            if key == "coverage" and isinstance(value, dict):
                unknown = set(value) - {"command", "threshold"}
                if unknown:
                    raise GateConfigError(f"{where} has unknown keys {sorted(unknown)}")
                if "threshold" in value:
                    threshold = _number(where + ".threshold", value["threshold"], 0, 100)
                value = value.get("command", commands.get("coverage", ""))
            if key in COMMAND_GATES:
                if not isinstance(value, str):
                    raise GateConfigError(f"{where} must be a command string")
                if value.strip():
                    commands[key] = value.strip()
                else:
                    commands.pop(key, None)
            elif key in ("coverage_threshold", "threshold"):
                threshold = _number(where, value, 0, 100)
            elif key == "timeout_s":
                timeout_s = _number(where, value, 1, 24 * 3600)
            else:
                raise GateConfigError(f"{where} is not a known gate setting")
    return GateConfig(commands=commands, coverage_threshold=threshold, timeout_s=timeout_s)


def _number(where: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise GateConfigError(f"{where} must be a number from {low:g} to {high:g}")
    return float(value)
