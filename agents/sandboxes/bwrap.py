"""Bubblewrap sandbox: every namespace unshared, the worktree the only writable place."""

import shutil
import subprocess
from pathlib import Path

from django.conf import settings

from agents.sandboxes.base import (
    ETC_FILES,
    NETWORK_ETC_FILES,
    SYSTEM_DIRS,
    WORKSPACE,
    ExecResult,
    OutputSink,
    Sandbox,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
    SandboxUnavailable,
    sandbox_search_path,
    sandbox_toolchain,
)
from agents.sandboxes.local import (
    local_exec,
    local_handle,
    local_kill,
    local_live_agent_ids,
    local_remove,
)


class BwrapSandbox(Sandbox):
    name = "bwrap"

    def __init__(self) -> None:
        self.bwrap = shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv")
        if not self.bwrap:
            raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap)")
        if not self.setpriv:
            raise SandboxUnavailable("setpriv is not installed (apt-get install util-linux)")

    def start(self, spec: SandboxSpec) -> SandboxHandle:
        uid = settings.FLOTILLA_SANDBOX_UID
        # The sandbox user must own its worktree to write to it; the hub
        # (root) still commits there, with safe.directory set by the workspace.
        chown = subprocess.run(
            ["chown", "-R", f"{uid}:{uid}", str(spec.workspace)], capture_output=True, text=True
        )
        if chown.returncode != 0:
            raise SandboxError(f"cannot hand the worktree to the sandbox user: {chown.stderr}")
        handle = local_handle(
            self.name,
            spec.agent_id,
            limits={"memory_mb": spec.memory_mb, "pids": spec.pids, "cpus": spec.cpus},
        )
        handle.update(
            workspace=str(spec.workspace), network=spec.network, env=dict(spec.env), uid=uid
        )
        return handle

    def exec(
        self,
        handle: SandboxHandle,
        command: str,
        *,
        timeout_s: float,
        on_output: OutputSink | None = None,
    ) -> ExecResult:
        return local_exec(
            handle,
            self.argv(handle, command),
            cwd=Path(handle["workspace"]),
            timeout_s=timeout_s,
            on_output=on_output,
        )

    def kill(self, handle: SandboxHandle) -> None:
        local_kill(handle)

    def remove(self, handle: SandboxHandle) -> None:
        local_remove(handle)

    def live_agent_ids(self) -> set[str]:
        return local_live_agent_ids()

    def argv(self, handle: SandboxHandle, command: str) -> list[str]:
        uid = str(handle["uid"])
        workspace = handle["workspace"]
        argv = [
            self.setpriv,
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--no-new-privs",
            self.bwrap,
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "sandbox",
            "--ro-bind",
            "/usr",
            "/usr",
            # The private /tmp comes before any bind below it (a toolchain or
            # a worktree under /tmp), which it would otherwise hide.
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
        ]
        for link in SYSTEM_DIRS:
            path = Path(link)
            if path.is_symlink():
                argv += ["--symlink", str(path.readlink()), link]
            elif path.is_dir():
                argv += ["--ro-bind", link, link]
        for extra in (*ETC_FILES, *NETWORK_ETC_FILES, *settings.FLOTILLA_SANDBOX_RO_BINDS):
            argv += ["--ro-bind-try", extra, extra]
        toolchain = sandbox_toolchain()
        if toolchain:
            argv += ["--ro-bind", str(toolchain), str(toolchain)]
        if handle.get("network"):
            argv.append("--share-net")
        argv += [
            "--bind",
            workspace,
            WORKSPACE,
            # The worktree's .git file points the hub's git at its metadata;
            # the agent may read it but never redirect it.
            "--ro-bind-try",
            f"{workspace}/.git",
            f"{WORKSPACE}/.git",
            # bwrap builds the root on a tmpfs; making it read-only leaves
            # /workspace and /tmp as the only places a command can write.
            "--remount-ro",
            "/",
            "--chdir",
            WORKSPACE,
            "--clearenv",
            "--setenv",
            "PATH",
            sandbox_search_path(),
            "--setenv",
            "HOME",
            "/tmp",
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--setenv",
            "FLOTILLA_AGENT_ID",
            handle["agent_id"],
        ]
        for key, value in handle.get("env", {}).items():
            argv += ["--setenv", key, value]
        return [*argv, "--", "/bin/sh", "-c", command]
