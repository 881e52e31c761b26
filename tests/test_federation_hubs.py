"""Federation between two real hubs: daphne + qcluster each, two SQLite databases, loopback.

Hub A connects to hub B (B's admin accepts), spawns agents on B, watches them
through the events B pushes back, and kills them. Rejections are sent to B by
test "probe" hubs that hold real keys, over real HTTP.
"""

import json
import time
import uuid
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import signing
from tests.launcher import Hub, free_port, git, hubs_connect, hubs_start, make_remote

FINAL = {"completed", "failed", "killed"}
HUB_ENV = {"FLOTILLA_WORKERS": "4", "FLOTILLA_DEFAULT_TIMEOUT_S": "60"}


class Probe:
    """A hub identity held by the test: a key pair that signs whatever the test wants."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.key = Ed25519PrivateKey.generate()
        self.key_id = f"{instance_id}#1"

    def identity(self) -> dict:
        return {
            "instance_id": self.instance_id,
            "name": self.instance_id,
            "url": "http://127.0.0.1:9",
            "capabilities": [],
            "keys": [
                {
                    "key_id": self.key_id,
                    "alg": "ed25519",
                    "created": None,
                    "expires": None,
                    "public_key": signing.public_key_text(self.key),
                }
            ],
        }

    def headers(self, url: str, body: bytes, **options) -> dict:
        return signing.request_sign(
            method="POST",
            url=url,
            body=body,
            key_id=options.pop("key_id", self.key_id),
            private_key=options.pop("private_key", self.key),
            created=options.pop("created", None),
        )

    def post(
        self, hub: Hub, path: str, body: bytes, headers: dict | None = None
    ) -> requests.Response:
        url = f"{hub.url}/federation/v1/{path}"
        return requests.post(
            url,
            data=body,
            timeout=30,
            headers=self.headers(url, body) if headers is None else headers,
        )

    def command(self, command: str, payload: dict, message_id: str | None = None) -> bytes:
        return json.dumps(
            {
                "message_id": message_id or str(uuid.uuid4()),
                "instance_id": self.instance_id,
                "command": command,
                "payload": payload,
                "timestamp": "2026-01-01T00:00:00Z",
            }
        ).encode()


def probe_join(hub: Hub, probe: Probe, *, accept: bool = True) -> dict:
    response = probe.post(hub, "connect", json.dumps(probe.identity()).encode())
    assert response.status_code == 202, response.text
    peer = next(
        item
        for item in hub.api("GET", "peers").json()["results"]
        if item["instance_id"] == probe.instance_id
    )
    assert peer["state"] == "PENDING"
    if accept:
        assert hub.api("POST", f"peers/{peer['id']}/accept").status_code == 200
    return peer


@pytest.fixture(scope="module")
def hubs():
    hub_a, hub_b = hubs_start("hub-a", "hub-b", env=HUB_ENV)
    try:
        on_a, on_b = hubs_connect(hub_a, hub_b)
        yield hub_a, hub_b, on_a, on_b
    finally:
        hub_a.stop()
        hub_b.stop()


@pytest.fixture(scope="module")
def probes(hubs):
    _, hub_b, _, _ = hubs
    joined = {name: Probe(name) for name in ("probe", "other", "limited", "throttled", "suspended")}
    for probe in joined.values():
        peer = probe_join(hub_b, probe)
        if probe.instance_id == "suspended":
            assert hub_b.api("POST", f"peers/{peer['id']}/suspend").status_code == 200
    hub_b.query(
        "UPDATE federation_peer SET allowed_commands = ? WHERE instance_id = 'limited'",
        json.dumps(["agent.status"]),
    )
    hub_b.query(
        "UPDATE federation_peer SET requests_per_minute = 1 WHERE instance_id = 'throttled'"
    )
    joined["newcomer"] = Probe("newcomer")
    probe_join(hub_b, joined["newcomer"], accept=False)
    return joined


def spawn_on_peer(hub: Hub, peer_id: str, repository: Path, script: str, task_id: str) -> dict:
    body = {
        "task_id": task_id,
        "runtime": "script",
        "script": script,
        "context": {"repository": str(repository), "branch": "main"},
    }
    response = hub.api("POST", f"peers/{peer_id}/agents", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def states_until(hub: Hub, agent_id: str, wanted: set[str], timeout: float = 45) -> list[str]:
    """Every distinct state the hub showed for an agent, polled until one in ``wanted``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = hub.api("GET", f"agents/{agent_id}").json()["state"]
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in wanted or state in FINAL:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"agent {agent_id} only went {seen}")


