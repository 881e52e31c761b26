"""Who may change a peer: the connect rule of DESIGN.md, fingerprints, rate and expiry.

A connect for an instance id the hub already knows never replaces its keys:
the same keys are an idempotent repeat, other keys are refused 409 unless the
connect is signed with a key already pinned for that peer (a rotation). These
go through the real inbox URLs in-process, with real Ed25519 signatures;
test_federation_hubs.py covers the wire between two real hubs.
"""

import base64
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from io import StringIO

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from django_q.models import Schedule

from agents.models import Agent, AgentState
from audit.models import AuditEvent
from federation import signing, tasks
from federation.models import Peer, PeerState
from tests.conftest import make_remote

SERVER = "http://testserver"
PEER_FIELDS = ("instance_id", "name", "url", "state", "keys")


@dataclass
class Hub:
    """Another hub as this one sees it: an instance id, a name, a URL and its signing keys."""

    instance_id: str
    name: str = "Hub A"
    url: str = "https://hub-a.example"
    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)
    expires: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(cls, instance_id: str, **fields) -> "Hub":
        hub = cls(instance_id, **fields)
        hub.keys[f"{instance_id}#1"] = Ed25519PrivateKey.generate()
        return hub

    def published(self) -> list[dict]:
        return [
            {
                "key_id": key_id,
                "alg": "ed25519",
                "public_key": signing.public_key_text(key),
                "created": None,
                "expires": self.expires.get(key_id),
            }
            for key_id, key in self.keys.items()
        ]

    def document(self) -> dict:
        return {
            "instance_id": self.instance_id,
            "name": self.name,
            "url": self.url,
            "keys": self.published(),
            "capabilities": ["agent.spawn", "agent.status"],
        }

    def post(self, path: str, body: dict, *, key_id: str = "", remote_addr: str = "192.0.2.10"):
        key_id = key_id or next(iter(self.keys))
        data = json.dumps(body).encode()
        headers = signing.request_sign(
            method="POST",
            url=f"{SERVER}{path}",
            body=data,
            key_id=key_id,
            private_key=self.keys[key_id],
        )
        return Client().generic("POST", path, data, headers=headers, REMOTE_ADDR=remote_addr)

    def connect(self, **options):
        return self.post("/federation/v1/connect", self.document(), **options)

    def command(self, command: str, payload: dict, **options):
        envelope = {
            "message_id": str(uuid.uuid4()),
            "instance_id": self.instance_id,
            "command": command,
            "payload": payload,
            "timestamp": timezone.now().isoformat(),
        }
        return self.post("/federation/v1/commands", envelope, **options)


def fingerprint(key: Ed25519PrivateKey) -> str:
    """SHA-256 of the 32 raw public key bytes, base64url: what an operator compares."""
    raw = signing.b64url_decode(signing.public_key_text(key))
    return "SHA256:" + base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).rstrip(b"=").decode()


def peer_row(instance_id: str) -> dict:
    return Peer.objects.values(*PEER_FIELDS).get(instance_id=instance_id)


def accept(instance_id: str) -> None:
    call_command("peers", "accept", instance_id, "--reason", "fingerprints compared")


def stranger_for(real: Hub, **changes) -> Hub:
    """An attacker claiming ``real``'s instance id: same key id, a fresh key of its own."""
    fields = {"name": real.name, "url": real.url, **changes}
    return Hub.new(real.instance_id, **fields)


def spawn_body(repository) -> dict:
    return {
        "task_id": "t-connect",
        "runtime": "script",
        "script": "true",
        "context": {"repository": str(repository), "branch": "main"},
    }


# --- the takeover as reported ----------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [{}, {"url": "http://169.254.169.254"}, {"name": "Hub A (new)"}],
    ids=["same-name-and-url", "other-url", "other-name"],
)
def test_a_strangers_connect_for_a_pending_peer_is_refused_409_and_changes_nothing(db, changes):
    real = Hub.new("hub-a")
    assert real.connect().status_code == 202
    before = peer_row("hub-a")

    response = stranger_for(real, **changes).connect(remote_addr="198.51.100.66")

    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "peer_key_conflict"
    assert peer_row("hub-a") == before
    assert before["state"] == PeerState.PENDING
    refusal = AuditEvent.objects.get(action="federation.rejected", data__status=409)
    assert refusal.target == "/federation/v1/connect"


