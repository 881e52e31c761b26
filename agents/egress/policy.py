"""What the egress proxy lets through: the operator's list, an agent's narrower list, and
the addresses no agent reaches.

How a host or ``host:port`` is written and which addresses are not public is
``netguard.addresses``, which the hub's own outbound guard shares, so an
address is private for the proxy exactly when it is for the hub. Nothing here
imports Django: settings.py parses the operator's list with it.
"""

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from netguard.addresses import (
    DEFAULT_PORTS,
    ENTRY_HINT,
    Allowlist,
    HostPort,
    IPAddress,
    address_problem,
    allowlist_parse,
    entry_format,
    entry_parse,
    host_addresses,
)

__all__ = [
    "DEFAULT_PORTS",
    "ENTRY_HINT",
    "NETWORK_MODES",
    "Allowlist",
    "EgressPolicy",
    "HostPort",
    "IPAddress",
    "address_problem",
    "allowlist_parse",
    "entry_format",
    "entry_parse",
    "host_addresses",
]

NETWORK_MODES = ("off", "allowlist", "on")


@dataclass(frozen=True)
class EgressPolicy:
    """One agent's egress: its mode, the operator's list, and the agent's narrower list if any."""

    mode: str
    operator: Allowlist
    agent: Allowlist | None = None

    def refuse_name(self, host: str, port: int) -> str | None:
        """Why ``host:port`` is refused before its name is looked up; None if it may be."""
        target = entry_format(host, port)
        if self.mode == "on":
            return None
        if self.mode != "allowlist":
            return "network is off for this agent"
        if not self.operator.permits(host, port):
            return f"{target} is not on the hub's egress allowlist"
        if self.agent is not None and not self.agent.permits(host, port):
            return f"{target} is not in this agent's allow_hosts"
        return None

    def refuse_addresses(
        self, host: str, port: int, addresses: Sequence[str], *, own: frozenset[IPAddress]
    ) -> str | None:
        """Why the addresses ``host`` resolved to are refused; None if every one is fine.

        One bad address refuses them all: a name that resolves to a public and
        a private address must not reach the private one on a later try.
        """
        if self.operator.names_exactly(host, port):
            return None
        for text in addresses:
            problem = address_problem(ipaddress.ip_address(text.partition("%")[0]), own)
            if problem:
                return f"{entry_format(host, port)} resolves to {text}, {problem}"
        return None
