"""RFC 9421 HTTP Message Signatures and RFC 9530 Content-Digest for federation.

The only module that imports ``http_message_signatures``. It knows nothing
about peers or the database: it signs a message with a private key, and
checks a message against the fixed profile of DESIGN.md ("Federation wire
protocol (v1)"), asking the caller for the public key of a key id.
"""

import base64
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import algorithms
from http_message_signatures.exceptions import HTTPMessageSignaturesException
from http_message_signatures.http_sfv.dictionary import Dictionary
from http_message_signatures.http_sfv.item import InnerList
from http_message_signatures.resolvers import HTTPSignatureKeyResolver
from http_message_signatures.signatures import HTTPMessageSigner, HTTPMessageVerifier
from requests.structures import CaseInsensitiveDict

_DAYS = timedelta(days=3650)
LABEL = "sig1"
TAG = "flotilla-federation-v1"
ALGORITHM = "ed25519"
REQUEST_COMPONENTS = ("@method", "@target-uri", "content-type", "content-digest")
RESPONSE_COMPONENTS = ("@status", "content-type", "content-digest")
MAX_AGE_S = 300
MAX_AHEAD_S = 60
NONCE_MIN_BYTES = 16
# The library re-exports its algorithms without ``__all__``; mypy's strict mode sees no ED25519.
_ED25519 = algorithms.ED25519  # type: ignore[attr-defined]


