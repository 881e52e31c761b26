"""Writes of federation: peers, and the one chokepoint that admits an inbound message.

``federation_request_verify`` is the only place that decides whether a
signed request from another hub is let in (DESIGN.md, "Federation wire
protocol (v1)"); the DRF authentication class of every inbound view calls it,
and every refusal is audited here.
"""

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record
from federation import signing
from federation.documents import (
    PeerIdentity,
    identity_validate,
    key_fingerprints,
    key_is_current,
    key_is_recorded,
    published_key,
)
from federation.errors import (
    FederationError,
    MessageMalformed,
    MessageTooLarge,
    PeerForbidden,
    PeerKeyConflict,
    PeerQuotaExceeded,
    PeerStateConflict,
    SignatureInvalid,
)
from federation.models import Peer, PeerState, SeenNonce
from federation.pending import connect_rate_check
from federation.selectors import peer_get

MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class InboundRequest:
    method: str
    url: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    content_length: int = 0
    remote_addr: str = ""


@dataclass(frozen=True)
class VerifiedRequest:
    peer: Peer | None
    key_id: str
    body: dict[str, Any]
    # The key the signature verified with (base64url), for the connect rule.
    public_key: str = ""


def federation_request_verify(*, request: InboundRequest, connect: bool = False) -> VerifiedRequest:
    """Admit a signed message or raise the FederationError that says why not (audited).

    ``connect`` is the handshake: its sender need not be a peer yet, so its key
    may come from the body it signed; every other message must be signed by a
    key pinned for the peer named in the body, which must be ACTIVE.
    """
    context: dict[str, Any] = {"key_id": _claimed_key_id(request.headers)}
    try:
        return _admit(request, connect, context)
    except FederationError as error:
        audit_record(
            actor=f"peer:{context['key_id'].rsplit('#', 1)[0]}" if context["key_id"] else "unknown",
            action="federation.rejected",
            target=request.path[:200],
            reason=error.message,
            data={
                "status": error.http_status,
                "code": error.code,
                "method": request.method,
                "key_id": context["key_id"][:200],
                "remote_addr": request.remote_addr,
            },
        )
        raise


def _admit(request: InboundRequest, connect: bool, context: dict[str, Any]) -> VerifiedRequest:
    if max(len(request.body), request.content_length) > MAX_BODY_BYTES:
        raise MessageTooLarge(f"the body is over {MAX_BODY_BYTES} bytes")
    document = _json_object(request.body) if connect else None
    peers: dict[str, Peer | None] = {}

    def sender_peer(key_id: str) -> Peer | None:
        instance_id = key_id.rsplit("#", 1)[0]
        if instance_id not in peers:
            peers[instance_id] = Peer.objects.filter(instance_id=instance_id).first()
        return peers[instance_id]

    def pinned_lookup(key_id: str) -> Ed25519PublicKey:
        return _pinned_key_lookup(key_id, sender_peer(key_id))

    used: dict[str, str] = {}
    lookup = (
        _connect_key_lookup(document, sender_peer, used) if document is not None else pinned_lookup
    )
    try:
        verified = signing.request_verify(
            method=request.method,
            url=request.url,
            headers=request.headers,
            body=request.body,
            key_lookup=lookup,
        )
    except signing.SignatureRejected as error:
        raise SignatureInvalid(error.reason) from None
    context["key_id"] = verified.key_id
    sender = verified.key_id.rsplit("#", 1)[0]
    peer = sender_peer(verified.key_id)
    _nonce_record(verified, peer)
    body = document if document is not None else _json_object(request.body)
    if body.get("instance_id") != sender:
        raise SignatureInvalid(
            f"key {verified.key_id} does not belong to the sender "
            f"{str(body.get('instance_id'))[:100]!r}"
        )
    if not connect:
        _peer_admit(peer)
    return VerifiedRequest(
        peer=peer, key_id=verified.key_id, body=body, public_key=used.get("public_key", "")
    )


