"""Which gates a profile asks for, and which commands a repository gives them.

Commands come from the ``[gates]`` table of the target repository's
``.flotilla.toml`` (read from the base branch, so an agent cannot weaken its
own gates by editing the file) and may be overridden per spawn::

    [gates]
    lint = "ruff check {changed_files}"
    typecheck = { command = "mypy .", baseline = true }
    tests = "python -m pytest -q"
    build = "python -m build"
    timeout_s = 600
    coverage = { command = "python -m pytest -q --cov=.", threshold = 85 }

A command gate given as a table takes ``command``, ``baseline`` (compare
with a run on the base commit, ``gates.baseline``) and
``changed_files_globs`` (which changed files ``{changed_files}`` names);
coverage takes ``command``, ``threshold``, ``changed_files_globs`` and
``runs_tests``. docs/gates.md describes each.

The ``[setup]`` table of the same file names the commands that prepare an
agent's worktree before its runtime starts (docs/setup.md)::

    [setup]
    commands = ["python -m pip install --target .deps -r requirements.txt"]
    cache_key_files = ["requirements*.txt"]   # default: the usual lock files
    timeout_s = 900                           # per command, at most FLOTILLA_SETUP_TIMEOUT_S
"""

import enum
import fnmatch
import posixpath
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from gates.errors import GateConfigError
from gates.models import GateStage

COMMAND_GATES = ("lint", "typecheck", "tests", "coverage", "build")
# Command gates whose output can be compared with a run on the base commit;
# coverage is a threshold, not a list of findings.
BASELINE_GATES = ("lint", "typecheck", "tests", "build")
# The changed files ``{changed_files}`` names unless the gate's
# ``changed_files_globs`` says otherwise. A glob without a "/" matches a
# file's name in any directory; one with a "/" matches the whole path.
CHANGED_FILES_GLOBS: dict[str, tuple[str, ...]] = {
    "lint": ("*.py", "*.pyi"),
    "typecheck": ("*.py", "*.pyi"),
    "tests": ("test_*.py", "*_test.py"),
    "coverage": ("test_*.py", "*_test.py"),
    "build": ("*",),
}
# The files whose contents key a repository's setup cache unless its
# ``[setup] cache_key_files`` says otherwise: the lock files of the usual
# package managers, matched as ``changed_files_globs`` are.
SETUP_CACHE_KEY_FILES = (
    "requirements*.txt",
    "constraints*.txt",
    "poetry.lock",
    "uv.lock",
    "Pipfile.lock",
    "pdm.lock",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "Gemfile.lock",
    "Cargo.lock",
    "go.sum",
)
_SETUP_KEYS = {"commands", "cache_key_files", "timeout_s"}
_TABLE_KEYS = {"command", "baseline", "changed_files_globs"}
_COVERAGE_KEYS = {"command", "threshold", "changed_files_globs", "runs_tests"}


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

# Stages that end at their first failing gate: the later pre-push gates are
# the expensive ones (a coverage run, a build, a paid AI review), and a
# branch that cannot merge is not ready whatever they would say.
STOP_AT_FIRST_FAILURE = frozenset({GateStage.PRE_PUSH})

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
    # Gates that fail only on findings the base commit did not have.
    baseline: frozenset[str] = frozenset()
    changed_files_globs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Whether the coverage command runs the whole suite the tests command
    # runs; None leaves it to ``tests_run_under_coverage``.
    coverage_runs_tests: bool | None = None

    def globs(self, gate: str) -> tuple[str, ...]:
        return self.changed_files_globs.get(gate) or CHANGED_FILES_GLOBS.get(gate, ("*",))

    @property
    def tests_run_under_coverage(self) -> bool:
        """The tests gate runs the coverage command, and coverage judges that same run.

        Only when the coverage command runs every test the tests command runs:
        by default when it *is* the tests command with options added (it starts
        with it), otherwise when the repository says so with ``runs_tests``.
        """
        tests, coverage = self.commands.get("tests"), self.commands.get("coverage")
        if not tests or not coverage:
            return False
        if self.coverage_runs_tests is not None:
            return self.coverage_runs_tests
        return coverage == tests or coverage.startswith(tests + " ")


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
    found: dict[str, Any] = {
        "commands": {},
        "coverage_threshold": float(settings.FLOTILLA_COVERAGE_THRESHOLD),
        "timeout_s": float(settings.FLOTILLA_GATE_TIMEOUT_S),
        "baseline": set(),
        "changed_files_globs": {},
        "coverage_runs_tests": None,
    }
    for source_name, source in ((CONFIG_FILE, table), ("spawn options", overrides or {})):
        for key, value in source.items():
            where = f"{source_name}: gates.{key}"
            if key in COMMAND_GATES and isinstance(value, dict):
                value = _gate_table(key, value, where, found)
            if key in COMMAND_GATES:
                if not isinstance(value, str):
                    raise GateConfigError(f"{where} must be a command string")
                if value.strip():
                    found["commands"][key] = value.strip()
                else:
                    found["commands"].pop(key, None)
            elif key in ("coverage_threshold", "threshold"):
                found["coverage_threshold"] = _number(where, value, 0, 100)
            elif key == "timeout_s":
                found["timeout_s"] = _number(where, value, 1, 24 * 3600)
            else:
                raise GateConfigError(f"{where} is not a known gate setting")
    found["baseline"] = frozenset(found["baseline"])
    return GateConfig(**found)


