"""The small protocol every sandbox backend implements.

A handle is a plain JSON-serialisable dict stored on the agent row, so any
process on the node (the web process serving a kill, the reconciler) can act
on a sandbox that a worker process started.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

SandboxHandle = dict[str, Any]
OutputSink = Callable[[list[str]], None]

AGENT_LABEL = "FLOTILLA_AGENT_ID"
WORKSPACE = "/workspace"
# Host system directories every sandbox sees read-only (a symlink, as on a
# merged-/usr system, is reproduced as a symlink).
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
# The files of /etc a sandbox needs, read-only. Docker writes its own hosts,
# hostname and resolv.conf; bwrap binds the host's (NETWORK_ETC_FILES).
ETC_FILES = (
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
)
NETWORK_ETC_FILES = ("/etc/hosts", "/etc/resolv.conf")


def sandbox_toolchain() -> Path | None:
    """The gate toolchain (``manage.py sandbox_toolchain``) if it is built.

    Every backend binds it read-only at the same path and puts its ``bin``
    first on ``PATH``, so gate commands find ruff and pytest in any sandbox.
    """
    toolchain = Path(settings.FLOTILLA_SANDBOX_TOOLCHAIN)
    return toolchain if (toolchain / "bin" / "python").exists() else None


def sandbox_search_path() -> str:
    toolchain = sandbox_toolchain()
    path = settings.FLOTILLA_SANDBOX_PATH
    return f"{toolchain / 'bin'}:{path}" if toolchain else path


class SandboxError(Exception):
    """The sandbox could not be started or used."""


class SandboxUnavailable(SandboxError):
    """The backend is not installed, not enabled or not reachable on this node."""


@dataclass(frozen=True)
class SandboxSpec:
    agent_id: str
    workspace: Path
    network: bool = False
    memory_mb: int = 1024
    pids: int = 256
    cpus: float = 1.0
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None
    timed_out: bool
    output_tail: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class Sandbox(ABC):
    name: str

    @abstractmethod
    def start(self, spec: SandboxSpec) -> SandboxHandle:
        """Prepare an isolated place to run commands for one agent."""

    @abstractmethod
    def exec(
        self,
        handle: SandboxHandle,
        command: str,
        *,
        timeout_s: float,
        on_output: OutputSink | None = None,
    ) -> ExecResult:
        """Run a shell command in the sandbox, streaming output lines to ``on_output``."""

    @abstractmethod
    def kill(self, handle: SandboxHandle) -> None:
        """Stop everything the sandbox runs, at once. Idempotent; callable from any process."""

    @abstractmethod
    def remove(self, handle: SandboxHandle) -> None:
        """Release what ``start`` created. Idempotent."""

    @abstractmethod
    def live_agent_ids(self) -> set[str]:
        """Agent ids that have something running in this backend on this node."""
