"""The small protocol every sandbox backend implements.

A handle is a plain JSON-serialisable dict stored on the agent row, so any
process on the node (the web process serving a kill, the reconciler) can act
on a sandbox that a worker process started.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from gates.base import HubFault

SandboxHandle = dict[str, Any]
OutputSink = Callable[[list[str]], None]

AGENT_LABEL = "FLOTILLA_AGENT_ID"
# Which hub started a process (settings.FLOTILLA_HUB_UID): the reconciler
# sweeps only its own hub's sandboxes.
HUB_LABEL = "FLOTILLA_HUB_UID"
WORKSPACE = "/workspace"
# Host system directories every sandbox sees read-only (a symlink, as on a
# merged-/usr system, is reproduced as a symlink).
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
# The files of /etc a sandbox needs, read-only. Docker writes its own hosts;
# bwrap binds the host's. No sandbox gets a resolv.conf: it has no network to
# resolve names on, and the egress proxy resolves them for it.
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
HOSTS_FILE = "/etc/hosts"
# Where a sandbox finds the hub's egress proxy (a Unix socket bound into it),
# and the loopback port its bridge turns that socket into for ordinary clients.
EGRESS_SOCKET = "/run/flotilla/egress.sock"
EGRESS_PROXY_PORT = 3128
# Where a sandbox finds the hub's model gateway (agents/gateway), bridged the
# same way; a CLI agent is pointed at http://127.0.0.1:3129. It is bound in
# every network mode, "off" included: it reaches the model and nothing else.
MODEL_SOCKET = "/run/flotilla/model.sock"
MODEL_GATEWAY_PORT = 3129
# A CLI agent's home (agents/runtimes/cli): a directory the hub keeps per
# agent, bound read-write, so the CLI's sessions outlive each command and a pause.
AGENT_HOME = "/home/agent"
# The bridge: socat listens on the sandbox's own loopback and relays each
# connection to the socket; the command starts once every port is listening
# (0C38 is 3128 in /proc/net/tcp, 0A is LISTEN), so its first request finds it.
_BRIDGE_LISTENER = (
    "socat TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork UNIX-CONNECT:{socket} "
    "</dev/null >/dev/null 2>&1 & "
)
_BRIDGE_LISTENING = "grep -q ':{hexport} 00000000:0000 0A' /proc/net/tcp"
_BRIDGE_WAIT = (
    "i=0; while [ $i -lt 500 ] && ! {{ {listening}; }}; "
    'do i=$((i+1)); sleep 0.005; done; exec /bin/sh -c "$0"'
)


def _bridge(ports: dict[int, str]) -> str:
    """The shell line that bridges each loopback port to its socket, then runs "$0"."""
    listeners = "".join(
        _BRIDGE_LISTENER.format(port=port, socket=path) for port, path in ports.items()
    )
    listening = " && ".join(_BRIDGE_LISTENING.format(hexport=f"{port:04X}") for port in ports)
    return listeners + _BRIDGE_WAIT.format(listening=listening)


def sandbox_toolchain() -> Path | None:
    """The gate toolchain (``manage.py sandbox_toolchain``) if it is built.

    Every backend binds it read-only at the same path and puts its ``bin``
    first on ``PATH``, so gate commands find ruff and pytest in any sandbox.
    """
    toolchain = Path(settings.FLOTILLA_SANDBOX_TOOLCHAIN)
    return toolchain if (toolchain / "bin" / "python").exists() else None


def agent_clis_dir() -> Path | None:
    """The CLI agents' programs (``manage.py agent_clis``) if installed; bound read-only too."""
    directory = Path(settings.FLOTILLA_AGENT_CLIS_DIR)
    return directory if (directory / "node_modules").is_dir() else None


def sandbox_search_path() -> str:
    toolchain = sandbox_toolchain()
    path = settings.FLOTILLA_SANDBOX_PATH
    return f"{toolchain / 'bin'}:{path}" if toolchain else path


def sandbox_environment(handle: "SandboxHandle") -> dict[str, str]:
    """The whole environment a sandboxed command starts with; nothing of the hub's leaks in."""
    env = {
        "PATH": sandbox_search_path(),
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        AGENT_LABEL: handle["agent_id"],
        **handle.get("env", {}),
    }
    if handle.get("egress_socket"):
        proxy = f"http://127.0.0.1:{EGRESS_PROXY_PORT}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env[name] = env[name.lower()] = proxy
        env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
    return env


def sandbox_command(handle: "SandboxHandle", command: str) -> list[str]:
    """The argv that runs ``command`` inside a sandbox, behind the bridges of its sockets."""
    ports = {}
    if handle.get("egress_socket"):
        ports[EGRESS_PROXY_PORT] = EGRESS_SOCKET
    if handle.get("model_socket"):
        ports[MODEL_GATEWAY_PORT] = MODEL_SOCKET
    if ports:
        return ["/bin/sh", "-c", _bridge(ports), command]
    return ["/bin/sh", "-c", command]


class SandboxError(HubFault):
    """The sandbox could not be started or used: the hub's fault, never the agent's."""


class SandboxUnavailable(SandboxError):
    """The backend is not installed, not enabled or not reachable on this node."""


@dataclass(frozen=True)
class SandboxSpec:
    agent_id: str
    workspace: Path
    # The agent's network mode: "off", "allowlist" or "on" (agents.models.NetworkMode);
    # whatever it is, the sandbox itself has no network, only ``egress_socket``.
    network: str = "off"
    # Narrows the operator's egress allowlist in mode "allowlist": host or host:port.
    allow_hosts: tuple[str, ...] = ()
    memory_mb: int = 1024
    pids: int = 256
    cpus: float = 1.0
    env: dict[str, str] = field(default_factory=dict)
    # The hub's egress proxy for this agent (a Unix socket on the host), bound
    # into the sandbox at EGRESS_SOCKET; empty: the sandbox has no egress at all.
    egress_socket: str = ""
    # The hub's model gateway for this agent (a Unix socket on the host), bound
    # into the sandbox at MODEL_SOCKET in every network mode; empty: none.
    model_socket: str = ""
    # A CLI agent's home on the host, bound read-write at AGENT_HOME; empty: none.
    home: str = ""
    # The largest file any process of the sandbox may write (RLIMIT_FSIZE);
    # 0 for no limit. The worktree's size is watched too, but only every few
    # seconds: this stops a single huge write at once.
    max_file_bytes: int = 0


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

    def workspace_handle(self, handle: SandboxHandle, workspace: Path) -> SandboxHandle:
        """A handle that runs commands as ``handle`` does, with ``workspace`` at /workspace.

        Same user, limits, cgroup, labels and network; only the directory
        differs. The gates run a command on the base commit's checkout this
        way (``baseline = true`` in docs/gates.md), so its output names the
        same paths as the run on the change.
        """
        raise SandboxUnavailable(
            f"the {self.name} sandbox cannot run a command in a second workspace, which a gate "
            "with baseline = true needs (use the bwrap backend)"
        )

    @abstractmethod
    def kill(self, handle: SandboxHandle) -> None:
        """Stop everything the sandbox runs, at once. Idempotent; callable from any process."""

    def kill_many(self, handles: list[SandboxHandle]) -> None:
        """``kill`` for many sandboxes (a kill-all); no kill waits behind another."""
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(handles)))) as pool:
            list(pool.map(self.kill, handles))

    @abstractmethod
    def remove(self, handle: SandboxHandle) -> None:
        """Release what ``start`` created. Idempotent."""

    @abstractmethod
    def live_agent_ids(self) -> set[str]:
        """Agent ids that have something running in this backend on this node."""
