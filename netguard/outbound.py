"""The outbound guard: which URLs and hosts the hub itself may connect to.

Every URL the hub fetches on someone's behalf (a project's webhook, a peer
hub, a repository, the coordinator) may name the hub's own host or its
private network: a request from the hub would carry the hub's reach there
(server-side request forgery). So the hub resolves the name itself, refuses
it when any address it resolves to is loopback, private, link-local, shared,
multicast, reserved, unspecified, a cloud metadata service or this host's
own, and then connects to one of exactly those vetted addresses, never
resolving again (``netguard.http``), so a name cannot change its answer
between the check and the connection (DNS rebinding). A redirect is a new
connection and is judged the same way.

The operator may open private addresses: all of them with
``FLOTILLA_ALLOW_PRIVATE_URLS`` (tests, the demo, a hub on a private
network), or single ``host:port`` entries with
``FLOTILLA_PRIVATE_URL_ALLOWLIST`` (an internal coordinator).
"""

import functools
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from netguard.addresses import Allowlist, address_problem, entry_format, host_addresses, host_parse

MAX_URL_LENGTH = 2000
DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22}


class OutboundRefused(ValueError):
    """The hub may not connect there; the message says why, for humans.

    A ``ValueError``, not an ``OSError``: HTTP libraries retry and rewrap
    socket errors, and a refusal must reach the caller as what it is.
    """


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int


def private_allowed(host: str, port: int) -> bool:
    """Whether the operator opened private addresses for ``host:port`` (or for all)."""
    if settings.FLOTILLA_ALLOW_PRIVATE_URLS:
        return True
    return _allowlist(tuple(settings.FLOTILLA_PRIVATE_URL_ALLOWLIST)).permits(host, port)


@functools.lru_cache(maxsize=8)
def _allowlist(entries: tuple[str, ...]) -> Allowlist:
    return Allowlist.parse(entries)


def url_target(url: str, *, schemes: tuple[str, ...] = ("http", "https")) -> Target:
    """The scheme, host and port ``url`` connects to; ``OutboundRefused`` if it is no such URL."""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise OutboundRefused(f"not a URL of at most {MAX_URL_LENGTH} characters")
    if any(ord(char) < 33 or ord(char) == 127 for char in url):
        raise OutboundRefused("a URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        raw_host = parts.hostname or ""
    except ValueError as error:
        raise OutboundRefused(f"not a URL: {error}") from None
    if parts.scheme not in schemes:
        raise OutboundRefused(f"only {', '.join(schemes)} URLs are allowed")
    if port == 0:
        raise OutboundRefused("port 0 is no port to connect to")
    return Target(parts.scheme, host_canonical(raw_host), port or DEFAULT_PORTS[parts.scheme])


def host_canonical(text: str) -> str:
    """A host name or address literal (IPv6 without brackets) in canonical form."""
    try:
        if ":" in text:
            return str(ipaddress.IPv6Address(text.removeprefix("[").removesuffix("]")))
        return host_parse(text)
    except ValueError:
        raise OutboundRefused(f"{text[:100]!r} is not a host name or address") from None


def host_resolve(host: str, port: int) -> list[str]:
    """The addresses of ``host`` the hub may connect to for ``port``.

    One forbidden address refuses them all (``OutboundRefused``): a name that
    resolves to a public and a private address must not reach the private
    one on a later try. A name that does not resolve raises ``socket.gaierror``.
    """
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (UnicodeError, ValueError):
        raise OutboundRefused(f"{host[:100]!r} is not a host name") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if private_allowed(_allowlist_form(host), port):
        return addresses
    own = host_addresses()
    for text in addresses:
        problem = address_problem(ipaddress.ip_address(text.partition("%")[0]), own)
        if problem:
            raise OutboundRefused(f"{entry_format(host, port)} resolves to {text}, {problem}")
    return addresses


def _allowlist_form(host: str) -> str:
    """``host`` as an allowlist entry writes it (lower case, IPv6 canonical)."""
    try:
        return host_canonical(host)
    except OutboundRefused:
        return host.lower().removesuffix(".")


def url_refusal(url: str, *, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    """Why the hub may not fetch ``url`` as things stand; None when it may.

    For validating input: a name that does not resolve now is not refused
    here (the connection, which checks again, will fail or succeed later).
    """
    try:
        target = url_target(url, schemes=schemes)
        host_vet(target.host, target.port)
    except OutboundRefused as error:
        return str(error)
    return None


def host_vet(host: str, port: int) -> list[str]:
    """``host_resolve``, except that a name that does not resolve gives no addresses."""
    try:
        return host_resolve(host, port)
    except OSError:
        return []