class SignatureRejected(Exception):
    """The message is not signed as the protocol requires; ``reason`` says why."""

    def __init__(self, reason: str, *, key_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id


class UnknownKey(SignatureRejected):
    """The key id names no key the caller trusts (or the key has expired)."""


@dataclass
class HttpMessage:
    """The parts of a request a signature covers, as the library reads them."""

    url: str
    headers: MutableMapping[str, str]
    method: str = "POST"


@dataclass
class _Response:
    # The library decides "response" by the presence of ``status_code``.
    status_code: int
    headers: MutableMapping[str, str]
    url: str = ""


@dataclass(frozen=True)
class VerifiedSignature:
    key_id: str
    nonce: str
    created: int


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def content_digest(body: bytes) -> str:
    """``Content-Digest`` per RFC 9530 with sha-256."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def public_key_load(raw_b64url: str) -> Ed25519PublicKey:
    raw = b64url_decode(raw_b64url)
    if len(raw) != 32:
        raise ValueError("an ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_text(private_key: Ed25519PrivateKey) -> str:
    return public_key_export(private_key.public_key())


def public_key_export(public_key: Ed25519PublicKey) -> str:
    """base64url of the 32 raw bytes, as identity documents publish a key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return b64url(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def key_fingerprint(raw_b64url: str) -> str:
    """``SHA256:`` and the base64url SHA-256 of the raw public key: what operators compare.

    Two operators read it to each other (or over any channel they trust)
    before an accept; it is the same on both hubs because it hashes the key
    bytes, not any encoding of them.
    """
    try:
        raw = public_key_load(raw_b64url).public_bytes_raw()
    except (ValueError, TypeError):
        return "not an ed25519 key"
    return f"SHA256:{b64url(hashlib.sha256(raw).digest())}"


KeyLookup = Callable[[str], Ed25519PublicKey]


class _SigningKey(HTTPSignatureKeyResolver):
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        return self.private_key


class _VerifyingKey(HTTPSignatureKeyResolver):
    def __init__(self, lookup: KeyLookup) -> None:
        self.lookup = lookup

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey:
        return self.lookup(key_id)


def _sign(
    message: "HttpMessage | _Response",
    body: bytes,
    components: tuple[str, ...],
    *,
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: int | None,
) -> None:
    """Add Content-Type, Content-Digest, Signature-Input and Signature to ``message.headers``."""
    message.headers.setdefault("Content-Type", "application/json")
    message.headers["Content-Digest"] = content_digest(body)
    signer = HTTPMessageSigner(signature_algorithm=_ED25519, key_resolver=_SigningKey(private_key))
    stamp = int(time.time()) if created is None else created
    signer.sign(
        message,
        key_id=key_id,
        created=datetime.fromtimestamp(stamp, tz=UTC),
        nonce=b64url(secrets.token_bytes(NONCE_MIN_BYTES)),
        label=LABEL,
        tag=TAG,
        covered_component_ids=components,
    )


def request_sign(
    *,
    method: str,
    url: str,
    body: bytes,
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Headers (Content-Type, Content-Digest, Signature-Input, Signature) for a request."""
    signed = dict(headers or {})
    message = HttpMessage(url=url, headers=signed, method=method.upper())
    _sign(
        message, body, REQUEST_COMPONENTS, key_id=key_id, private_key=private_key, created=created
    )
    return signed


def response_sign(
    *,
    status: int,
    body: bytes,
    key_id: str,
    private_key: Ed25519PrivateKey,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    signed = dict(headers or {})
    message = _Response(status_code=status, headers=signed)
    _sign(message, body, RESPONSE_COMPONENTS, key_id=key_id, private_key=private_key, created=None)
    return signed


def request_verify(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    key_lookup: KeyLookup,
    now: float | None = None,
) -> VerifiedSignature:
    """Check a request; raises ``SignatureRejected`` (or ``UnknownKey``) with the reason."""
    message = HttpMessage(url=url, headers=CaseInsensitiveDict(headers), method=method.upper())
    return _verify(message, body, REQUEST_COMPONENTS, key_lookup, now)


def response_verify(
    *,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    key_lookup: KeyLookup,
    now: float | None = None,
) -> VerifiedSignature:
    message = _Response(status_code=status, headers=CaseInsensitiveDict(headers))
    return _verify(message, body, RESPONSE_COMPONENTS, key_lookup, now)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _parse_dictionary(headers: Mapping[str, str], name: str) -> Dictionary:
    value = _header(headers, name)
    if value is None:
        raise SignatureRejected(f"missing {name} header")
    parsed = Dictionary()
    try:
        parsed.parse(value.encode("latin-1"))
    except (ValueError, UnicodeEncodeError):
        raise SignatureRejected(f"malformed {name} header") from None
    return parsed


def _verify(
    message: "HttpMessage | _Response",
    body: bytes,
    components: tuple[str, ...],
    key_lookup: KeyLookup,
    now: float | None,
) -> VerifiedSignature:
    inputs = _parse_dictionary(message.headers, "signature-input")
    signatures = _parse_dictionary(message.headers, "signature")
    if list(inputs) != [LABEL] or LABEL not in signatures:
        raise SignatureRejected(f"expected exactly one signature labelled {LABEL}")
    signature_input = inputs[LABEL]
    params = signature_input.params
    key_id = params.get("keyid")
    if not isinstance(key_id, str) or not key_id:
        raise SignatureRejected("the signature names no keyid")
    if not isinstance(signature_input, InnerList):
        raise SignatureRejected("the signature input is not a list of components", key_id=key_id)
    covered = [item.value for item in signature_input]
    if sorted(map(str, covered)) != sorted(components) or any(i.params for i in signature_input):
        raise SignatureRejected(
            f"the signature must cover exactly {' '.join(components)}", key_id=key_id
        )
    if params.get("alg") != ALGORITHM or params.get("tag") != TAG:
        raise SignatureRejected(
            f'the signature needs alg="{ALGORITHM}" and tag="{TAG}"', key_id=key_id
        )
    nonce = params.get("nonce")
    if not isinstance(nonce, str) or not _nonce_is_strong(nonce):
        raise SignatureRejected(
            "the nonce must be at least 128 random bits, base64url", key_id=key_id
        )
    created = params.get("created")
    if isinstance(created, bool) or not isinstance(created, int):
        raise SignatureRejected("the signature has no integer created time", key_id=key_id)
    current = time.time() if now is None else now
    if created < current - MAX_AGE_S:
        raise SignatureRejected(
            f"the signature was created more than {MAX_AGE_S} s ago", key_id=key_id
        )
    if created > current + MAX_AHEAD_S:
        raise SignatureRejected(
            f"the signature was created more than {MAX_AHEAD_S} s ahead", key_id=key_id
        )
    _digest_check(message.headers, body, key_id)
    public_key = key_lookup(key_id)
    verifier = HTTPMessageVerifier(
        signature_algorithm=_ED25519, key_resolver=_VerifyingKey(lambda _: public_key)
    )
    # The window was checked above against ``now``; the library's own check
    # uses the wall clock, so it is widened to never disagree with ours.
    verifier.max_clock_skew = _DAYS
    try:
        verifier.verify(message, max_age=_DAYS)
    except (HTTPMessageSignaturesException, ValueError, TypeError, KeyError) as error:
        raise SignatureRejected(f"the signature does not verify: {error}", key_id=key_id) from None
    return VerifiedSignature(key_id=key_id, nonce=nonce, created=created)


def _nonce_is_strong(nonce: str) -> bool:
    if not nonce or len(nonce) > 200 or any(c in nonce for c in "+/="):
        return False
    try:
        return len(b64url_decode(nonce)) >= NONCE_MIN_BYTES
    except (ValueError, TypeError):
        return False


def _digest_check(headers: Mapping[str, str], body: bytes, key_id: str) -> None:
    digests = _parse_dictionary(headers, "content-digest")
    member = digests.get("sha-256")
    value = getattr(member, "value", None)
    if not isinstance(value, bytes | bytearray):
        raise SignatureRejected("Content-Digest has no sha-256 byte sequence", key_id=key_id)
    if not secrets.compare_digest(bytes(value), hashlib.sha256(body).digest()):
        raise SignatureRejected("Content-Digest does not match the body", key_id=key_id)
