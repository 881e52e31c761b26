"""Every HTTP endpoint × {anonymous, user, staff, peer}: exactly the documented access.

The matrix is written out in docs/scaling.md.

"allowed" means the request got past authentication and permissions (any
status but 401 and 403: a 400 for the empty body, a 404 for the made-up id);
401 and 403 are the refusals. A peer is a federation-signed request from an
ACTIVE peer hub, with no API token.
"""

import json
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.authtoken.models import Token

from federation import signing
from federation.models import Peer, PeerState
from federation.services import peer_register_inbound

OK, UNAUTH, FORBIDDEN = "allowed", 401, 403
ANYONE = {"anonymous": OK, "user": OK, "staff": OK, "peer": OK}
USER = {"anonymous": UNAUTH, "user": OK, "staff": OK, "peer": UNAUTH}
STAFF = {"anonymous": UNAUTH, "user": FORBIDDEN, "staff": OK, "peer": UNAUTH}
PEER = {"anonymous": UNAUTH, "user": UNAUTH, "staff": UNAUTH, "peer": OK}

AGENT, PROJECT, PEER_ID = uuid.uuid4(), 987654, uuid.uuid4()

# (method, path, URL pattern it exercises, access). Keep in step with docs/scaling.md.
MATRIX = [
    ("GET", "/api/v1/health", "api/v1/health", ANYONE),
    ("GET", "/api/v1/schema/", "api/v1/schema/", USER),
    ("GET", "/api/v1/docs/", "api/v1/docs/", USER),
    ("GET", "/api/v1/agents", "api/v1/agents", USER),
    ("POST", "/api/v1/agents", "api/v1/agents", USER),
    ("GET", f"/api/v1/agents/{AGENT}", "api/v1/agents/<str:agent_id>", USER),
    ("GET", f"/api/v1/agents/{AGENT}/events", "api/v1/agents/<str:agent_id>/events", USER),
    ("POST", f"/api/v1/agents/{AGENT}/resume", "api/v1/agents/<str:agent_id>/resume", USER),
    ("POST", f"/api/v1/agents/{AGENT}/kill", "api/v1/agents/<str:agent_id>/kill", USER),
    ("POST", "/api/v1/agents/kill-all", "api/v1/agents/kill-all", STAFF),
    ("POST", "/api/v1/killswitch/halt", "api/v1/killswitch/halt", STAFF),
    ("POST", "/api/v1/killswitch/release", "api/v1/killswitch/release", STAFF),
    ("GET", "/api/v1/projects", "api/v1/projects", USER),
    ("POST", "/api/v1/projects", "api/v1/projects", USER),
    ("POST", "/api/v1/projects/plan", "api/v1/projects/plan", USER),
    ("GET", f"/api/v1/projects/{PROJECT}", "api/v1/projects/<int:project_id>", USER),
    ("GET", f"/api/v1/projects/{PROJECT}/result", "api/v1/projects/<int:project_id>/result", USER),
    (
        "GET",
        f"/api/v1/projects/{PROJECT}/artifacts",
        "api/v1/projects/<int:project_id>/artifacts",
        USER,
    ),
    ("POST", f"/api/v1/projects/{PROJECT}/cancel", "api/v1/projects/<int:project_id>/cancel", USER),
    ("POST", f"/api/v1/projects/{PROJECT}/pause", "api/v1/projects/<int:project_id>/pause", USER),
    ("POST", f"/api/v1/projects/{PROJECT}/resume", "api/v1/projects/<int:project_id>/resume", USER),
    (
        "POST",
        f"/api/v1/projects/{PROJECT}/tasks/k/retry",
        "api/v1/projects/<int:project_id>/tasks/<str:key>/retry",
        USER,
    ),
    ("GET", "/api/v1/peers", "api/v1/peers", STAFF),
    ("POST", "/api/v1/peers/connect", "api/v1/peers/connect", STAFF),
    ("POST", f"/api/v1/peers/{PEER_ID}/agents", "api/v1/peers/<uuid:peer_id>/agents", USER),
    ("POST", f"/api/v1/peers/{PEER_ID}/accept", "api/v1/peers/<uuid:peer_id>/accept", STAFF),
    ("POST", f"/api/v1/peers/{PEER_ID}/reject", "api/v1/peers/<uuid:peer_id>/reject", STAFF),
    ("POST", f"/api/v1/peers/{PEER_ID}/suspend", "api/v1/peers/<uuid:peer_id>/suspend", STAFF),
    (
        "POST",
        f"/api/v1/peers/{PEER_ID}/disconnect",
        "api/v1/peers/<uuid:peer_id>/disconnect",
        STAFF,
    ),
    ("GET", "/federation/v1/identity", "federation/v1/identity", ANYONE),
    ("POST", "/federation/v1/connect", "federation/v1/connect", PEER),
    ("POST", "/federation/v1/commands", "federation/v1/commands", PEER),
    ("POST", "/federation/v1/events", "federation/v1/events", PEER),
    ("GET", "/metrics", "metrics", STAFF),
]