def _claimed_key_id(headers: Mapping[str, str]) -> str:
    """The keyid a request claims, for the audit trail only (nothing trusts it)."""
    for name, value in headers.items():
        if name.lower() == "signature-input":
            match = re.search(r'keyid="([^"]{1,200})"', value)
            return match.group(1) if match else ""
    return ""


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MessageMalformed("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise MessageMalformed("the body must be a JSON object")
    return data


def key_lookup_in(keys: object) -> signing.KeyLookup:
    """A key lookup over a list of published keys (pinned ones, or an identity document's).

    The list comes from JSON a peer sent: anything that is not a list knows no key.
    """

    def lookup(key_id: str) -> Ed25519PublicKey:
        for key in keys if isinstance(keys, list) else []:
            if isinstance(key, dict) and key.get("key_id") == key_id:
                if key.get("alg") != signing.ALGORITHM or not key_is_current(key):
                    raise signing.UnknownKey(f"key {key_id} has expired or is not ed25519")
                try:
                    return signing.public_key_load(str(key.get("public_key")))
                except ValueError:
                    raise signing.UnknownKey(f"key {key_id} is not a valid ed25519 key") from None
        raise signing.UnknownKey(f"unknown key {key_id}")

    return lookup


def _pinned_key_lookup(key_id: str, peer: Peer | None) -> Ed25519PublicKey:
    if peer is None:
        raise signing.UnknownKey(f"unknown key {key_id}")
    return key_lookup_in(peer.keys)(key_id)


def _connect_key_lookup(
    document: dict[str, Any], sender_peer: Callable[[str], Peer | None], used: dict[str, str]
) -> signing.KeyLookup:
    """The key a connect is signed with: one its body publishes, else one recorded for its sender.

    Verifying proves only that the sender holds that key. Whether the key is
    one the hub recorded for the peer it claims to be is the connect rule's
    question (``peer_register_inbound``), so the key used is handed back in ``used``.
    """

    def lookup(key_id: str) -> Ed25519PublicKey:
        try:
            public_key = key_lookup_in(document.get("keys"))(key_id)
        except signing.UnknownKey:
            peer = sender_peer(key_id)
            if peer is None or peer.state == PeerState.DISCONNECTED:
                raise
            public_key = key_lookup_in(peer.keys)(key_id)
        used["public_key"] = signing.public_key_export(public_key)
        return public_key

    return lookup


def _nonce_record(verified: signing.VerifiedSignature, peer: Peer | None) -> None:
    expires = datetime.fromtimestamp(verified.created, tz=UTC) + timedelta(
        seconds=signing.MAX_AGE_S + signing.MAX_AHEAD_S
    )
    try:
        with transaction.atomic():
            SeenNonce.objects.create(
                key_id=verified.key_id, nonce=verified.nonce, peer=peer, expires_at=expires
            )
    except IntegrityError:
        raise SignatureInvalid("the nonce was seen before: a replayed request") from None


def _peer_admit(peer: Peer | None) -> None:
    if peer is None or peer.state != PeerState.ACTIVE:
        state = peer.state if peer else "unknown"
        raise PeerForbidden(f"the peer is {state}; only an ACTIVE peer may send messages")
    window = timezone.now() - timedelta(seconds=60)
    recent = SeenNonce.objects.filter(peer=peer, received_at__gt=window).count()
    if recent > peer.requests_per_minute:
        raise PeerQuotaExceeded(f"more than {peer.requests_per_minute} requests in a minute")
    now = timezone.now()
    # last_seen is for operators; a write per request would only slow the inbox.
    if peer.last_seen is None or now - peer.last_seen > timedelta(seconds=10):
        Peer.objects.filter(id=peer.id).update(last_seen=now)


def nonces_prune() -> int:
    """Forget nonces whose signatures are too old to be accepted anyway."""
    deleted, _ = SeenNonce.objects.filter(expires_at__lt=timezone.now()).delete()
    return deleted


def federation_rejection_audit(*, request: InboundRequest, error: FederationError) -> None:
    """Audit a refusal that happened after admission (command not allowed, bad payload)."""
    audit_record(
        actor=f"peer:{_claimed_key_id(request.headers).rsplit('#', 1)[0]}",
        action="federation.rejected",
        target=request.path[:200],
        reason=error.message,
        data={
            "status": error.http_status,
            "code": error.code,
            "remote_addr": request.remote_addr,
        },
    )


# --- peers ------------------------------------------------------------------


def _peer_defaults() -> dict[str, Any]:
    return {
        "allowed_commands": list(settings.FLOTILLA_FEDERATION_PEER_COMMANDS),
        "max_concurrent_agents": settings.FLOTILLA_FEDERATION_PEER_MAX_AGENTS,
        "requests_per_minute": settings.FLOTILLA_FEDERATION_PEER_REQUESTS_PER_MINUTE,
    }


def peer_register_inbound(
    *,
    document: Mapping[str, Any],
    key_id: str,
    public_key: str = "",
    remote_addr: str | None = None,
) -> Peer:
    """Handle a connect under the connect rule of DESIGN.md; every change is audited.

    An unknown instance id becomes PENDING (a DISCONNECTED one asks again).
    A known one never has its keys, name or URL replaced by a connect that a
    key recorded for it did not sign (409, ``PeerKeyConflict``); signed by
    one, the same document is an idempotent repeat and another is a rotation.
    ``public_key`` is the key the signature verified with (by default the one
    the document publishes as ``key_id``); ``remote_addr`` is where the
    connect came from, and counts against its rate unless a recorded key signed it.
    """
    identity = identity_validate(document)
    if identity["instance_id"] == settings.FLOTILLA_INSTANCE_ID:
        raise MessageMalformed("a hub cannot peer with itself")
    public_key = public_key or published_key(identity["keys"], key_id)
    known = Peer.objects.filter(instance_id=identity["instance_id"]).first()
    if remote_addr is not None and not _signed_by_recorded_key(known, key_id, public_key):
        connect_rate_check(remote_addr=remote_addr)
    with transaction.atomic():
        peer = Peer.objects.select_for_update().filter(instance_id=identity["instance_id"]).first()
        peer, action = _connect_apply(peer, identity, key_id, public_key)
    if action:
        audit_record(
            actor=f"peer:{peer.instance_id}",
            action=action,
            target=f"peer:{peer.id}",
            data={
                "keys": [key["key_id"] for key in identity["keys"]],
                "fingerprints": [f["fingerprint"] for f in key_fingerprints(identity["keys"])],
                "remote_addr": remote_addr or "",
            },
        )
    return peer


def _connect_apply(
    peer: Peer | None, identity: PeerIdentity, key_id: str, public_key: str
) -> tuple[Peer, str]:
    """The peer after a connect, and the audit action ("" when nothing changed)."""
    if peer is None:
        peer = Peer.objects.create(**identity, state=PeerState.PENDING, **_peer_defaults())
        return peer, "peer.connect_requested"
    if peer.state == PeerState.DISCONNECTED:
        # An operator let it go: it may ask again, and waits for a new accept.
        _peer_update(peer, identity, state=PeerState.PENDING)
        return peer, "peer.connect_requested"
    if not _signed_by_recorded_key(peer, key_id, public_key):
        raise PeerKeyConflict(
            f"{peer.instance_id} is already known with other keys; only a connect signed "
            "with a key recorded for it may change it"
        )
    if all(getattr(peer, name) == value for name, value in identity.items()):
        return peer, ""
    keys_changed = peer.keys != identity["keys"]
    _peer_update(peer, identity, state=peer.state)
    return peer, "peer.keys_updated" if keys_changed else "peer.identity_updated"


def _signed_by_recorded_key(peer: Peer | None, key_id: str, public_key: str) -> bool:
    """Whether the connect's key is a current key the hub recorded for ``peer``.

    A PENDING peer's keys are the ones its admin will be shown: signing with
    one proves the sender is the party that asked first. A DISCONNECTED
    peer's keys no longer count: an operator let it go.
    """
    if peer is None or peer.state == PeerState.DISCONNECTED:
        return False
    return key_is_recorded(peer.keys, key_id=key_id, public_key=public_key)


def _peer_update(peer: Peer, identity: PeerIdentity, *, state: str) -> None:
    for name, value in identity.items():
        setattr(peer, name, value)
    peer.state = state
    peer.save()


def peer_record_outbound(*, identity: Mapping[str, Any], actor: str) -> Peer:
    """Trust a hub the operator asked to connect to: its keys are pinned now, it is ACTIVE."""
    valid = identity_validate(identity)
    if valid["instance_id"] == settings.FLOTILLA_INSTANCE_ID:
        raise MessageMalformed("a hub cannot peer with itself")
    with transaction.atomic():
        peer = Peer.objects.select_for_update().filter(instance_id=valid["instance_id"]).first()
        if peer is None:
            peer = Peer.objects.create(
                **valid, state=PeerState.ACTIVE, initiated_here=True, **_peer_defaults()
            )
        elif peer.state in (PeerState.ACTIVE, PeerState.SUSPENDED) and peer.keys != valid["keys"]:
            pinned = {key["key_id"] for key in peer.keys}
            if not pinned & {key["key_id"] for key in valid["keys"]}:
                raise PeerStateConflict(
                    "this peer's keys are pinned and the new ones differ; "
                    "disconnect it before reconnecting"
                )
        else:
            _peer_update(peer, valid, state=PeerState.ACTIVE)
            Peer.objects.filter(id=peer.id).update(initiated_here=True)
    audit_record(
        actor=actor,
        action="peer.connect",
        target=f"peer:{peer.id}",
        data={
            "url": valid["url"],
            "instance_id": peer.instance_id,
            "keys": [key["key_id"] for key in valid["keys"]],
        },
    )
    return peer


_TRANSITIONS = {
    "accept": (PeerState.ACTIVE, {PeerState.PENDING, PeerState.SUSPENDED}),
    "reject": (PeerState.DISCONNECTED, {PeerState.PENDING}),
    "suspend": (PeerState.SUSPENDED, {PeerState.ACTIVE}),
    "disconnect": (
        PeerState.DISCONNECTED,
        {PeerState.PENDING, PeerState.ACTIVE, PeerState.SUSPENDED},
    ),
}
PEER_ACTIONS = tuple(_TRANSITIONS)


def peer_transition(*, peer_id: uuid.UUID | str, action: str, actor: str, reason: str = "") -> Peer:
    """accept, reject, suspend or disconnect a peer: one conditional update, audited.

    ``peer_id`` may be the text an operator typed: one that names no peer is ``PeerNotFound``.
    """
    to, allowed = _TRANSITIONS[action]
    peer = peer_get(peer_id=peer_id)
    if not Peer.objects.filter(id=peer.id, state__in=allowed).update(state=to):
        raise PeerStateConflict(f"cannot {action} a peer that is {peer.state}")
    previous, peer.state = peer.state, to
    audit_record(
        actor=actor,
        action=f"peer.{action}",
        target=f"peer:{peer.id}",
        reason=reason,
        data={
            "instance_id": peer.instance_id,
            "from": previous,
            "to": to,
            "keys": [key.get("key_id") for key in peer.keys],
            "fingerprints": [f["fingerprint"] for f in key_fingerprints(peer.keys)],
        },
    )
    return peer
