"""What the hub grants parties that are not its peers yet: a few connects, and a few days.

Anyone may ask to connect (DESIGN.md), so a stranger must not be able to
fill the peers list: a connect that no key the hub recorded for its sender
signed counts against its source address, at most
``FLOTILLA_FEDERATION_CONNECT_RATE`` (``"10/hour"``), and a PENDING peer that
no admin accepted within ``FLOTILLA_FEDERATION_PENDING_PEER_DAYS`` is removed
by the schedule ``federation-pending-peers-expire``. A peer's own signed
connects (a repeat, a key rotation) are never counted.
"""

import math
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from audit.services import audit_record
from federation.errors import ConnectRateExceeded
from federation.models import ConnectAttempt, Peer, PeerState
from orchestrator_site.env import rate_parse


def connect_rate_check(*, remote_addr: str) -> None:
    """Count one stranger's connect from ``remote_addr``, or refuse it (429, Retry-After)."""
    limit, period_s = rate_parse(settings.FLOTILLA_FEDERATION_CONNECT_RATE)
    address = (remote_addr or "unknown")[:64]
    now = timezone.now()
    window = ConnectAttempt.objects.filter(
        remote_addr=address, created_at__gt=now - timedelta(seconds=period_s)
    )
    if window.count() >= limit:
        oldest = window.order_by("created_at").values_list("created_at", flat=True).first()
        frees_at = (oldest or now) + timedelta(seconds=period_s)
        raise ConnectRateExceeded(
            f"more than {limit} connects from {address} in {period_s} s; try again later",
            retry_after=max(1, math.ceil((frees_at - now).total_seconds())),
        )
    ConnectAttempt.objects.create(remote_addr=address, created_at=now)


def pending_peers_expire() -> int:
    """Remove PENDING peers older than the setting (audited); returns how many.

    Also forgets connect attempts older than the rate's period, which no
    longer count. A pending peer that once ran agents for us keeps its row
    (remote agents refer to it) and is DISCONNECTED instead.
    """
    now = timezone.now()
    _, period_s = rate_parse(settings.FLOTILLA_FEDERATION_CONNECT_RATE)
    ConnectAttempt.objects.filter(created_at__lt=now - timedelta(seconds=period_s)).delete()
    cutoff = now - timedelta(days=settings.FLOTILLA_FEDERATION_PENDING_PEER_DAYS)
    removed = 0
    for peer in Peer.objects.filter(state=PeerState.PENDING, updated_at__lt=cutoff):
        stale = Peer.objects.filter(id=peer.id, state=PeerState.PENDING, updated_at__lt=cutoff)
        try:
            with transaction.atomic():
                _, deleted = stale.delete()
            gone = deleted.get(Peer._meta.label, 0)
        except ProtectedError:
            gone = stale.update(state=PeerState.DISCONNECTED)
        if gone:
            removed += 1
            audit_record(
                actor="system:federation",
                action="peer.expired",
                target=f"peer:{peer.id}",
                reason=f"PENDING for more than {settings.FLOTILLA_FEDERATION_PENDING_PEER_DAYS} "
                "days without an accept",
                data={"instance_id": peer.instance_id, "url": peer.url},
            )
    return removed