def test_after_accept_the_real_peer_commands_and_the_stranger_gets_401(db, tmp_path):
    real = Hub.new("hub-a")
    stranger = stranger_for(real)
    real.connect()
    stranger.connect()
    accept("hub-a")
    repository = make_remote(tmp_path)

    attack = stranger.command("agent.spawn", spawn_body(repository))
    spawned = real.command("agent.spawn", spawn_body(repository))
    agent_id = spawned.json()["data"]["agent_id"]
    status = real.command("agent.status", {"agent_id": agent_id})
    kill = stranger.command("agent.kill", {"agent_id": agent_id, "reason": "takeover"})

    assert attack.status_code == 401, attack.content
    assert spawned.status_code == 200, spawned.content
    assert status.status_code == 200 and status.json()["data"]["agent_id"] == agent_id
    assert kill.status_code == 401
    assert list(Agent.objects.values_list("id", "state")) == [
        (uuid.UUID(agent_id), AgentState.QUEUED)
    ]


def test_a_strangers_connect_for_an_active_peer_is_refused_and_the_peer_keeps_working(db):
    real = Hub.new("hub-a")
    real.connect()
    accept("hub-a")
    before = peer_row("hub-a")
    stranger = stranger_for(real, url="http://169.254.169.254")

    refused = stranger.connect()
    status = real.command("agent.status", {"agent_id": str(uuid.uuid4())})

    assert refused.status_code == 409, refused.content
    assert peer_row("hub-a") == before and before["state"] == PeerState.ACTIVE
    # Admitted: the agent is unknown to it, which is an answer, not a refusal.
    assert status.status_code == 404 and status.json()["error"]["code"] == "not_found"
    assert stranger.command("agent.kill_all", {}).status_code == 401


def test_a_connect_signed_with_a_new_key_id_only_cannot_add_itself_to_a_peer(db):
    real = Hub.new("hub-a")
    real.connect()
    accept("hub-a")
    stranger = Hub("hub-a", name=real.name, url=real.url)
    stranger.keys["hub-a#2"] = Ed25519PrivateKey.generate()
    # It may copy the pinned key's public half into its document, not sign with it.
    document = {**stranger.document(), "keys": real.published() + stranger.published()}

    response = stranger.post("/federation/v1/connect", document, key_id="hub-a#2")

    assert response.status_code == 409, response.content
    assert [key["key_id"] for key in peer_row("hub-a")["keys"]] == ["hub-a#1"]


# --- what the real peer may do ------------------------------------------------------


@pytest.mark.parametrize("accepted", [False, True], ids=["pending", "active"])
def test_a_connect_with_the_same_keys_is_idempotent(db, accepted):
    real = Hub.new("hub-a")
    first = real.connect()
    if accepted:
        accept("hub-a")
    before = Peer.objects.values().get(instance_id="hub-a")
    audits = AuditEvent.objects.count()

    again = real.connect()

    assert first.status_code == again.status_code == 202
    assert again.json()["peer_state"] == before["state"]
    assert Peer.objects.values().get(instance_id="hub-a") == before
    assert AuditEvent.objects.count() == audits


def test_a_key_rotation_signed_by_a_pinned_key_is_taken_and_audited(db):
    real = Hub.new("hub-a")
    real.connect()
    accept("hub-a")
    real.keys["hub-a#2"] = Ed25519PrivateKey.generate()
    real.expires["hub-a#1"] = (timezone.now() + timedelta(days=7)).isoformat()

    rotated = real.connect(key_id="hub-a#1")
    with_new_key = real.command("agent.status", {"agent_id": str(uuid.uuid4())}, key_id="hub-a#2")

    assert rotated.status_code == 202, rotated.content
    keys = peer_row("hub-a")["keys"]
    assert [key["key_id"] for key in keys] == ["hub-a#1", "hub-a#2"]
    assert peer_row("hub-a")["state"] == PeerState.ACTIVE
    assert with_new_key.status_code == 404  # admitted, and the agent is unknown
    rotation = AuditEvent.objects.get(action="peer.keys_updated")
    assert rotation.data["fingerprints"] == [fingerprint(key) for key in real.keys.values()]


def test_a_disconnected_peer_may_ask_again_and_waits_for_a_new_accept(db):
    real = Hub.new("hub-a")
    real.connect()
    call_command("peers", "reject", "hub-a", "--reason", "unknown to us")
    again = Hub.new("hub-a", url="https://hub-a.example/v2")

    response = again.connect()

    assert response.status_code == 202 and response.json()["peer_state"] == PeerState.PENDING
    assert peer_row("hub-a")["keys"] == again.published()


# --- fingerprints ------------------------------------------------------------------------


