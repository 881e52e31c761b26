"""The "remote" sandbox backend: an agent that a peer hub runs.

Registered in ``FLOTILLA_SANDBOX_BACKENDS`` so that the agents app's own
terminate path (a kill, the kill switch's kill-all) reaches remote agents
without knowing about federation: killing the sandbox sends a signed
``agent.kill`` to the peer.
"""

from django.conf import settings

from agents.sandboxes.base import (
    ExecResult,
    OutputSink,
    Sandbox,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
    SandboxUnavailable,
)
from federation.errors import FederationError
from federation.remote import remote_agent_kill


class RemoteSandbox(Sandbox):
    name = "remote"

    def start(self, spec: SandboxSpec) -> SandboxHandle:
        raise SandboxUnavailable("remote agents are spawned through POST /api/v1/peers/{id}/agents")

    def exec(
        self,
        handle: SandboxHandle,
        command: str,
        *,
        timeout_s: float,
        on_output: OutputSink | None = None,
    ) -> ExecResult:
        raise SandboxUnavailable("a remote agent's sandbox is on its peer")

    def kill(self, handle: SandboxHandle) -> None:
        try:
            reason = f"killed through hub {settings.FLOTILLA_INSTANCE_ID}"
            remote_agent_kill(handle=handle, reason=reason)
        except FederationError as error:
            raise SandboxError(f"peer kill failed: {error.message}") from None

    def remove(self, handle: SandboxHandle) -> None:
        """Nothing of a remote agent lives on this hub."""

    def live_agent_ids(self) -> set[str]:
        return set()
