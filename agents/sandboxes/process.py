"""No isolation at all: commands run as the hub user in the worktree. Development only."""

from pathlib import Path

from django.conf import settings

from agents.sandboxes.base import (
    ExecResult,
    OutputSink,
    Sandbox,
    SandboxHandle,
    SandboxSpec,
    SandboxUnavailable,
)
from agents.sandboxes.local import (
    local_exec,
    local_handle,
    local_kill,
    local_kill_many,
    local_live_agent_ids,
    local_remove,
)


class ProcessSandbox(Sandbox):
    name = "process"

    def __init__(self) -> None:
        if not settings.FLOTILLA_ALLOW_PROCESS_SANDBOX:
            raise SandboxUnavailable(
                "the process sandbox gives no isolation and is refused unless "
                "FLOTILLA_ALLOW_PROCESS_SANDBOX=true"
            )

    def start(self, spec: SandboxSpec) -> SandboxHandle:
        return local_handle(self.name, spec)

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
            ["/bin/sh", "-c", command],
            cwd=Path(handle["workspace"]),
            timeout_s=timeout_s,
            on_output=on_output,
            extra_env={**handle.get("env", {}), "FLOTILLA_AGENT_ID": handle["agent_id"]},
        )

    def workspace_handle(self, handle: SandboxHandle, workspace: Path) -> SandboxHandle:
        return {**handle, "workspace": str(workspace)}

    def kill(self, handle: SandboxHandle) -> None:
        local_kill(handle)

    def kill_many(self, handles: list[SandboxHandle]) -> None:
        local_kill_many(handles)

    def remove(self, handle: SandboxHandle) -> None:
        local_remove(handle)

    def live_agent_ids(self) -> set[str]:
        return local_live_agent_ids()
