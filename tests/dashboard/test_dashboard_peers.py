"""The peers page: every peer's state, and accept/suspend for staff only."""

from django.test import Client

from audit.models import AuditEvent
from federation.models import Peer, PeerState


def _peer(**fields) -> Peer:
    defaults = {
        "instance_id": "hub-b",
        "name": "Hub B",
        "url": "https://hub-b.example",
        "keys": [{"key_id": "hub-b#1", "alg": "ed25519", "public_key": "x"}],
        "max_concurrent_agents": 5,
        "requests_per_minute": 60,
    }
    return Peer.objects.create(**{**defaults, **fields})


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_operator_sees_the_peers_but_may_not_accept_them(db, user):
    peer = _peer()
    client = _client(user)

    page = client.get("/dashboard/peers/").content.decode()

    assert f'data-peer-id="{peer.id}" data-state="PENDING"' in page
    assert 'data-action="accept"' not in page
    assert client.post(f"/dashboard/peers/{peer.id}/accept").status_code == 403
    assert Peer.objects.get(id=peer.id).state == PeerState.PENDING


def test_staff_accept_a_pending_peer_and_suspend_it_again(db, staff_user):
    peer = _peer()
    client = _client(staff_user)
    assert 'data-action="accept"' in client.get("/dashboard/peers/").content.decode()

    client.post(f"/dashboard/peers/{peer.id}/accept", {"reason": "known hub"})
    assert Peer.objects.get(id=peer.id).state == PeerState.ACTIVE
    assert 'data-action="suspend"' in client.get("/dashboard/peers/").content.decode()
    client.post(f"/dashboard/peers/{peer.id}/suspend", {"reason": "noisy"})

    assert Peer.objects.get(id=peer.id).state == PeerState.SUSPENDED
    actions = AuditEvent.objects.filter(target=f"peer:{peer.id}").values_list("action", flat=True)
    assert sorted(actions) == ["peer.accept", "peer.suspend"]
    assert client.post(f"/dashboard/peers/{peer.id}/reject").status_code == 403
