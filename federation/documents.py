"""Another hub's identity document and base URL, checked before anything of them is kept.

A connect's body and a fetched identity come from whoever sent them; the
instance id, the URL the hub will send commands and events to, and the keys
it will pin must each have one plain shape, or the document is refused
(``MessageMalformed``, 400) and nothing is recorded.
"""

import ipaddress
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypedDict
from urllib.parse import urlsplit

from django.utils import timezone

from federation import signing
from federation.errors import MessageMalformed
from netguard.outbound import url_refusal

INSTANCE_ID = re.compile(r"^[A-Za-z0-9._~-]{1,100}$")
MAX_URL_LENGTH = 500
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class PublishedKey(TypedDict):
    """One key of an identity document, as a hub publishes it and a peer pins it."""

    key_id: str
    alg: str | None
    public_key: str
    created: str | None
    expires: str | None


class PeerIdentity(TypedDict):
    """The parts of an identity document a hub keeps of a peer (``identity_validate``)."""

    instance_id: str
    name: str
    url: str
    keys: list[PublishedKey]
    capabilities: list[str]


def peer_url_problem(url: Any) -> str | None:
    """Why ``url`` cannot be a peer hub's base URL; None when it can.

    A base URL is http(s) and names a host, and carries nothing a request
    built on it would misuse: no credentials (they would travel with every
    command and land in logs), no query and no fragment. Whether the hub may
    reach that host at all is the outbound guard's question, asked last.
    """
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL_LENGTH:
        return f"must be a URL of at most {MAX_URL_LENGTH} characters"
    if not url.isascii() or any(ord(char) < 33 or ord(char) == 127 for char in url):
        return "must be ASCII, without spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if "@" in parts.netloc:
        return "must not carry a user name or password"
    if "?" in url or "#" in url:
        return "must not have a query or a fragment"
    if not _host_is_valid(parts.hostname or "") or port == 0:
        return "must name a host (and a port from 1 to 65535, if any)"
    return url_refusal(url)


def _host_is_valid(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        labels = host.rstrip(".").split(".")
        return len(host) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


def identity_validate(document: Mapping[str, Any]) -> PeerIdentity:
    """The parts of an identity document we keep, checked; raises MessageMalformed."""
    instance_id = document.get("instance_id")
    if not isinstance(instance_id, str) or not INSTANCE_ID.match(instance_id):
        raise MessageMalformed("instance_id must be 1-100 URL-safe characters")
    url = document.get("url")
    problem = peer_url_problem(url)
    if problem:
        raise MessageMalformed(f"url {problem}", fields={"url": [problem]})
    name = document.get("name")
    capabilities = document.get("capabilities")
    return {
        "instance_id": instance_id,
        "name": name[:200] if isinstance(name, str) and name else instance_id,
        "url": str(url).rstrip("/"),  # a str: peer_url_problem refuses anything else
        "keys": _keys_validate(instance_id, document.get("keys")),
        "capabilities": [c for c in capabilities if isinstance(c, str)][:50]
        if isinstance(capabilities, list)
        else [],
    }


def _keys_validate(instance_id: str, keys: Any) -> list[PublishedKey]:
    if not isinstance(keys, list) or not 1 <= len(keys) <= 20:
        raise MessageMalformed("keys must list 1 to 20 keys")
    pinned: list[PublishedKey] = []
    for key in keys:
        if (
            not isinstance(key, dict)
            or not isinstance(key.get("key_id"), str)
            or not key["key_id"].startswith(f"{instance_id}#")
            or len(key["key_id"]) > 200
        ):
            raise MessageMalformed(f"every key_id must be {instance_id}#<version>")
        if key.get("alg", signing.ALGORITHM) != signing.ALGORITHM:
            raise MessageMalformed(f"key {key['key_id']} must be {signing.ALGORITHM}")
        if not all(_is_short_text(key.get(name)) for name in ("created", "expires")):
            raise MessageMalformed(f"key {key['key_id']}: created and expires are dates or null")
        try:
            signing.public_key_load(str(key.get("public_key")))
        except ValueError:
            raise MessageMalformed(f"key {key['key_id']} is not an ed25519 public key") from None
        pinned.append(
            PublishedKey(
                key_id=key["key_id"],
                alg=key.get("alg"),
                public_key=key["public_key"],  # a missing key failed to load above
                created=key.get("created"),
                expires=key.get("expires"),
            )
        )
    return pinned


def _is_short_text(value: Any) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= 64)


def key_fingerprints(keys: Any) -> list[dict[str, str]]:
    """``[{key_id, fingerprint}]`` of a peer's recorded keys, for everyone who shows them."""
    return [
        {
            "key_id": str(key.get("key_id", "")),
            "fingerprint": signing.key_fingerprint(str(key.get("public_key", ""))),
        }
        for key in (keys if isinstance(keys, list) else [])
        if isinstance(key, dict)
    ]


def key_is_current(key: Mapping[str, Any], now: datetime | None = None) -> bool:
    expires = key.get("expires")
    if not expires:
        return True
    try:
        return datetime.fromisoformat(expires) > (now or timezone.now())
    except (TypeError, ValueError):
        return False


def published_key(keys: list[PublishedKey], key_id: str) -> str:
    """The public key a validated document publishes as ``key_id`` ("" if none)."""
    return next((str(key["public_key"]) for key in keys if key["key_id"] == key_id), "")


def key_is_recorded(keys: Any, *, key_id: str, public_key: str) -> bool:
    """Whether ``keys`` hold ``key_id`` with exactly this public key, and it has not expired."""
    try:
        wanted = signing.b64url_decode(public_key)
    except ValueError:
        return False
    for key in keys if isinstance(keys, list) else []:
        if not isinstance(key, dict) or key.get("key_id") != key_id:
            continue
        try:
            same = signing.b64url_decode(str(key.get("public_key"))) == wanted
        except ValueError:
            same = False
        if same and wanted and key_is_current(key):
            return True
    return False