API_PREFIXES = ("api/v1/", "federation/v1/", "metrics")


def api_patterns() -> set[str]:
    found: set[str] = set()

    def walk(resolver: URLResolver, prefix: str) -> None:
        for entry in resolver.url_patterns:
            if isinstance(entry, URLResolver):
                walk(entry, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                found.add(prefix + str(entry.pattern))

    walk(get_resolver(), "")
    return {pattern for pattern in found if pattern.startswith(API_PREFIXES)}


def test_the_matrix_names_every_api_endpoint():
    assert {pattern for _, _, pattern, _ in MATRIX} == api_patterns()


@pytest.fixture
def principals(db):
    User = get_user_model()
    user = User.objects.create_user("matrix-user", password="x" * 12)
    staff = User.objects.create_user("matrix-staff", password="x" * 12, is_staff=True)
    key = Ed25519PrivateKey.generate()
    public = {
        "key_id": "matrix-peer#1",
        "alg": "ed25519",
        "created": None,
        "expires": None,
        "public_key": signing.public_key_text(key),
    }
    document = {
        "instance_id": "matrix-peer",
        "name": "matrix peer",
        "url": "http://127.0.0.1:9",
        "keys": [public],
    }
    peer = peer_register_inbound(document=document, key_id="matrix-peer#1")
    Peer.objects.filter(id=peer.id).update(state=PeerState.ACTIVE, requests_per_minute=100_000)
    return {
        "user": Token.objects.create(user=user).key,
        "staff": Token.objects.create(user=staff).key,
        "peer": (key, document),
    }


def request_as(principal: str, principals: dict, method: str, path: str) -> int:
    client = Client()
    body = json.dumps(_body(path, principals)).encode() if method == "POST" else b""
    headers: dict[str, str] = {}
    if principal in ("user", "staff"):
        headers["Authorization"] = f"Token {principals[principal]}"
    elif principal == "peer":
        key, _ = principals["peer"]
        signed = signing.request_sign(
            method=method,
            url=f"http://testserver{path}",
            body=body,
            key_id="matrix-peer#1",
            private_key=key,
        )
        headers.update(signed)
    response = client.generic(method, path, body, content_type="application/json", headers=headers)
    return response.status_code


def _body(path: str, principals: dict) -> dict:
    """An empty body, except where a peer's message must name its sender to be attributed."""
    _, document = principals["peer"]
    if path == "/federation/v1/connect":
        return document
    if path.startswith("/federation/v1/"):
        return {
            "message_id": str(uuid.uuid4()),
            "instance_id": "matrix-peer",
            "command": "agent.status",
            "payload": {"agent_id": str(AGENT)},
            "timestamp": "2026-01-01T00:00:00Z",
        }
    return {}


@pytest.mark.parametrize(
    ("method", "path", "pattern", "access"), MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX]
)
def test_each_principal_gets_exactly_the_documented_access(
    principals, method, path, pattern, access
):
    got = {}
    for principal in ("anonymous", "user", "staff", "peer"):
        status = request_as(principal, principals, method, path)
        got[principal] = status if status in (401, 403) else OK
        assert status < 500, f"{principal}: {method} {path} answered {status}"
    assert got == access
