"""The federation inbox in-process: signatures, key rotation, mirroring, and fuzzing.

The two-hub tests (test_federation_hubs.py) cover the wire end to end; these
go through the same URLs with Django's test client and the test database.
"""

import json
import time
import uuid
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agents.models import AgentState
from agents.services import SpawnRequest, agent_mirror_state, agent_register_remote
from audit.models import AuditEvent
from federation import signing
from federation.identity import identity_document, signing_key
from federation.models import InstanceKey, Peer, PeerState, SeenNonce
from federation.services import key_lookup_in, nonces_prune, peer_register_inbound

URL = "http://testserver/federation/v1/commands"


@pytest.fixture
def fuzzer(db):
    key = Ed25519PrivateKey.generate()
    document = {
        "instance_id": "fuzzer",
        "name": "fuzzer",
        "url": "http://127.0.0.1:9",
        "keys": [
            {
                "key_id": "fuzzer#1",
                "alg": "ed25519",
                "created": None,
                "expires": None,
                "public_key": signing.public_key_text(key),
            }
        ],
    }
    peer = peer_register_inbound(document=document, key_id="fuzzer#1")
    Peer.objects.filter(id=peer.id).update(state=PeerState.ACTIVE, requests_per_minute=100_000)
    return key


def post(client: Client, body: bytes, headers: dict) -> object:
    return client.generic("POST", "/federation/v1/commands", body, headers=headers)


def test_a_signed_request_verifies_and_any_change_to_a_covered_part_breaks_it():
    key = Ed25519PrivateKey.generate()
    lookup = key_lookup_in(
        [{"key_id": "x#1", "alg": "ed25519", "public_key": signing.public_key_text(key)}]
    )
    body = b'{"a": 1}'
    headers = signing.request_sign(method="POST", url=URL, body=body, key_id="x#1", private_key=key)

    verified = signing.request_verify(
        method="POST", url=URL, headers=headers, body=body, key_lookup=lookup
    )

    assert verified.key_id == "x#1" and len(signing.b64url_decode(verified.nonce)) >= 16
    assert 'tag="flotilla-federation-v1"' in headers["Signature-Input"]
    assert 'alg="ed25519"' in headers["Signature-Input"]
    for method, url, changed in [
        ("PUT", URL, body),
        ("POST", URL + "x", body),
        ("POST", URL, b'{"a": 2}'),
    ]:
        with pytest.raises(signing.SignatureRejected):
            signing.request_verify(
                method=method, url=url, headers=headers, body=changed, key_lookup=lookup
            )


def test_an_expired_key_is_unknown():
    key = Ed25519PrivateKey.generate()
    past = (timezone.now() - timedelta(seconds=1)).isoformat()
    lookup = key_lookup_in(
        [
            {
                "key_id": "x#1",
                "alg": "ed25519",
                "expires": past,
                "public_key": signing.public_key_text(key),
            }
        ]
    )

    with pytest.raises(signing.UnknownKey):
        lookup("x#1")


def test_the_private_key_is_stored_encrypted_and_identity_publishes_raw_public_keys(db):
    client = Client()

    identity = client.get("/federation/v1/identity").json()

    key = InstanceKey.objects.get(version=1)
    _, private_key = signing_key()
    assert identity["keys"][0]["key_id"].endswith("#1")
    assert len(signing.b64url_decode(identity["keys"][0]["public_key"])) == 32
    assert identity["keys"][0]["public_key"] == signing.public_key_text(private_key)
    assert signing.b64url_decode(key.public_key) not in key.private_key_encrypted.encode()
    assert key.private_key_encrypted.startswith("gAAAAA")  # a Fernet token


def test_key_rotation_adds_a_version_and_keeps_the_old_key_valid_until_it_expires(db):
    signing_key()
    call_command("federation_rotate_key", "--grace-days", "3", "--no-announce")

    keys = identity_document()["keys"]

    assert [key["key_id"].rsplit("#", 1)[1] for key in keys] == ["1", "2"]
    assert keys[0]["expires"] and not keys[1]["expires"]
    assert signing_key()[0].endswith("#2")
    InstanceKey.objects.filter(version=1).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert [key["key_id"][-1] for key in identity_document()["keys"]] == ["2"]