def test_handshake_pins_each_others_keys_and_both_hubs_are_active(hubs):
    hub_a, hub_b, on_a, on_b = hubs
    identity_b = requests.get(f"{hub_b.url}/federation/v1/identity", timeout=5).json()

    assert on_a["instance_id"] == "hub-b" and on_a["state"] == "ACTIVE"
    assert [key["public_key"] for key in on_a["keys"]] == [
        key["public_key"] for key in identity_b["keys"]
    ]
    assert on_b["instance_id"] == "hub-a" and on_b["state"] == "ACTIVE"
    assert on_b["keys"][0]["key_id"] == "hub-a#1"
    listed = hub_b.api("GET", "peers").json()["results"]
    assert {"id", "instance_id", "name", "url", "state", "last_seen"} <= set(listed[0])
    assert hub_b.query("SELECT count(*) FROM audit_auditevent WHERE action = 'peer.accept'")[0][0]


def test_agent_spawned_on_the_peer_is_seen_running_then_completed_on_the_hub(hubs, tmp_path):
    hub_a, hub_b, on_a, _ = hubs
    repository = make_remote(tmp_path)

    spawned = spawn_on_peer(hub_a, on_a["id"], repository, "sleep 1; echo hi > hi.txt", "remote-1")
    states = states_until(hub_a, spawned["agent_id"], {"completed"})

    assert "running" in states and states[-1] == "completed", states
    agent = hub_a.api("GET", f"agents/{spawned['agent_id']}").json()
    assert agent["node"] == "hub-b" and agent["sandbox"] == "remote"
    assert agent["progress"] == 100 and agent["result"]["pushed_commit"]
    remote = hub_b.api("GET", f"agents/{spawned['remote_agent_id']}").json()
    assert remote["origin"] == "hub-a" and remote["requested_by"] == "peer:hub-a"
    assert git(repository, "show", f"{remote['work_branch']}:hi.txt") == "hi"
    events = hub_a.api("GET", f"agents/{spawned['agent_id']}/events").json()["events"]
    mirrored = [event["data"]["to"] for event in events if event["kind"] == "state"]
    assert mirrored == ["queued", "spawning", "running", "gating", "pushing", "completed"]


def test_kill_from_the_hub_stops_the_agent_on_the_peer(hubs, tmp_path):
    hub_a, hub_b, on_a, _ = hubs
    spawned = spawn_on_peer(hub_a, on_a["id"], make_remote(tmp_path), "sleep 60", "remote-kill")
    assert states_until(hub_a, spawned["agent_id"], {"running"})[-1] == "running"

    killed = hub_a.api("POST", f"agents/{spawned['agent_id']}/kill", json={"reason": "stop it"})

    assert killed.status_code == 200, killed.text
    assert states_until(hub_b, spawned["remote_agent_id"], FINAL, timeout=10)[-1] == "killed"
    remote = hub_b.api("GET", f"agents/{spawned['remote_agent_id']}").json()
    assert "peer:hub-a" in remote["error"]


def test_the_hubs_kill_all_reaches_its_remote_agents(hubs, tmp_path):
    hub_a, hub_b, on_a, _ = hubs
    spawned = spawn_on_peer(hub_a, on_a["id"], make_remote(tmp_path), "sleep 60", "remote-all")
    assert states_until(hub_a, spawned["agent_id"], {"running"})[-1] == "running"

    summary = hub_a.api("POST", "agents/kill-all", json={"reason": "everything stops"}).json()

    assert summary["killed"] >= 1 and summary["failed"] == 0, summary
    assert states_until(hub_b, spawned["remote_agent_id"], FINAL, timeout=10)[-1] == "killed"


