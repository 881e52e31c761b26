"""One agent's model gateway: HTTP/1.1 on a Unix socket, forwarded with the hub's key.

Each request is read whole (its head within a deadline, its body bounded),
its token checked, its model priced and the agent's budget checked before
anything goes upstream. The reply is relayed as it arrives, chunk by chunk,
while a meter reads the usage it reports; the agent's spending grows by each
reply's cost, and the caller hears of it off the event loop. Upstream
requests go through one pooled client per process (agents/gateway/upstream.py).
"""

import asyncio
import contextlib
import hmac
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from http import HTTPStatus
from typing import TypedDict

import h11
import httpx2
from django.conf import settings

from agents.gateway.providers import Provider, UsageMeter
from agents.gateway.upstream import reply_headers, upstream_headers
from agents.runtimes.claude.accounting import model_price
from agents.unixserver import UnixServer

logger = logging.getLogger(__name__)


class ModelUsage(TypedDict):
    """What the gateway reports after each model reply that carried usage."""

    input_tokens: int  # not counting cache reads, as the Messages API counts them
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: str  # a decimal string
    model: str


# The gateway ignores what the callback returns (the hub hands it to a thread).
UsageCallback = Callable[[ModelUsage], object]

_RECEIVE = 256 * 1024


class Refused(Exception):
    """The gateway answers ``status`` with a provider-shaped error and closes the connection."""

    def __init__(self, status: int, message: str, *, budget: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.budget = budget


@dataclass(frozen=True)
class GatewayLimits:
    head_timeout_s: float
    max_head_bytes: int
    max_request_bytes: int
    max_connections: int
    idle_timeout_s: float

    @classmethod
    def from_settings(cls) -> "GatewayLimits":
        return cls(
            head_timeout_s=settings.FLOTILLA_GATEWAY_HEAD_TIMEOUT_S,
            max_head_bytes=settings.FLOTILLA_GATEWAY_MAX_HEAD_BYTES,
            max_request_bytes=settings.FLOTILLA_GATEWAY_MAX_REQUEST_BYTES,
            max_connections=settings.FLOTILLA_GATEWAY_MAX_CONNECTIONS,
            idle_timeout_s=settings.FLOTILLA_GATEWAY_IDLE_TIMEOUT_S,
        )


@dataclass
class Account:
    """What the agent may spend, has spent, and whether a call was refused for it."""

    budget_usd: Decimal | None
    spent_usd: Decimal
    exhausted: bool = False

    def admit(self) -> None:
        if self.budget_usd is not None and self.spent_usd >= self.budget_usd:
            self.exhausted = True
            raise Refused(
                429,
                f"the agent's budget of ${self.budget_usd} is exhausted "
                f"(${self.spent_usd} spent); the hub pauses the agent",
                budget=True,
            )


class AgentGateway(UnixServer):
    """The gateway of one agent: its token, provider, account and open connections."""

    label = "model gateway"

    def __init__(
        self,
        *,
        provider: Provider,
        token: str,
        account: Account,
        limits: GatewayLimits,
        http: httpx2.AsyncClient,
        report: UsageCallback,
    ) -> None:
        super().__init__()
        self.provider = provider
        self._token: bytes | None = token.encode()
        self.account = account
        self.limits = limits
        self.http = http
        self.report = report

    async def close(self) -> None:
        """Refuse the token from now on, stop listening and cut every open connection."""
        self._token = None
        await super().close()

    async def _serve(self, client: socket.socket) -> None:
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        try:
            if len(self.connections) > self.limits.max_connections:
                limit = self.limits.max_connections
                raise Refused(429, f"too many open connections for this agent (limit {limit})")
            first = True
            while await self._exchange(client, parser, first=first):
                parser.start_next_cycle()
                first = False
        except Refused as refusal:
            await self._refuse(client, parser, refusal)
        except (OSError, TimeoutError, h11.ProtocolError):
            pass  # the client went away or stalled: nothing to answer
        except httpx2.HTTPError as error:
            # The reply had begun: the client sees it end early, as the provider's would.
            logger.warning("a model reply broke off upstream: %s", type(error).__name__)
        except Exception:
            # Whatever a client sends must not take the loop down with it.
            logger.exception("model gateway connection failed")
        finally:
            client.close()

    async def _exchange(
        self, client: socket.socket, parser: h11.Connection, *, first: bool
    ) -> bool:
        """Serve one request; whether the connection may carry another."""
        request = await self._read_head(client, parser, first=first)
        if request is None:
            return False
        body = await self._read_body(client, parser, request)
        self._authenticate(request)
        target = request.target.decode("ascii", "replace")
        path = target.split("?", 1)[0]
        if request.method != b"POST" or path not in self.provider.endpoints:
            method = request.method.decode("ascii", "replace")
            raise Refused(404, f"the model gateway does not serve {method} {path}")
        model = self._admit(body, metered=path in self.provider.metered)
        await self._forward(client, parser, request, target, body, model)
        return parser.our_state is h11.DONE and parser.their_state is h11.DONE

    async def _read_head(
        self, client: socket.socket, parser: h11.Connection, *, first: bool
    ) -> h11.Request | None:
        # A new connection has the head timeout; a kept-alive one may wait longer between requests.
        waiting_s = self.limits.head_timeout_s if first else self.limits.idle_timeout_s
        try:
            async with asyncio.timeout(waiting_s):
                while (event := parser.next_event()) is h11.NEED_DATA:
                    parser.receive_data(await self._receive(client))
        except TimeoutError:
            if first:
                raise Refused(408, "the request head did not arrive in time") from None
            return None  # a kept-alive connection that stays quiet is closed
        except h11.RemoteProtocolError as error:
            raise Refused(error.error_status_hint, f"malformed request: {error}") from None
        return event if isinstance(event, h11.Request) else None

    async def _read_body(
        self, client: socket.socket, parser: h11.Connection, request: h11.Request
    ) -> bytes:
        limit = self.limits.max_request_bytes
        declared = [value for name, value in request.headers if name == b"content-length"]
        if declared and int(declared[0]) > limit:
            raise Refused(413, f"the request is larger than {limit} bytes")
        if parser.they_are_waiting_for_100_continue:
            # curl asks before sending a larger body, and would wait a second for this.
            await self._send(
                client, parser.send(h11.InformationalResponse(status_code=100, headers=[]))
            )
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    async with asyncio.timeout(self.limits.idle_timeout_s):
                        parser.receive_data(await self._receive(client))
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        raise Refused(413, f"the request is larger than {limit} bytes")
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(chunks)
                else:
                    raise ConnectionError("the client closed during its request")
        except TimeoutError:
            raise Refused(408, "the request body did not arrive in time") from None
        except h11.RemoteProtocolError as error:
            raise Refused(error.error_status_hint, f"malformed request: {error}") from None

    def _authenticate(self, request: h11.Request) -> None:
        """The agent's token, as an API key (x-api-key) or a bearer token; 401 otherwise."""
        token = self._token
        presented = [
            value.removeprefix(b"Bearer ").removeprefix(b"bearer ").strip()
            if name == b"authorization"
            else value.strip()
            for name, value in request.headers
            if name in (b"x-api-key", b"authorization")
        ]
        # Every candidate is compared, in constant time, so the answer's timing
        # tells nothing about the token.
        matches = [hmac.compare_digest(value, token or b"\0") for value in presented]
        if token is None or not any(matches):
            raise Refused(401, "invalid or expired agent token")

    def _admit(self, body: bytes, *, metered: bool) -> str:
        """The model the request names, once it has a price and the budget allows a call."""
        self.account.admit()
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            raise Refused(400, "the request body must be a JSON object") from None
        if not metered:
            return model if isinstance(model, str) else ""
        if not isinstance(model, str) or model_price(model, self.provider.prices()) is None:
            raise Refused(
                400,
                f"the hub has no price for model {model!r}, so cannot keep the agent's budget; "
                "an operator can add one in settings",
            )
        return model

    async def _forward(
        self,
        client: socket.socket,
        parser: h11.Connection,
        request: h11.Request,
        target: str,
        body: bytes,
        model: str,
    ) -> None:
        path = target.split("?", 1)[0]
        upstream = self.http.build_request(
            "POST",
            self.provider.upstream_url(target),
            headers=upstream_headers(request, self.provider),
            content=body,
        )
        try:
            response = await self.http.send(upstream, stream=True)
        except httpx2.HTTPError as error:
            raise Refused(502, f"the model provider could not be reached: {error}") from None
        meter = None
        if path in self.provider.metered and response.is_success:
            streamed = response.headers.get("content-type", "").startswith("text/event-stream")
            meter = UsageMeter(self.provider, streamed=streamed)
        try:
            head = h11.Response(
                status_code=response.status_code,
                headers=reply_headers(response),
                reason=response.reason_phrase.encode("ascii", "replace"),
            )
            await self._send(client, parser.send(head))
            await self._relay(client, parser, response, meter, model)
        finally:
            # Usage is recorded even for a reply cut short: the provider counted it.
            if meter is not None and not meter.recorded:
                self._record(meter, model)
            await response.aclose()

    async def _relay(
        self,
        client: socket.socket,
        parser: h11.Connection,
        response: httpx2.Response,
        meter: UsageMeter | None,
        model: str,
    ) -> None:
        """The reply's body, as it arrives; its cost is recorded before the client has it all.

        So the agent's next call, on whatever connection, meets the budget
        with this reply paid for. A stream is relayed chunk by chunk and
        recorded when its final usage passes; a plain reply is held until
        complete (its client waits for all of it anyway).
        """
        held: list[bytes] = []
        async for chunk in response.aiter_bytes():
            if meter is None:
                await self._send(client, parser.send(h11.Data(data=chunk)))
                continue
            meter.feed(chunk)
            if not meter.streamed:
                held.append(chunk)
                continue
            if meter.complete and not meter.recorded:
                self._record(meter, model)
            await self._send(client, parser.send(h11.Data(data=chunk)))
        if meter is not None and not meter.recorded:
            self._record(meter, model)
        for chunk in held:
            await self._send(client, parser.send(h11.Data(data=chunk)))
        await self._send(client, parser.send(h11.EndOfMessage()))

    def _record(self, meter: UsageMeter, requested: str) -> None:
        meter.recorded = True
        answered, usage = meter.result()
        if usage is None:
            return
        prices = self.provider.prices()
        model = answered if answered and model_price(answered, prices) else requested
        cost = usage.cost_usd(model, prices)
        self.account.spent_usd += cost
        self.report(
            {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_tokens": usage.cache_read_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
                "cost_usd": str(cost),
                "model": answered or requested,
            }
        )

    async def _refuse(
        self, client: socket.socket, parser: h11.Connection, refusal: Refused
    ) -> None:
        """The refusal as the provider would shape it; the connection then ends.

        Written as bytes, not through the parser, which will not answer a
        request whose head never arrived whole; nothing is written once a
        reply has begun.
        """
        if parser.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = json.dumps(
            self.provider.error_body(refusal.status, refusal.message, budget=refusal.budget)
        ).encode()
        # The SDKs would retry a 429 (and a 408); none of the gateway's own
        # refusals gets better by retrying. An unreachable provider (502) may.
        retry = "" if refusal.status >= 500 else "x-should-retry: false\r\n"
        head = (
            f"HTTP/1.1 {refusal.status} {HTTPStatus(refusal.status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{retry}connection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(OSError, TimeoutError):
            await self._send(client, head + body)

    async def _receive(self, client: socket.socket) -> bytes:
        return await asyncio.get_running_loop().sock_recv(client, _RECEIVE)

    async def _send(self, client: socket.socket, data: bytes | None) -> None:
        if not data:
            return
        # Most writes fit the socket buffer at once; only a client that stops
        # reading is waited for, and not beyond the idle timeout.
        try:
            sent = client.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            async with asyncio.timeout(self.limits.idle_timeout_s):
                await asyncio.get_running_loop().sock_sendall(client, data[sent:])