def test_each_keys_fingerprint_shows_in_the_api_admin_dashboard_and_manage_py(
    db, staff_api, staff_user
):
    real = Hub.new("hub-a")
    real.connect()
    peer = Peer.objects.get(instance_id="hub-a")
    expected = fingerprint(real.keys["hub-a#1"])
    browser = Client()
    browser.force_login(staff_user)
    out = StringIO()

    listed = staff_api.get("/api/v1/peers").json()["results"][0]
    accepted = staff_api.post(
        f"/api/v1/peers/{peer.id}/accept", {"reason": "compared"}, format="json"
    ).json()
    call_command("peers", "list", stdout=out)

    assert listed["keys"][0]["fingerprint"] == expected
    assert accepted["keys"][0]["fingerprint"] == expected
    assert expected in browser.get("/dashboard/peers/").content.decode()
    assert expected in browser.get("/admin/federation/peer/").content.decode()
    assert expected in browser.get(f"/admin/federation/peer/{peer.id}/change/").content.decode()
    assert expected in out.getvalue()


def test_the_peers_command_prints_this_hubs_own_fingerprints_to_compare(db):
    from federation.identity import identity_keys

    out = StringIO()

    call_command("peers", "fingerprint", stdout=out)

    raw = signing.b64url_decode(identity_keys()[0]["public_key"])
    digest = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).rstrip(b"=").decode()
    assert f"SHA256:{digest}" in out.getvalue()


# --- strangers: rate, expiry, URLs -----------------------------------------------------


def test_anonymous_connects_from_one_address_are_refused_429_after_the_limit(db, settings):
    settings.FLOTILLA_FEDERATION_CONNECT_RATE = "10/hour"
    pinned = Hub.new("hub-a")
    pinned.connect(remote_addr="192.0.2.99")

    answers = [
        Hub.new(f"stranger-{n}").connect(remote_addr="203.0.113.7").status_code for n in range(25)
    ]
    refused = Hub.new("stranger-late").connect(remote_addr="203.0.113.7")
    elsewhere = Hub.new("stranger-elsewhere").connect(remote_addr="203.0.113.8")
    repeat = pinned.connect(remote_addr="203.0.113.7")

    assert answers == [202] * 10 + [429] * 15
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert refused.json()["error"]["code"] == "connect_rate_exceeded"
    assert Peer.objects.filter(instance_id__startswith="stranger-").count() == 11
    assert elsewhere.status_code == 202
    assert repeat.status_code == 202  # a peer's own signed connect is no stranger's
    assert AuditEvent.objects.filter(action="federation.rejected", data__status=429).count() == 16


def test_an_expired_pending_peer_is_removed_by_its_schedule_and_audited(db, settings):
    settings.FLOTILLA_FEDERATION_PENDING_PEER_DAYS = 7
    for instance_id in ("old-stranger", "new-stranger", "old-friend"):
        Hub.new(instance_id).connect()
    accept("old-friend")
    Peer.objects.filter(instance_id__startswith="old-").update(
        updated_at=timezone.now() - timedelta(days=8)
    )
    schedule = Schedule.objects.get(name="federation-pending-peers-expire")

    removed = tasks.pending_peers_expire()

    assert schedule.func == "federation.tasks.pending_peers_expire"
    assert removed == 1
    assert sorted(Peer.objects.values_list("instance_id", flat=True)) == [
        "new-stranger",
        "old-friend",
    ]
    expired = AuditEvent.objects.get(action="peer.expired")
    assert expired.data["instance_id"] == "old-stranger"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hub-a.example",
        "https://",
        "https://admin:hunter2x9@hub-a.example",
        "https://hub-a.example/#fragment",
        "https://hub-a.example/?next=/admin",
        "https://hub-a.example:99999",
        "https://hub a.example",
        "https://" + "a" * 600 + ".example",
        "javascript:alert(1)",
    ],
)
def test_a_connect_with_an_unusable_peer_url_is_refused_400_and_records_nothing(db, url):
    response = Hub.new("hub-a", url=url).connect()

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "malformed"
    assert not Peer.objects.exists()


def test_a_connect_naming_a_metadata_address_is_refused_while_private_urls_are_closed(db, settings):
    settings.FLOTILLA_ALLOW_PRIVATE_URLS = False

    response = Hub.new("stranger", url="http://169.254.169.254").connect()

    assert response.status_code == 400, response.content
    assert "169.254.169.254" in response.json()["error"]["message"]
    assert not Peer.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "https://admin:hunter2x9@hub-b.example",
        "https://hub-b.example/#x",
        "https://" + "b" * 600 + ".example",
        "https://[::1",
    ],
)
def test_connecting_to_an_unusable_url_is_refused_400_before_any_request(db, staff_api, url):
    response = staff_api.post("/api/v1/peers/connect", {"url": url}, format="json")

    assert response.status_code == 400, response.content
    assert "url" in response.json()["error"]["fields"]
    assert not Peer.objects.exists()
