"""The CLI agents' programs: pinned npm packages in one tools directory.

``manage.py agent_clis`` installs every registered CLI (``CliPackage``) with
npm into ``FLOTILLA_AGENT_CLIS_DIR``, which every sandbox binds read-only at
the same path (docker containers too: the image binds the host's system
directories when a container starts). An install is built beside the live
directory and swapped in whole, so a running agent never sees half of one;
an identical install already in place makes the command instant.
"""

import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from gates.base import HubFault

_MARKER = ".flotilla-agent-clis"
_NPM_TIMEOUT_S = 1800


@dataclass(frozen=True)
class CliPackage:
    """One agent CLI as npm ships it: the package, the pinned version, the command it installs."""

    runtime: str
    package: str
    version: str
    binary: str
    title: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


class CliInstallError(HubFault):
    """npm could not install the CLIs, or what it installed does not run."""


@dataclass(frozen=True)
class InstallReport:
    path: Path
    built: bool
    packages: tuple[str, ...]


def cli_binary(package: CliPackage, directory: Path | None = None) -> Path:
    """Where the CLI's command is, on the host and (bound at the same path) in every sandbox."""
    root = Path(directory or settings.FLOTILLA_AGENT_CLIS_DIR)
    return root / "node_modules" / ".bin" / package.binary


def cli_missing(package: CliPackage) -> str | None:
    """Why the CLI cannot run on this hub (in words for a spawn's 400), or None when it can."""
    installed = _installed_specs(Path(settings.FLOTILLA_AGENT_CLIS_DIR))
    if package.spec in installed and os.access(cli_binary(package), os.X_OK):
        return None
    return (
        f"the {package.runtime} runtime needs the {package.title} CLI ({package.binary}, "
        f"from {package.spec}), which is not installed on this hub; an operator installs it "
        "with `python manage.py agent_clis`"
    )


def clis_install(
    *, packages: list[CliPackage], directory: Path | None = None, force: bool = False
) -> InstallReport:
    """Install ``packages`` unless exactly these are in place already (then this is instant)."""
    directory = Path(directory or settings.FLOTILLA_AGENT_CLIS_DIR)
    specs = tuple(sorted(package.spec for package in packages))
    ready = set(specs) <= _installed_specs(directory) and all(
        os.access(cli_binary(package, directory), os.X_OK) for package in packages
    )
    if ready and not force:
        return InstallReport(directory, False, specs)
    if not shutil.which("npm"):
        raise CliInstallError("npm is not installed (apt-get install nodejs npm)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    _check_reachable(directory.parent)
    staging = directory.with_name(f".{directory.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _npm_install(staging, packages)
        for package in packages:
            _check_runs(package, staging)
        (staging / _MARKER).write_text(json.dumps({"packages": list(specs)}) + "\n")
        staging.chmod(0o755)
        _swap_in(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return InstallReport(directory, True, specs)


def _npm_install(staging: Path, packages: list[CliPackage]) -> None:
    staging.mkdir(mode=0o755)
    manifest = {
        "name": "flotilla-agent-clis",
        "private": True,
        "dependencies": {package.package: package.version for package in packages},
    }
    (staging / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    # The CLIs' own install scripts fetch nothing: each copies the native
    # binary that a platform package (an optional dependency) brought.
    result = subprocess.run(
        [
            "npm",
            "install",
            "--prefix",
            str(staging),
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--omit=dev",
            "--loglevel=error",
        ],
        capture_output=True,
        text=True,
        timeout=_NPM_TIMEOUT_S,
        env={**os.environ, "npm_config_update_notifier": "false"},
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise CliInstallError(f"npm could not install {_specs(packages)}: {detail}")


def _check_runs(package: CliPackage, directory: Path) -> None:
    """The installed command runs and says it is the pinned version."""
    binary = cli_binary(package, directory)
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=60
        )
    except OSError as error:
        raise CliInstallError(f"{package.spec} installed no runnable {binary}: {error}") from None
    said = f"{result.stdout} {result.stderr}"
    if result.returncode != 0 or package.version not in said:
        raise CliInstallError(
            f"{binary} --version said {said.strip()[:300]!r}, not version {package.version}"
        )


def _swap_in(staging: Path, directory: Path) -> None:
    """Put the new install in place in one rename; the old one goes once it is out of the way."""
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    if directory.exists():
        directory.rename(old)
    staging.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def _installed_specs(directory: Path) -> set[str]:
    try:
        recorded = json.loads((directory / _MARKER).read_text())
    except (OSError, ValueError):
        return set()
    packages = recorded.get("packages") if isinstance(recorded, dict) else None
    return (
        {spec for spec in packages if isinstance(spec, str)}
        if isinstance(packages, list)
        else set()
    )


def _specs(packages: list[CliPackage]) -> str:
    return ", ".join(package.spec for package in packages)


def _check_reachable(path: Path) -> None:
    """Every directory from / to the tools directory must let the sandbox user through."""
    unreachable = [
        str(parent) for parent in [path, *path.parents] if not parent.stat().st_mode & stat.S_IXOTH
    ]
    if unreachable:
        raise CliInstallError(
            f"the sandbox user cannot reach {path}: no o+x on {', '.join(unreachable)}; "
            "set FLOTILLA_AGENT_CLIS_DIR to a path outside such directories"
        )
