"""One agent's egress proxy: an HTTP forward proxy listening on a Unix socket.

A request head is parsed with h11, which bounds its size; a deadline bounds
the time it may take to arrive. ``CONNECT host:port`` opens a tunnel; an
absolute-form ``http://`` request is forwarded in origin form. The policy
judges the name first (so a refused name is never even looked up), then the
proxy resolves it itself and judges every address, and finally connects to
one of those vetted addresses, never resolving again: a name cannot switch
to a host address between the check and the connection (DNS rebinding).
"""

import asyncio
import logging
import socket
from contextlib import suppress
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

import h11
from django.conf import settings

from agents.egress import relay
from agents.egress.events import ConnectionRecord, EventReporter
from agents.egress.policy import EgressPolicy, entry_format, entry_parse, host_addresses
from agents.unixserver import UnixServer

logger = logging.getLogger(__name__)

# What getaddrinfo gives for a TCP host: (address, port), plus flow and scope for IPv6.
SocketAddress = tuple[str, int] | tuple[str, int, int, int]


@dataclass(frozen=True)
class ProxyLimits:
    head_timeout_s: float
    max_head_bytes: int
    max_connections: int
    idle_timeout_s: float
    connect_timeout_s: float
    dns_timeout_s: float
    max_events: int
    client_buffer_bytes: int

    @classmethod
    def from_settings(cls) -> "ProxyLimits":
        return cls(
            head_timeout_s=settings.FLOTILLA_EGRESS_HEAD_TIMEOUT_S,
            max_head_bytes=settings.FLOTILLA_EGRESS_MAX_HEAD_BYTES,
            max_connections=settings.FLOTILLA_EGRESS_MAX_CONNECTIONS,
            idle_timeout_s=settings.FLOTILLA_EGRESS_IDLE_TIMEOUT_S,
            connect_timeout_s=settings.FLOTILLA_EGRESS_CONNECT_TIMEOUT_S,
            dns_timeout_s=settings.FLOTILLA_EGRESS_DNS_TIMEOUT_S,
            max_events=settings.FLOTILLA_EGRESS_MAX_EVENTS,
            client_buffer_bytes=settings.FLOTILLA_EGRESS_CLIENT_BUFFER_BYTES,
        )