def _gate_table(gate: str, table: dict[str, Any], where: str, into: dict[str, Any]) -> object:
    """Read a gate's table into ``into``; its command (the earlier one when it names none).

    The command is as the table gives it: the caller checks that it is a string.
    """
    allowed = _COVERAGE_KEYS if gate == "coverage" else _TABLE_KEYS
    if gate not in BASELINE_GATES:
        allowed = allowed - {"baseline"}
    unknown = set(table) - allowed
    if unknown:
        raise GateConfigError(f"{where} has unknown keys {sorted(unknown)}")
    if "threshold" in table:
        into["coverage_threshold"] = _number(where + ".threshold", table["threshold"], 0, 100)
    if "baseline" in table:
        if not isinstance(table["baseline"], bool):
            raise GateConfigError(f"{where}.baseline must be true or false")
        if table["baseline"]:
            into["baseline"].add(gate)
        else:
            into["baseline"].discard(gate)
    if "runs_tests" in table:
        if not isinstance(table["runs_tests"], bool):
            raise GateConfigError(f"{where}.runs_tests must be true or false")
        into["coverage_runs_tests"] = table["runs_tests"]
    if "changed_files_globs" in table:
        globs = table["changed_files_globs"]
        if (
            not isinstance(globs, list)
            or not globs
            or not all(isinstance(glob, str) and glob.strip() for glob in globs)
        ):
            raise GateConfigError(
                f'{where}.changed_files_globs must be a list of globs, such as ["*.py"]'
            )
        into["changed_files_globs"][gate] = tuple(glob.strip() for glob in globs)
    return table.get("command", into["commands"].get(gate, ""))


def _number(where: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise GateConfigError(f"{where} must be a number from {low:g} to {high:g}")
    return float(value)


@dataclass(frozen=True)
class SetupConfig:
    """The repository's ``[setup]``: commands run in the agent's sandbox before its runtime."""

    commands: tuple[str, ...]
    cache_key_files: tuple[str, ...] = SETUP_CACHE_KEY_FILES
    # Per command; the hub holds it to FLOTILLA_SETUP_TIMEOUT_S.
    timeout_s: float = 1800.0

    def key_files(self, paths: Iterable[str]) -> list[str]:
        """The ``paths`` that key the setup cache, matched as ``changed_files_globs`` are."""

        def matches(path: str, glob: str) -> bool:
            # As gates.commandline.glob_matches (which imports this module).
            return fnmatch.fnmatchcase(path if "/" in glob else posixpath.basename(path), glob)

        return [path for path in paths if any(matches(path, g) for g in self.cache_key_files)]


def setup_config_parse(*, text: str | None) -> SetupConfig | None:
    """The ``[setup]`` table of a ``.flotilla.toml``; None when it names no command.

    A file that is not TOML at all is left to the gates, which reject every
    change with the parse error; a malformed ``[setup]`` raises ``GateConfigError``.
    """
    if not text:
        return None
    try:
        table = tomllib.loads(text).get("setup")
    except tomllib.TOMLDecodeError:
        return None
    if table is None:
        return None
    where = f"{CONFIG_FILE}: setup"
    if not isinstance(table, dict):
        raise GateConfigError(f"{where} must be a table")
    unknown = set(table) - _SETUP_KEYS
    if unknown:
        raise GateConfigError(f"{where} has unknown keys {sorted(unknown)}")
    commands = table.get("commands", [])
    if isinstance(commands, str):
        commands = [commands]
    if not isinstance(commands, list) or not all(
        isinstance(command, str) and command.strip() for command in commands
    ):
        raise GateConfigError(f"{where}.commands must be a list of command strings")
    if not commands:
        return None
    found: dict[str, Any] = {"commands": tuple(command.strip() for command in commands)}
    if "cache_key_files" in table:
        globs = table["cache_key_files"]
        if not isinstance(globs, list) or not all(
            isinstance(glob, str) and glob.strip() for glob in globs
        ):
            raise GateConfigError(
                f'{where}.cache_key_files must be a list of globs, such as ["requirements*.txt"]'
            )
        found["cache_key_files"] = tuple(glob.strip() for glob in globs)
    timeout = table.get("timeout_s", settings.FLOTILLA_SETUP_TIMEOUT_S)
    found["timeout_s"] = min(
        _number(f"{where}.timeout_s", timeout, 1, 24 * 3600),
        float(settings.FLOTILLA_SETUP_TIMEOUT_S),
    )
    return SetupConfig(**found)
