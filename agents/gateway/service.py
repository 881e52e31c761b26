"""Opening and closing agents' model gateways: one event loop per process, in one daemon thread.

As with the egress proxies (agents/egress/service.py), every gateway of a
process runs on one loop, and one more thread hands usage to the callers
(which may write it to the database). A process that forks (django-q2
workers do) starts its own loop on first use. The registry of open gateways,
and so of live tokens, is this process's: the process that opened an agent's
gateway is the one that closes it.
"""

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

from agents.egress.service import egress_socket_path
from agents.gateway.providers import PROVIDERS
from agents.gateway.server import Account, AgentGateway, GatewayLimits, ModelUsage
from agents.gateway.upstream import upstream_client
from agents.sandboxes.base import MODEL_GATEWAY_PORT
from agents.unixserver import CALL_TIMEOUT_S, PerProcess, ServingLoop, unix_listen

logger = logging.getLogger(__name__)

# Where a sandbox's CLI finds its gateway (the bridge of agents/sandboxes/base.py).
GATEWAY_URL = f"http://127.0.0.1:{MODEL_GATEWAY_PORT}"

# Set on the thread that runs usage callbacks, so that a callback which closes
# its own agent's gateway does not wait for itself.
_delivering = threading.local()


class _GatewayLoop(ServingLoop):
    def __init__(self) -> None:
        super().__init__("flotilla-gateway")
        self.gateways: dict[str, tuple[AgentGateway, Path]] = {}
        # Agents whose gateway refused a call for budget, kept after it closes
        # so the runtime can tell a spent budget from any other end.
        self.exhausted: set[str] = set()
        self.usage = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flotilla-gateway-usage")
        self.http = upstream_client()

    async def open(self, agent_id: str, gateway: AgentGateway, socket_path: Path) -> None:
        await self.close(agent_id)
        self.exhausted.discard(agent_id)
        gateway.start(unix_listen(socket_path))
        self.gateways[agent_id] = (gateway, socket_path)

    async def close(self, agent_id: str) -> bool:
        opened = self.gateways.pop(agent_id, None)
        if opened is None:
            return False
        gateway, socket_path = opened
        await gateway.close()
        if gateway.account.exhausted:
            self.exhausted.add(agent_id)
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        return True

    def budget_exhausted(self, agent_id: str) -> bool:
        opened = self.gateways.get(agent_id)
        if opened is not None:
            return opened[0].account.exhausted
        return agent_id in self.exhausted


_gateway_loop = PerProcess(_GatewayLoop)


def gateway_socket_path(*, agent_id: str) -> Path:
    """Where the agent's gateway socket lives on the host: beside its egress socket.

    The same short, hub-private directory (agents/egress/service.py), so the
    path stays under the 108 bytes a Unix socket path may have.
    """
    return egress_socket_path(agent_id=agent_id).with_name(f"{agent_id}.model.sock")


def gateway_open(
    *,
    agent_id: str,
    provider: str,
    socket_path: Path,
    budget_usd: Decimal | None,
    spent_usd: Decimal,
    on_usage: Callable[[ModelUsage], None],
) -> str:
    """Start the model gateway of one agent on the Unix socket ``socket_path``; its token.

    ``provider`` is ``"anthropic"`` (POST /v1/messages and
    /v1/messages/count_tokens, forwarded to ANTHROPIC_BASE_URL with
    ANTHROPIC_API_KEY) or ``"openai"`` (POST /v1/responses, to OPENAI_BASE_URL
    with OPENAI_API_KEY); every other request is answered 404. A request must
    carry the returned token as its API key (``x-api-key`` or
    ``Authorization: Bearer``); the real key replaces it on the way out, and
    is never logged or reported. A model without a price in
    ``FLOTILLA_CLAUDE_PRICES`` / ``FLOTILLA_OPENAI_PRICES`` is refused (400).
    Once ``spent_usd`` plus the cost of the replies since has reached
    ``budget_usd`` (None: no limit), every call is refused with 429 and
    ``gateway_budget_exhausted`` says so.

    ``on_usage(usage)`` is called after each model reply that reported usage
    (one cut short included), on a thread of its own (never the event loop),
    in order, so it may write to the database; ``usage`` is
    ``{"input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "cost_usd" (a decimal string), "model"}``, input
    tokens not counting cache reads, as the Messages API counts them.

    The socket file is made as egress sockets are (agents/egress/service.py):
    connectable by ``settings.FLOTILLA_SANDBOX_UID``, a stale file replaced.
    Opening an agent that is open closes its gateway first, so the previous
    token dies. Raises ValueError for an unknown provider, OSError if the
    socket cannot be bound.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    process = _gateway_loop.get(start=True)
    assert process is not None
    token = f"flotilla-{secrets.token_urlsafe(32)}"
    gateway = AgentGateway(
        provider=PROVIDERS[provider],
        token=token,
        account=Account(budget_usd=budget_usd, spent_usd=Decimal(spent_usd)),
        limits=GatewayLimits.from_settings(),
        http=process.http,
        report=lambda usage: process.usage.submit(_deliver, on_usage, usage),
    )
    process.call(process.open(str(agent_id), gateway, Path(socket_path)))
    return token


def gateway_close(*, agent_id: str) -> None:
    """Kill the agent's token and cut its open streams at once; idempotent.

    The socket file is removed, so the sandbox can no longer connect. When
    this returns, every usage of the agent has been handed to its
    ``on_usage`` (unless this is called from within that callback, which then
    must not wait for itself).
    """
    process = _gateway_loop.get(start=False)
    if process is None:
        return
    if process.call(process.close(str(agent_id))) and not getattr(_delivering, "active", False):
        process.usage.submit(_nothing).result(CALL_TIMEOUT_S)


def gateway_budget_exhausted(*, agent_id: str) -> bool:
    """Whether the agent's gateway refused a call because its budget was spent.

    Still answered after ``gateway_close``, until the agent's gateway opens again.
    """
    process = _gateway_loop.get(start=False)
    return process is not None and process.budget_exhausted(str(agent_id))


def _deliver(callback: Callable[[ModelUsage], None], usage: ModelUsage) -> None:
    _delivering.active = True
    try:
        callback(usage)
    except Exception:
        # A failing callback (a database that went away) must not stop the
        # usage of other calls or of other agents.
        logger.exception("model gateway usage callback failed")


def _nothing() -> None:
    return None
