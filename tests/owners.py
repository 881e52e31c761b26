"""Two users' work, a staff user and a peer hub: what the ownership tests look at.

``world_build`` makes, as the services store them: the owner's queued agent, the
owner's paused Claude agent, the owner's project (with a webhook, a failed
task whose agent wrote output, and so artifacts to download), the owner's
paused project, an agent that project spawned, and an agent an ACTIVE peer hub
spawned here. The other user and staff own nothing. Nothing is queued for a
worker, so the agents never run and nothing needs a sandbox.
"""

import json
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.authtoken.models import Token

from agents.models import Agent, AgentState, Runtime
from agents.services import agent_event_append
from dashboard.relay import relay_get
from dashboard.watch import watch_get
from federation import signing
from federation.models import Peer, PeerState
from taskqueue.models import AttemptState, Project, ProjectState, Task, TaskAttempt, TaskState

PEER_INSTANCE = "matrix-peer"
PEER_KEY_ID = f"{PEER_INSTANCE}#1"
REPOSITORY = "https://git.example/owner/app.git"
WEBHOOK = "https://hooks.example/owner-private-hook"
# What the principals are called in the matrices, in the order they are asked.
USERS = ("owner", "other", "staff")


@dataclass
class World:
    users: dict[str, Any]
    tokens: dict[str, str]
    peer: Peer
    peer_key: Ed25519PrivateKey
    agent: Agent
    paused: Agent
    project_agent: Agent
    peer_agent: Agent
    project: Project
    paused_project: Project

    def path(self, template: str) -> str:
        return template.format(
            agent=self.agent.id,
            paused=self.paused.id,
            project_agent=self.project_agent.id,
            peer_agent=self.peer_agent.id,
            project=self.project.id,
            paused_project=self.paused_project.id,
            peer_id=self.peer.id,
        )

    def session(self, principal: str) -> Client:
        """A browser's client: logged in, except for ``anonymous``."""
        client = Client()
        if principal != "anonymous":
            client.force_login(self.users[principal])
        return client


def agent_stored(requested_by: str, *, state: str = AgentState.QUEUED, **fields: Any) -> Agent:
    """An agent as ``agent_spawn`` stores it, but never queued for a worker.

    A test that commits (the streams read from threads of their own) may
    share the session with a running worker cluster, which must not run it.
    """
    agent = Agent.objects.create(
        task_id="ownership",
        agent_type="worker",
        runtime=fields.pop("runtime", Runtime.SCRIPT),
        script="true",
        repository=REPOSITORY,
        base_branch="main",
        sandbox_backend="process",
        timeout_s=60,
        requested_by=requested_by,
        state=state,
        # A pool no worker node serves: the row is the queue, and nobody claims it.
        pool=fields.pop("pool", "unserved"),
        **fields,
    )
    Agent.objects.filter(id=agent.id).update(work_branch=f"flotilla/{agent.id}")
    agent_event_append(agent_id=agent.id, kind="state", data={"from": None, "to": state})
    return agent


def _peer() -> tuple[Peer, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    peer = Peer.objects.create(
        instance_id=PEER_INSTANCE,
        name="matrix peer",
        url="http://127.0.0.1:9",
        state=PeerState.ACTIVE,
        keys=[
            {
                "key_id": PEER_KEY_ID,
                "alg": "ed25519",
                "created": None,
                "expires": None,
                "public_key": signing.public_key_text(key),
            }
        ],
        allowed_commands=list(settings.FLOTILLA_FEDERATION_PEER_COMMANDS),
        max_concurrent_agents=10,
        requests_per_minute=100_000,
    )
    return peer, key


def _project(owner: str, *, state: str) -> Project:
    """A project of one task ``a``, as ``project_create`` stores it, but not dispatched."""
    project = Project.objects.create(
        name="owner's project",
        webhook_url=WEBHOOK,
        webhook_secret="s" * 32,
        created_by=owner,
        state=state,
    )
    Task.objects.create(project=project, key="a", title="a", script="true", repository=REPOSITORY)
    return project


def _failed_attempt(project: Project) -> Agent:
    """Task ``a`` of ``project`` failed once; its agent (the project's) wrote some output."""
    agent = agent_stored(f"project:{project.id}", state=AgentState.FAILED, error="exit 1")
    agent_event_append(agent_id=agent.id, kind="output", data={"lines": ["owner's output"]})
    task = Task.objects.get(project=project, key="a")
    TaskAttempt.objects.create(task=task, number=1, state=AttemptState.FAILED, agent=agent)
    Task.objects.filter(id=task.id).update(state=TaskState.FAILED, attempts=1, error="exit 1")
    return agent


def world_build() -> World:
    User = get_user_model()
    users = {
        "owner": User.objects.create_user("owner", password="owner-password"),
        "other": User.objects.create_user("other", password="other-password"),
        "staff": User.objects.create_user("staff", password="staff-password", is_staff=True),
    }
    peer, key = _peer()
    agent = agent_stored("user:owner")
    agent_event_append(agent_id=agent.id, kind="output", data={"lines": ["owner's secret"]})
    paused = agent_stored(
        "user:owner", state=AgentState.PAUSED, runtime=Runtime.CLAUDE, options={"budget_usd": "1"}
    )
    project = _project("user:owner", state=ProjectState.RUNNING)
    project_agent = _failed_attempt(project)
    return World(
        users=users,
        tokens={name: Token.objects.create(user=user).key for name, user in users.items()},
        peer=peer,
        peer_key=key,
        agent=agent,
        paused=paused,
        project_agent=project_agent,
        peer_agent=agent_stored(f"peer:{PEER_INSTANCE}", origin=PEER_INSTANCE),
        project=project,
        paused_project=_project("user:owner", state=ProjectState.PAUSED),
    )


def peer_command(command: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A federation command envelope from the matrix peer."""
    return {
        "message_id": str(uuid.uuid4()),
        "instance_id": PEER_INSTANCE,
        "command": command,
        "payload": payload,
        "timestamp": "2026-01-01T00:00:00Z",
    }


def peer_headers(world: World, method: str, path: str, body: bytes) -> dict[str, str]:
    """RFC 9421 headers signing the request with the peer's pinned key (and no API token)."""
    return signing.request_sign(
        method=method,
        url=f"http://testserver{path}",
        body=body,
        key_id=PEER_KEY_ID,
        private_key=world.peer_key,
    )


def url_patterns(prefixes: tuple[str, ...]) -> set[str]:
    """Every route of the URLconf that starts with one of ``prefixes``."""
    found: set[str] = set()

    def walk(resolver: URLResolver, prefix: str) -> None:
        for entry in resolver.url_patterns:
            if isinstance(entry, URLResolver):
                walk(entry, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                found.add(prefix + str(entry.pattern))

    walk(get_resolver(), "")
    return {pattern for pattern in found if pattern.startswith(prefixes)}


def example_path(template: str) -> str:
    """``template`` with made-up ids (numbers for projects, UUIDs for the rest)."""
    ids = {name: uuid.uuid4() for name in ("agent", "paused", "project_agent", "peer_agent")}
    return template.format(**ids, project=1, paused_project=2, peer_id=uuid.uuid4())


def body_bytes(body: Any) -> bytes:
    return json.dumps(body).encode() if body is not None else b""


def stream_connections_close() -> None:
    """Close the database connections the relay's and the watch's threads keep open.

    In a web process they live as long as it does; a test that runs the
    streams in its own process closes them, or PostgreSQL cannot drop the
    test database at the end of the session.
    """
    for executor in (relay_get()._executor, watch_get()._executor):
        executor.submit(connections.close_all).result()
