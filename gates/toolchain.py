"""The sandbox toolchain: a virtualenv of gate tools that the sandbox user can run.

The hub's own Python usually lives somewhere the unprivileged sandbox user
cannot reach (a pyenv under /root), so gate commands such as ``ruff`` and
``pytest`` get a separate virtualenv built from the system Python, whose
interpreter is under /usr and therefore already inside every sandbox. The
bwrap backend binds the toolchain read-only at the same path and puts its
``bin`` first on PATH.
"""

import hashlib
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from gates.errors import GateError

TOOLCHAIN_PACKAGES = ("ruff>=0.6", "pytest>=8,<10", "pytest-cov>=5,<8", "coverage>=7,<8")
SYSTEM_PYTHON = "/usr/bin/python3"
_MARKER = ".flotilla-toolchain"


class ToolchainError(GateError):
    code = "toolchain_error"


@dataclass(frozen=True)
class ToolchainReport:
    path: Path
    built: bool
    packages: tuple[str, ...]


def _fingerprint(python: str, packages: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join([python, *packages]).encode()).hexdigest()


def toolchain_ready(path: Path | None = None) -> bool:
    path = Path(path or settings.FLOTILLA_SANDBOX_TOOLCHAIN)
    marker = path / _MARKER
    return (
        (path / "bin" / "python").exists()
        and marker.exists()
        and marker.read_text().strip() == _fingerprint(SYSTEM_PYTHON, TOOLCHAIN_PACKAGES)
    )


def toolchain_ensure(*, path: Path | None = None, force: bool = False) -> ToolchainReport:
    """Build the toolchain unless an identical one is already there (then this is instant)."""
    path = Path(path or settings.FLOTILLA_SANDBOX_TOOLCHAIN)
    if not force and toolchain_ready(path):
        return ToolchainReport(path, False, TOOLCHAIN_PACKAGES)
    if not Path(SYSTEM_PYTHON).exists():
        raise ToolchainError(f"{SYSTEM_PYTHON} is missing (apt-get install python3 python3-venv)")
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_reachable(path.parent)
    _run(
        [SYSTEM_PYTHON, "-m", "venv", "--clear", str(path)],
        "cannot create the virtualenv (is python3-venv installed?)",
    )
    _run(
        [
            str(path / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            *TOOLCHAIN_PACKAGES,
        ],
        "cannot install the gate tools",
    )
    path.chmod(0o755)
    (path / _MARKER).write_text(_fingerprint(SYSTEM_PYTHON, TOOLCHAIN_PACKAGES))
    return ToolchainReport(path, True, TOOLCHAIN_PACKAGES)


def _run(argv: list[str], problem: str) -> None:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=900, env={**os.environ, "PIP_NO_INPUT": "1"}
    )
    if result.returncode != 0:
        raise ToolchainError(f"{problem}: {(result.stderr or result.stdout).strip()[-2000:]}")


def _check_reachable(path: Path) -> None:
    """Every directory from / to the toolchain must let the sandbox user through."""
    unreachable = [
        str(parent) for parent in [path, *path.parents] if not parent.stat().st_mode & stat.S_IXOTH
    ]
    if unreachable:
        raise ToolchainError(
            f"the sandbox user cannot reach {path}: no o+x on {', '.join(unreachable)}; "
            "set FLOTILLA_SANDBOX_TOOLCHAIN to a path outside such directories"
        )