class Refused(Exception):
    """The proxy answers ``status`` with ``reason`` and closes the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = " ".join(reason.split())


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    # The origin-form path of a plain request; None for a CONNECT tunnel.
    path: str | None


def request_target(request: h11.Request) -> Target:
    """Where a request goes; Refused(400) for a target a forward proxy does not serve."""
    try:
        text = request.target.decode("ascii")
        if request.method == b"CONNECT":
            host, port = entry_parse(text)
            if port is None:
                raise ValueError("CONNECT needs host:port")
            return Target(host, port, None)
        url = urlsplit(text)
        if url.scheme == "https":
            raise ValueError("an https:// URL goes through CONNECT, not a plain request")
        if url.scheme != "http" or not url.netloc:
            raise ValueError("a request to the proxy needs an absolute http:// URL")
        if "@" in url.netloc:
            raise ValueError("credentials in the URL are not forwarded")
        host, port = entry_parse(url.netloc)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        return Target(host, port or 80, path)
    except (UnicodeDecodeError, ValueError) as error:
        raise Refused(400, str(error)) from None


async def answer(client: socket.socket, status: int, reason: str, timeout_s: float) -> None:
    """A one-line plain-text answer; a client that does not read it is not waited for."""
    body = f"{reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with suppress(OSError, relay.Idle):
        await relay.sendall(client, head + body, relay.Activity.start(timeout_s))


class AgentListener(UnixServer):
    """The proxy for one agent: its policy, limits, event reporter and open connections."""

    label = "egress proxy"

    def __init__(
        self, *, policy: EgressPolicy, limits: ProxyLimits, reporter: EventReporter
    ) -> None:
        super().__init__()
        self.policy = policy
        self.limits = limits
        self.reporter = reporter

    async def _serve(self, client: socket.socket) -> None:
        record = ConnectionRecord()
        try:
            if len(self.connections) > self.limits.max_connections:
                limit = self.limits.max_connections
                raise Refused(429, f"too many open connections for this agent (limit {limit})")
            await self._proxy(client, record)
        except Refused as refusal:
            record.reason, record.end = refusal.reason, f"refused with {refusal.status}"
            await answer(client, refusal.status, refusal.reason, self.limits.idle_timeout_s)
        except asyncio.CancelledError:
            record.end = "closed by the hub"
            raise
        except OSError as error:
            record.end = f"connection lost: {error.strerror or type(error).__name__}"
        except Exception as error:
            # Whatever a client sends must not take the loop down with it.
            logger.exception("egress proxy connection failed")
            record.end = f"proxy error: {type(error).__name__}"
        finally:
            client.close()
            self.reporter.report(record)

    async def _proxy(self, client: socket.socket, record: ConnectionRecord) -> None:
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        request = await self._read_head(client, parser)
        if request is None:
            record.end = "closed before a request"
            return
        record.method = request.method.decode("ascii", "replace")
        target = request_target(request)
        record.host, record.port = target.host, target.port
        upstream = await self._connect(target, record)
        idle_s, client_buffer = self.limits.idle_timeout_s, self.limits.client_buffer_bytes
        try:
            if target.path is None:
                early = parser.trailing_data[0]
                record.end = await relay.tunnel(
                    client,
                    upstream,
                    early=early,
                    record=record,
                    idle_s=idle_s,
                    client_buffer=client_buffer,
                )
            else:
                record.end = await relay.forward(
                    request,
                    parser,
                    client,
                    upstream,
                    host=target.host,
                    port=target.port,
                    path=target.path,
                    record=record,
                    idle_s=idle_s,
                    client_buffer=client_buffer,
                )
        finally:
            upstream.close()

    async def _read_head(self, client: socket.socket, parser: h11.Connection) -> h11.Request | None:
        # The deadline covers the whole head; the idle clock must not cut it first.
        activity = relay.Activity.start(self.limits.head_timeout_s + 1)
        try:
            async with asyncio.timeout(self.limits.head_timeout_s):
                while (event := parser.next_event()) is h11.NEED_DATA:
                    parser.receive_data(await relay.recv(client, activity))
        except TimeoutError:
            raise Refused(408, "the request head did not arrive in time") from None
        except h11.RemoteProtocolError as error:
            raise Refused(error.error_status_hint, f"malformed request: {error}") from None
        return event if isinstance(event, h11.Request) else None

    async def _connect(self, target: Target, record: ConnectionRecord) -> socket.socket:
        reason = self.policy.refuse_name(target.host, target.port)
        if reason:
            raise Refused(403, reason)
        addresses = await self._resolve(target)
        reason = self.policy.refuse_addresses(
            target.host, target.port, [address[1][0] for address in addresses], own=host_addresses()
        )
        if reason:
            raise Refused(403, reason)
        record.allowed, record.reason = True, "allowed"
        failure = "timed out"
        for family, sockaddr in addresses:
            upstream = socket.socket(family, socket.SOCK_STREAM)
            upstream.setblocking(False)
            try:
                async with asyncio.timeout(self.limits.connect_timeout_s):
                    await asyncio.get_running_loop().sock_connect(upstream, sockaddr)
            except BaseException as error:
                upstream.close()
                if not isinstance(error, OSError):  # a cancellation: the hub closes
                    raise
                failure = error.strerror or failure
                continue
            record.address = sockaddr[0]
            return upstream
        where = entry_format(target.host, target.port)
        raise Refused(502, f"could not connect to {where}: {failure}")

    async def _resolve(self, target: Target) -> list[tuple[int, SocketAddress]]:
        """Every (family, socket address) of the target, in the resolver's order."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.limits.dns_timeout_s):
                infos = await loop.getaddrinfo(
                    target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except TimeoutError:
            raise Refused(502, f"{target.host} did not resolve in time") from None
        except OSError as error:
            raise Refused(502, f"{target.host} does not resolve: {error.strerror}") from None
        return list(dict.fromkeys((info[0], info[4]) for info in infos))