def test_old_nonces_are_pruned_and_fresh_ones_kept(db):
    now = timezone.now()
    SeenNonce.objects.create(key_id="k#1", nonce="old", expires_at=now - timedelta(seconds=1))
    SeenNonce.objects.create(key_id="k#1", nonce="new", expires_at=now + timedelta(seconds=60))

    assert nonces_prune() == 1
    assert list(SeenNonce.objects.values_list("nonce", flat=True)) == ["new"]


def test_a_mirrored_state_never_moves_a_remote_agent_out_of_a_final_state(db):
    agent = agent_register_remote(
        request=SpawnRequest(
            task_id="t",
            agent_type="worker",
            runtime="script",
            repository="/x",
            base_branch="main",
            sandbox="remote",
        ),
        requested_by="user:test",
        node="peer",
        sandbox_handle={"backend": "remote"},
    )

    assert agent_mirror_state(agent_id=agent.id, state=AgentState.RUNNING)
    assert agent_mirror_state(agent_id=agent.id, state=AgentState.KILLED, error="stopped")
    assert not agent_mirror_state(agent_id=agent.id, state=AgentState.COMPLETED)
    agent.refresh_from_db()
    assert agent.state == AgentState.KILLED and agent.finished_at and agent.started_at
    assert agent.sandbox_backend == "remote" and agent.error == "stopped"


def test_a_command_signed_by_a_known_peer_is_admitted_and_its_answer_correlated(fuzzer):
    body = json.dumps(
        {
            "message_id": "m-1",
            "instance_id": "fuzzer",
            "command": "agent.status",
            "payload": {"agent_id": str(uuid.uuid4())},
            "timestamp": "2026-01-01T00:00:00Z",
        }
    ).encode()
    headers = signing.request_sign(
        method="POST", url=URL, body=body, key_id="fuzzer#1", private_key=fuzzer
    )

    response = post(Client(), body, headers)

    assert response.status_code == 404, response.content
    answer = response.json()
    assert answer["correlation_id"] == "m-1" and answer["success"] is False
    assert answer["error"]["code"] == "not_found"
    assert response["Signature-Input"].startswith(
        'sig1=("@status" "content-type" "content-digest")'
    )


_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_commands = st.sampled_from(
    ["agent.spawn", "agent.status", "agent.kill", "agent.kill_all", "nope", ""]
)
_envelope = st.fixed_dictionaries(
    {
        "message_id": st.text(max_size=40) | st.integers(),
        "instance_id": st.just("fuzzer"),
        "command": _commands,
        "payload": _json,
        "timestamp": st.text(max_size=30),
    }
)
_bodies = st.one_of(
    st.binary(max_size=500),
    _json.map(lambda v: json.dumps(v).encode()),
    _envelope.map(lambda v: json.dumps(v).encode()),
)
# Content-Length is left out: HTTP framing sets it, and Django's test client
# cannot send a body whose length disagrees with it.
_headers = st.dictionaries(
    st.sampled_from(
        [
            "Signature",
            "Signature-Input",
            "Content-Digest",
            "Content-Type",
            "X-Anything",
        ]
    ),
    _header_text,
    max_size=4,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=_bodies, extra=_headers, signed=st.booleans(), created_offset=st.integers(-400, 100))
def test_random_headers_and_bodies_at_the_inbox_never_cause_a_500(
    fuzzer, body, extra, signed, created_offset
):
    headers = {}
    if signed:
        headers = signing.request_sign(
            method="POST",
            url=URL,
            body=body,
            key_id="fuzzer#1",
            private_key=fuzzer,
            created=int(time.time()) + created_offset,
        )
    response = post(Client(), body, {**headers, **extra})

    event(f"status {response.status_code}")
    assert response.status_code < 500, response.content
    assert "error" in response.json() or response.json().get("correlation_id") is not None
    if response.status_code >= 400:
        assert AuditEvent.objects.filter(action="federation.rejected").exists() or (
            response.json().get("success") is False
        )


def test_the_peers_command_lists_and_accepts_a_pending_peer(fuzzer):
    from io import StringIO

    Peer.objects.filter(instance_id="fuzzer").update(state=PeerState.PENDING)
    out = StringIO()

    call_command("peers", "accept", "fuzzer", "--reason", "known operator", stdout=out)
    call_command("peers", "list", stdout=out)

    assert Peer.objects.get(instance_id="fuzzer").state == PeerState.ACTIVE
    assert "fuzzer" in out.getvalue() and "ACTIVE" in out.getvalue()
    assert AuditEvent.objects.filter(action="peer.accept", reason="known operator").exists()