def test_connecting_to_a_hub_that_is_down_fails_with_a_clear_error(hubs):
    hub_a = hubs[0]

    response = hub_a.api("POST", "peers/connect", json={"url": f"http://127.0.0.1:{free_port()}"})

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "peer_unreachable"


# --- rejections -----------------------------------------------------------------


def _spawn_payload(repository: Path, task_id: str) -> dict:
    return {
        "task_id": task_id,
        "runtime": "script",
        "script": "true",
        "context": {"repository": str(repository), "branch": "main"},
    }


def _tamper(case: str, probes: dict, url: str, body: bytes) -> tuple[bytes, dict]:
    probe = probes["probe"]
    if case == "missing signature":
        headers = probe.headers(url, body)
        return body, {
            "Content-Type": "application/json",
            "Content-Digest": headers["Content-Digest"],
        }
    if case == "unknown key":
        return body, probe.headers(
            url, body, key_id="probe#99", private_key=Ed25519PrivateKey.generate()
        )
    if case == "key of another peer":
        other = probes["other"]
        return body, probe.headers(url, body, key_id=other.key_id, private_key=other.key)
    if case == "body altered after signing":
        return body.replace(b'"script": "true"', b'"script": "rm -rf /"'), probe.headers(url, body)
    if case == "digest header altered":
        headers = probe.headers(url, body)
        return body, {**headers, "Content-Digest": signing.content_digest(b"{}")}
    if case == "created 301 s ago":
        return body, probe.headers(url, body, created=int(time.time()) - 301)
    if case == "created 61 s ahead":
        return body, probe.headers(url, body, created=int(time.time()) + 61)
    raise AssertionError(case)


def _counts(hub: Hub, task_id: str) -> tuple[int, int]:
    agents = hub.query("SELECT count(*) FROM agents_agent WHERE task_id = ?", task_id)[0][0]
    messages = hub.query("SELECT count(*) FROM federation_inboundmessage")[0][0]
    return agents, messages


def _rejections(hub: Hub) -> list[tuple]:
    return hub.query(
        "SELECT actor, reason, data FROM audit_auditevent "
        "WHERE action = 'federation.rejected' ORDER BY id"
    )


@pytest.mark.parametrize(
    "case",
    [
        "missing signature",
        "unknown key",
        "key of another peer",
        "body altered after signing",
        "digest header altered",
        "created 301 s ago",
        "created 61 s ahead",
    ],
)
def test_a_forged_altered_or_stale_command_is_refused_401_and_audited(hubs, probes, tmp_path, case):
    hub_b = hubs[1]
    task_id = f"reject-{uuid.uuid4().hex[:8]}"
    url = f"{hub_b.url}/federation/v1/commands"
    body, headers = _tamper(
        case,
        probes,
        url,
        probes["probe"].command("agent.spawn", _spawn_payload(make_remote(tmp_path), task_id)),
    )
    before, audits = _counts(hub_b, task_id), len(_rejections(hub_b))

    response = requests.post(url, data=body, headers=headers, timeout=10)

    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "signature_invalid"
    assert _counts(hub_b, task_id) == before == (0, before[1])
    assert len(_rejections(hub_b)) == audits + 1
    assert json.loads(_rejections(hub_b)[-1][2])["status"] == 401


def test_a_replayed_request_is_refused_and_runs_nothing_twice(hubs, probes, tmp_path):
    hub_b, probe = hubs[1], probes["probe"]
    task_id = f"replay-{uuid.uuid4().hex[:8]}"
    url = f"{hub_b.url}/federation/v1/commands"
    body = probe.command("agent.spawn", _spawn_payload(make_remote(tmp_path), task_id))
    headers = probe.headers(url, body)
    first = requests.post(url, data=body, headers=headers, timeout=10)
    assert first.status_code == 200, first.text
    counts, audits = _counts(hub_b, task_id), len(_rejections(hub_b))

    replay = requests.post(url, data=body, headers=headers, timeout=10)

    assert replay.status_code == 401 and "replayed" in replay.json()["error"]["message"]
    assert _counts(hub_b, task_id) == counts and counts[0] == 1
    assert len(_rejections(hub_b)) == audits + 1


