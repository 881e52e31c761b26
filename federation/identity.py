"""This hub's federation identity: instance id, name, URL and versioned Ed25519 keys.

Private keys are stored encrypted with a Fernet key derived from
``FLOTILLA_FEDERATION_KEY`` (never ``SECRET_KEY`` in production), and are
created on first use (and right after ``migrate``), so a new hub has an
identity without any manual step.
"""

import base64
import functools
import time
from datetime import timedelta
from typing import TypedDict

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from federation.documents import PublishedKey
from federation.errors import IdentityUnavailable
from federation.models import InstanceKey
from federation.signing import ALGORITHM, public_key_text

CAPABILITIES = ["agent.spawn", "agent.status", "agent.kill", "agent.kill_all", "events"]


def key_id_for(version: int) -> str:
    return f"{settings.FLOTILLA_INSTANCE_ID}#{version}"


@functools.cache
def _fernet(secret: str) -> Fernet:
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"flotilla-federation",
        info=b"instance private keys",
    ).derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def _encrypt(private_key: Ed25519PrivateKey) -> str:
    raw = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return _fernet(settings.FLOTILLA_FEDERATION_KEY).encrypt(raw).decode()


@functools.lru_cache(maxsize=16)
def _decrypt(token: str, secret: str) -> Ed25519PrivateKey:
    try:
        raw = _fernet(secret).decrypt(token.encode())
    except InvalidToken:
        raise IdentityUnavailable(
            "the instance private key cannot be decrypted: FLOTILLA_FEDERATION_KEY changed?"
        ) from None
    return Ed25519PrivateKey.from_private_bytes(raw)


class IdentityDocument(TypedDict):
    """What ``/federation/v1/identity`` publishes, and a connect's body carries."""

    instance_id: str
    name: str
    url: str
    capabilities: list[str]
    keys: list[PublishedKey]


def _valid_keys() -> QuerySet[InstanceKey]:
    return InstanceKey.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))


def instance_key_ensure() -> InstanceKey:
    """The newest valid key, created (version 1 or next) if there is none."""
    key = _valid_keys().order_by("-version").first()
    if key is not None:
        return key
    latest = InstanceKey.objects.order_by("-version").first()
    private_key = Ed25519PrivateKey.generate()
    try:
        with transaction.atomic():
            return InstanceKey.objects.create(
                version=(latest.version + 1) if latest else 1,
                public_key=public_key_text(private_key),
                private_key_encrypted=_encrypt(private_key),
            )
    except IntegrityError:
        # Another process created it first; theirs is as good as ours.
        return _valid_keys().latest("version")


_current: dict[str, tuple[float, str, Ed25519PrivateKey]] = {}
_CURRENT_TTL_S = 5.0


def signing_key(*, version: int | None = None) -> tuple[str, Ed25519PrivateKey]:
    """(key_id, private key) to sign with: the newest valid key unless a version is named.

    The newest key is remembered for a few seconds, so signing costs no query;
    a rotation is picked up by every process within that time.
    """
    cached = _current.get(settings.FLOTILLA_INSTANCE_ID)
    if version is None and cached and time.monotonic() - cached[0] < _CURRENT_TTL_S:
        return cached[1], cached[2]
    key = instance_key_ensure() if version is None else InstanceKey.objects.get(version=version)
    private_key = _decrypt(key.private_key_encrypted, settings.FLOTILLA_FEDERATION_KEY)
    if version is None:
        _current[settings.FLOTILLA_INSTANCE_ID] = (
            time.monotonic(),
            key_id_for(key.version),
            private_key,
        )
    return key_id_for(key.version), private_key


def instance_key_rotate(*, grace_days: int) -> tuple[InstanceKey, list[InstanceKey]]:
    """A new key version; every older valid key stays valid for ``grace_days`` more."""
    with transaction.atomic():
        current = instance_key_ensure()
        retiring = list(_valid_keys().filter(version__lte=current.version))
        expires = timezone.now() + timedelta(days=grace_days)
        for key in retiring:
            if key.expires_at is None or key.expires_at > expires:
                key.expires_at = expires
                key.save(update_fields=["expires_at"])
        private_key = Ed25519PrivateKey.generate()
        _current.clear()
        new = InstanceKey.objects.create(
            version=current.version + 1,
            public_key=public_key_text(private_key),
            private_key_encrypted=_encrypt(private_key),
        )
    return new, retiring


def identity_keys() -> list[PublishedKey]:
    instance_key_ensure()
    return [
        PublishedKey(
            key_id=key_id_for(key.version),
            alg=ALGORITHM,
            public_key=key.public_key,
            created=key.created_at.isoformat(),
            expires=key.expires_at.isoformat() if key.expires_at else None,
        )
        for key in _valid_keys().order_by("version")
    ]


def identity_document() -> IdentityDocument:
    return IdentityDocument(
        instance_id=settings.FLOTILLA_INSTANCE_ID,
        name=settings.FLOTILLA_INSTANCE_NAME,
        url=settings.FLOTILLA_FEDERATION_URL,
        capabilities=CAPABILITIES,
        keys=identity_keys(),
    )
