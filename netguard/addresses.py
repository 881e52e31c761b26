"""Hosts, ports and addresses: how an entry is written and which addresses are not public.

The settings, the spawn API, the egress proxy and the outbound guard all read
a ``host`` or ``host:port`` with ``entry_parse`` and judge an address with
``address_problem``, so ``pypi.org`` and "private" mean the same thing to
each. Nothing here imports Django: settings.py parses the operator's lists
with it.
"""

import ipaddress
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# A ``host`` entry opens the web ports only; any other port must be named.
DEFAULT_PORTS = frozenset({80, 443})
ENTRY_HINT = "use host or host:port, IPv6 in brackets (pypi.org, localhost:8080, [::1]:443)"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HostPort = tuple[str, int | None]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_PORT = re.compile(r"^[0-9]{1,5}$")
# Shared address space (RFC 6598): carrier NAT, and some clouds' internal networks.
_SHARED = ipaddress.ip_network("100.64.0.0/10")
# NAT64 (RFC 6052) reaches the IPv4 address in its last 32 bits; 6to4 (RFC
# 3056) carries one in bits 16-48, which a host with a 6to4 route reaches.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")
# Cloud instance metadata services: named apart because they hold credentials.
_METADATA = frozenset(
    ipaddress.ip_address(text)
    for text in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)


def port_parse(text: str) -> int:
    if not _PORT.match(text) or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port")
    return int(text)


def host_parse(text: str) -> str:
    """A DNS name or an IPv4 literal in canonical form; ValueError for anything else."""
    name = text.lower().removesuffix(".")
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        pass
    labels = name.split(".")
    # A numeric last label is no top-level domain, and resolvers read forms
    # such as 127.1 or 0x7f.1 as addresses: refuse them rather than guess.
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r} is not a host name")
    if labels[-1].isdigit():
        raise ValueError(f"{text!r} is neither a host name nor an IPv4 address")
    return name


def entry_parse(text: str) -> HostPort:
    """``(host, port)`` of ``host`` or ``host:port`` (port None); ValueError if malformed."""
    raw = text.strip()
    try:
        if raw.startswith("["):
            address, bracket, rest = raw[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError("unclosed bracket")
            host = str(ipaddress.IPv6Address(address))
            return host, port_parse(rest[1:]) if rest else None
        name, colon, port = raw.rpartition(":") if ":" in raw else (raw, "", "")
        return host_parse(name), port_parse(port) if colon else None
    except ValueError:
        raise ValueError(f"{text!r} is not a host or host:port ({ENTRY_HINT})") from None


def entry_format(host: str, port: int | None = None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def allowlist_parse(text: str) -> tuple[str, ...]:
    """The canonical entries of a comma-separated list, in order, without repeats."""
    entries = (entry_format(*entry_parse(item)) for item in text.split(",") if item.strip())
    return tuple(dict.fromkeys(entries))


@dataclass(frozen=True)
class Allowlist:
    entries: frozenset[HostPort]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "Allowlist":
        return cls(frozenset(entry_parse(entry) for entry in entries))

    def permits(self, host: str, port: int) -> bool:
        return self.names_exactly(host, port) or (
            port in DEFAULT_PORTS and (host, None) in self.entries
        )

    def names_exactly(self, host: str, port: int) -> bool:
        return (host, port) in self.entries

    def covers(self, entry: str) -> bool:
        """Whether every host and port that ``entry`` opens is permitted here."""
        host, port = entry_parse(entry)
        return all(self.permits(host, each) for each in ([port] if port else DEFAULT_PORTS))


def address_problem(address: IPAddress, own: frozenset[IPAddress]) -> str | None:
    """Why ``address`` must not be reached; None for a public address of another host.

    IPv4-mapped, NAT64 and 6to4 IPv6 addresses are judged by the IPv4 address
    they reach, so ``::ffff:127.0.0.1`` is loopback.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        elif address in _6TO4:
            address = ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    kinds = (
        ("cloud metadata", address in _METADATA),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("shared, 100.64.0.0/10", address in _SHARED),
        ("not global", not address.is_global),
    )
    for kind, applies in kinds:
        if applies:
            return f"not a public address ({kind})"
    # A public address of the hub's own host reaches the hub's own services.
    return "an address of this host" if address in own else None


_own_lock = threading.Lock()
_own_cache: tuple[float, frozenset[IPAddress]] = (-1e9, frozenset())
# Interfaces change rarely; rereading /proc once in a while keeps the check current.
_OWN_TTL_S = 10.0


def host_addresses() -> frozenset[IPAddress]:
    """Every address of this host's interfaces (read from /proc), cached briefly."""
    global _own_cache
    with _own_lock:
        if time.monotonic() - _own_cache[0] < _OWN_TTL_S:
            return _own_cache[1]
        _own_cache = (time.monotonic(), frozenset(_ipv4_local() | _ipv6_local()))
        return _own_cache[1]


def _ipv4_local() -> set[IPAddress]:
    """The ``host LOCAL`` entries of the kernel's routing trie: this host's IPv4 addresses."""
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        return set()
    found: set[IPAddress] = set()
    for previous, line in zip(lines, lines[1:], strict=False):
        if "/32 host LOCAL" in line and "|--" in previous:
            found.add(ipaddress.IPv4Address(previous.split("|--")[1].strip()))
    return found


def _ipv6_local() -> set[IPAddress]:
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return set()
    return {ipaddress.IPv6Address(int(line.split()[0], 16)) for line in lines if line.strip()}
