"""Outbound federation HTTP: signed requests to peers, signed answers checked.

Every call has a connect and a read timeout from settings, so a peer that
is down or stuck yields ``PeerUnreachable`` quickly instead of a hang.
"""

import json
import threading
import uuid
from typing import Any

import requests
from django.conf import settings
from django.utils import timezone

from federation import signing
from federation.documents import PublishedKey
from federation.errors import PeerAnswerInvalid, PeerCommandFailed, PeerUnreachable, PeerUrlInvalid
from federation.identity import identity_document, signing_key
from federation.models import Peer
from federation.services import key_lookup_in
from netguard.http import OutboundRefused, outbound_session
from netguard.outbound import url_target

_local = threading.local()


def _session() -> requests.Session:
    # One keep-alive session per thread: requests' Session is not thread-safe.
    # A peer's URL is not the hub's own choice, so it goes through the outbound guard.
    if not hasattr(_local, "session"):
        _local.session = outbound_session()
    session: requests.Session = _local.session
    return session


def _timeouts() -> tuple[float, float]:
    return settings.FLOTILLA_FEDERATION_CONNECT_TIMEOUT_S, settings.FLOTILLA_FEDERATION_TIMEOUT_S


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def _exchange(
    method: str,
    url: str,
    body: bytes | None,
    key_lookup: signing.KeyLookup | None,
    sign_version: int | None = None,
) -> tuple[int, dict[str, Any], requests.Response]:
    try:
        url_target(url)  # a URL that is no http(s) URL goes no further, not even to signing
    except OutboundRefused as error:
        raise PeerUrlInvalid(
            f"{url[:200]} is not usable: {error}", fields={"url": [str(error)]}
        ) from None
    headers: dict[str, str] = {"Accept": "application/json"}
    if body is not None:
        key_id, private_key = signing_key(version=sign_version)
        headers = signing.request_sign(
            method=method,
            url=url,
            body=body,
            key_id=key_id,
            private_key=private_key,
            headers=headers,
        )
    try:
        response = _session().request(
            method, url, data=body, headers=headers, timeout=_timeouts(), allow_redirects=False
        )
    except requests.Timeout:
        raise PeerUnreachable(f"{url} did not answer within {_timeouts()[1]} s") from None
    except OutboundRefused as error:
        raise PeerUrlInvalid(
            f"{url} is refused: {error}", fields={"url": [f"refused: {error}"]}
        ) from None
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.InvalidSchema,
        requests.exceptions.MissingSchema,
        ValueError,  # urllib3's LocationParseError, for a host it cannot parse
    ) as error:
        # A URL no request can be made to is the caller's mistake, not a gateway failure.
        raise PeerUrlInvalid(
            f"{url} is not a usable URL: {type(error).__name__}",
            fields={"url": ["not a usable URL"]},
        ) from None
    except requests.RequestException as error:
        raise PeerUnreachable(f"{url} is unreachable: {type(error).__name__}") from None
    try:
        data = response.json()
    except ValueError:
        raise PeerAnswerInvalid(f"{url} answered {response.status_code} without JSON") from None
    if not isinstance(data, dict):
        raise PeerAnswerInvalid(f"{url} answered with JSON that is not an object")
    lookup = key_lookup or key_lookup_in(data.get("keys") or [])
    try:
        signing.response_verify(
            status=response.status_code,
            headers=response.headers,
            body=response.content,
            key_lookup=lookup,
        )
    except signing.SignatureRejected as error:
        raise PeerAnswerInvalid(
            f"{url} answered without a valid signature: {error.reason}"
        ) from None
    return response.status_code, data, response


def identity_fetch(*, url: str) -> dict[str, Any]:
    """A hub's identity document, checked to be signed by one of the keys it lists."""
    status, data, _ = _exchange("GET", f"{url.rstrip('/')}/federation/v1/identity", None, None)
    if status != 200:
        raise PeerAnswerInvalid(f"{url} answered {status} to an identity request")
    return data


def connect_send(
    *,
    url: str,
    keys: list[PublishedKey],
    sign_version: int | None = None,
) -> dict[str, Any]:
    """Introduce this hub to ``url``; the answer must be signed with one of ``keys``."""
    body = json_bytes(identity_document())
    status, data, _ = _exchange(
        "POST", f"{url.rstrip('/')}/federation/v1/connect", body, key_lookup_in(keys), sign_version
    )
    if status >= 300:
        error = data.get("error") or {}
        raise PeerCommandFailed(
            f"{url} refused the connection ({status}): {error.get('message', '')}",
            status=status,
            peer_code=str(error.get("code", "")),
        )
    return data


def message_envelope(
    *,
    command: str,
    payload: dict[str, Any],
    message_id: str | None = None,
) -> dict[str, Any]:
    return {
        "message_id": message_id or str(uuid.uuid4()),
        "instance_id": settings.FLOTILLA_INSTANCE_ID,
        "command": command,
        "payload": payload,
        "timestamp": timezone.now().isoformat(),
    }


def command_send(
    *, peer: Peer, command: str, payload: dict[str, Any], message_id: str | None = None
) -> dict[str, Any]:
    """Send one command; returns the answer's ``data`` or raises PeerCommandFailed."""
    envelope = message_envelope(command=command, payload=payload, message_id=message_id)
    status, data, _ = _exchange(
        "POST", f"{peer.url}/federation/v1/commands", json_bytes(envelope), key_lookup_in(peer.keys)
    )
    if data.get("correlation_id") not in (None, envelope["message_id"]):
        raise PeerAnswerInvalid(f"{peer.instance_id} answered another message")
    if status >= 300 or not data.get("success"):
        error = data.get("error") or {}
        raise PeerCommandFailed(
            f"{peer.instance_id} refused {command} ({status}): {error.get('message', '')}",
            status=status,
            peer_code=str(error.get("code", "")),
        )
    return data.get("data") or {}


def events_send(*, peer: Peer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, data, _ = _exchange(
        "POST", f"{peer.url}/federation/v1/events", json_bytes(body), key_lookup_in(peer.keys)
    )
    return status, data
