"""The gateway's side towards the provider: one pooled HTTP client, and the headers each way.

The client is ``httpx2``'s: the HTTP client the ``anthropic`` SDK is built on,
so it is installed wherever the hub is, and it brings TLS, keep-alive to the
provider and streaming. The client's request headers pass on, except its
token and those of one hop; the hub's key is added. The provider's reply
headers pass back the same way.
"""

import h11
import httpx2
from django.conf import settings

from agents.gateway.providers import Provider
from agents.unixserver import HOP_BY_HOP

# Headers of one hop only (the framing too: each side frames its own), and
# then what the gateway itself sets: the host and length of the upstream
# request, the credentials, the encoding.
_HOP_BY_HOP = HOP_BY_HOP | {b"transfer-encoding"}
_NOT_FORWARDED = _HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"x-api-key",
    b"authorization",
    b"accept-encoding",
    # The gateway has the whole body before it forwards anything.
    b"expect",
}


def upstream_client() -> httpx2.AsyncClient:
    """The pooled client every gateway of the process forwards through."""
    timeout = httpx2.Timeout(
        settings.FLOTILLA_GATEWAY_UPSTREAM_TIMEOUT_S,
        connect=settings.FLOTILLA_GATEWAY_CONNECT_TIMEOUT_S,
    )
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=64)
    return httpx2.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)


def upstream_headers(request: h11.Request, provider: Provider) -> list[tuple[bytes, bytes]]:
    """The client's headers without its token or hop-by-hop ones, with the hub's key."""
    named = {
        token.strip().lower()
        for name, value in request.headers
        if name == b"connection"
        for token in value.split(b",")
    }
    kept = [
        (name, value)
        for name, value in request.headers
        if name not in _NOT_FORWARDED and name not in named
    ]
    # An uncompressed reply is what the meter can read; the client gets it as it came.
    return [*kept, (b"accept-encoding", b"identity"), *provider.key_headers()]


def reply_headers(response: httpx2.Response) -> list[tuple[bytes, bytes]]:
    """The provider's headers for the client; a compressed body is relayed decompressed."""
    encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
    dropped = _HOP_BY_HOP | ({b"content-encoding", b"content-length"} if encoded else set())
    return [(name, value) for name, value in response.headers.raw if name.lower() not in dropped]