@pytest.mark.parametrize(
    ("sender", "command", "status"),
    [
        ("newcomer", "agent.spawn", 403),  # PENDING
        ("suspended", "agent.spawn", 403),  # SUSPENDED
        ("limited", "agent.spawn", 403),  # agent.spawn not allowed for it
    ],
)
def test_a_peer_that_may_not_send_the_command_is_refused_403_and_audited(
    hubs, probes, tmp_path, sender, command, status
):
    hub_b, probe = hubs[1], probes[sender]
    task_id = f"forbid-{uuid.uuid4().hex[:8]}"
    before, audits = _counts(hub_b, task_id), len(_rejections(hub_b))

    response = probe.post(
        hub_b, "commands", probe.command(command, _spawn_payload(make_remote(tmp_path), task_id))
    )

    assert response.status_code == status, response.text
    assert _counts(hub_b, task_id) == before
    assert len(_rejections(hub_b)) == audits + 1
    assert _rejections(hub_b)[-1][0] == f"peer:{sender}"


def test_malformed_json_is_refused_400_and_audited(hubs, probes):
    hub_b, probe = hubs[1], probes["probe"]
    before, audits = _counts(hub_b, "-"), len(_rejections(hub_b))

    response = probe.post(hub_b, "commands", b'{"message_id": "x", "command": ')

    assert response.status_code == 400 and response.json()["error"]["code"] == "malformed"
    assert _counts(hub_b, "-") == before
    assert len(_rejections(hub_b)) == audits + 1


def test_a_body_over_one_mebibyte_is_refused_413_and_audited(hubs, probes):
    hub_b, probe = hubs[1], probes["probe"]
    audits = len(_rejections(hub_b))
    body = probe.command("agent.status", {"agent_id": str(uuid.uuid4()), "pad": "x" * (1 << 20)})

    response = probe.post(hub_b, "commands", body)

    assert response.status_code == 413
    assert len(_rejections(hub_b)) == audits + 1


def test_requests_over_the_peers_rate_quota_are_refused_429(hubs, probes):
    hub_b, probe = hubs[1], probes["throttled"]
    status = probe.command("agent.status", {"agent_id": str(uuid.uuid4())})

    first = probe.post(hub_b, "commands", status)
    second = probe.post(
        hub_b, "commands", probe.command("agent.status", {"agent_id": str(uuid.uuid4())})
    )

    assert first.status_code == 404  # admitted; the agent simply is not there
    assert second.status_code == 429 and second.json()["error"]["code"] == "quota_exceeded"


def test_the_same_message_id_returns_the_stored_response_and_another_body_is_409(
    hubs, probes, tmp_path
):
    hub_b, probe = hubs[1], probes["probe"]
    message_id = str(uuid.uuid4())
    task_id = f"idem-{uuid.uuid4().hex[:8]}"
    body = probe.command("agent.spawn", _spawn_payload(make_remote(tmp_path), task_id), message_id)

    first = probe.post(hub_b, "commands", body)
    again = probe.post(hub_b, "commands", body)  # a new signature and nonce: a retry, not a replay
    other = probe.post(
        hub_b,
        "commands",
        probe.command("agent.status", {"agent_id": str(uuid.uuid4())}, message_id),
    )

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and first.json()["correlation_id"] == message_id
    assert first.json()["success"] and first.json()["data"]["agent_id"]
    assert _counts(hub_b, task_id)[0] == 1
    assert other.status_code == 409 and other.json()["error"]["code"] == "message_conflict"


def test_every_answer_of_the_inbox_is_signed_by_the_hubs_own_key(hubs, probes):
    hub_b, probe = hubs[1], probes["probe"]
    identity = requests.get(f"{hub_b.url}/federation/v1/identity", timeout=5).json()
    keys = {key["key_id"]: signing.public_key_load(key["public_key"]) for key in identity["keys"]}

    for response in (
        probe.post(hub_b, "commands", b"not json"),
        probe.post(
            hub_b, "commands", probe.command("agent.status", {"agent_id": str(uuid.uuid4())})
        ),
    ):
        verified = signing.response_verify(
            status=response.status_code,
            headers=response.headers,
            body=response.content,
            key_lookup=keys.__getitem__,
        )
        assert verified.key_id == "hub-b#1"
