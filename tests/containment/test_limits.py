"""Limits an agent cannot raise, output and events that cannot grow without bound, a disk bound.

Issue 12, findings 3 and 4: a spawn asked for 64 GiB and 65,536 processes and
got them; 300 MB of output grew the database by 311 MiB, one events page was
51 MB and the agent's dashboard page stopped loading; a 3 GB file was written
into a worktree. Every test goes through the API (or the dashboard's
WebSocket, or a peer's signed command) to a real worker, bwrap or docker.
"""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.db import connection, transaction
from django.test import Client
from websockets.sync.client import connect

from agents import workspace
from agents.models import AgentEvent, AgentEventKind, AgentState
from agents.sandboxes.cgroups import AgentCgroup
from agents.services import SpawnRequest, agent_event_append, agent_register_remote, agent_spawn
from federation import signing
from federation.models import Peer, PeerState
from federation.services import peer_register_inbound
from tests.conftest import ROOT, git, make_remote, spawn_body, subprocess_env, wait_for_state
from tests.containment.conftest import worker_setting
from tests.dashboard.conftest import WebProcess
from tests.launcher import free_port, wait_until
from tests.messages_server import conversation, tool_use_reply

MiB = 1024 * 1024
# Lines of 999 digits and a newline: 100,000 of them are 100 MB of output.
LINE = "$(printf '%0999d' 0)"
HUNDRED_MB_SCRIPT = f'yes "{LINE}" | head -n 100000; echo the-end'
GATES = '[gates]\nlint = "true"\ntests = "true"\n'
# The rolling tail kept past the output bound (agents/output.py).
TAIL_BYTES = 64 * 1024


def spawned(api, body: dict) -> str:
    response = api.post("/api/v1/agents", body, format="json")
    assert response.status_code == 202, response.content
    return response.json()["agent_id"]


def final_state(agent_id, timeout: float = 240.0):
    return wait_for_state(agent_id, [AgentState.COMPLETED, AgentState.FAILED], timeout=timeout)


def log_messages(agent_id) -> list[dict]:
    return list(
        AgentEvent.objects.filter(agent_id=agent_id, kind=AgentEventKind.LOG)
        .order_by("id")
        .values_list("data", flat=True)
    )


# --- limits a spawn may lower but never raise ----------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("memory_mb", 65536, "at most 4096 (FLOTILLA_MAX_MEMORY_MB)"),
        ("pids", 65536, "at most 1024 (FLOTILLA_MAX_PIDS)"),
        ("cpus", 64, "at most 2 (FLOTILLA_MAX_CPUS)"),
        ("timeout_s", 14401, "at most 14400 (FLOTILLA_MAX_TIMEOUT_S)"),
    ],
)
def test_a_spawn_above_an_operator_maximum_gets_400_naming_the_field_and_the_maximum(
    api, remote_repo, field, value, message
):
    response = api.post(
        "/api/v1/agents", spawn_body(remote_repo, "true", **{field: value}), format="json"
    )

    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"] == {f"options.{field}": [message]}


def test_the_maxima_are_read_when_the_request_arrives(api, remote_repo, settings):
    settings.FLOTILLA_MAX_MEMORY_MB = 512

    refused = api.post(
        "/api/v1/agents", spawn_body(remote_repo, "true", memory_mb=513), format="json"
    )
    accepted = api.post(
        "/api/v1/agents", spawn_body(remote_repo, "true", memory_mb=512), format="json"
    )

    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == {
        "options.memory_mb": ["at most 512 (FLOTILLA_MAX_MEMORY_MB)"]
    }
    assert accepted.status_code == 202, accepted.content


def hub_settings(**environment: str) -> subprocess.CompletedProcess:
    """A hub process started with ``environment``, printing its maxima (or failing to start)."""
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.FLOTILLA_MAX_TIMEOUT_S, s.FLOTILLA_AGENT_MAX_RUNTIME_S)"
    )
    env = {**subprocess_env(), "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings"}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, **environment},
        capture_output=True,
        text=True,
    )


def test_a_default_above_its_maximum_stops_the_hub_at_start():
    started = hub_settings(FLOTILLA_SANDBOX_MEMORY_MB="8192")

    assert started.returncode != 0
    assert (
        "ImproperlyConfigured: FLOTILLA_SANDBOX_MEMORY_MB (8192) must not exceed "
        "FLOTILLA_MAX_MEMORY_MB (4096)" in started.stderr
    )


def test_the_older_name_of_the_timeout_maximum_still_sets_it():
    started = hub_settings(FLOTILLA_AGENT_MAX_RUNTIME_S="900", FLOTILLA_DEFAULT_TIMEOUT_S="600")

    assert started.returncode == 0, started.stderr
    assert started.stdout.split() == ["900", "900"]


def bwrap_limits(handle: dict) -> dict:
    group = AgentCgroup(handle["cgroup"])
    read = lambda controller, name: int((group.path(controller) / name).read_text())  # noqa: E731
    return {
        "memory_mb": read("memory", "memory.limit_in_bytes") // MiB,
        "pids": read("pids", "pids.max"),
        "cpus": read("cpu", "cpu.cfs_quota_us") / read("cpu", "cpu.cfs_period_us"),
    }


def docker_limits(handle: dict) -> dict:
    root = Path(settings.FLOTILLA_CGROUP_ROOT)
    relative = Path(handle["cgroup_procs"]).parent.relative_to(root / "pids")
    read = lambda controller, name: int((root / controller / relative / name).read_text())  # noqa: E731
    return {
        "memory_mb": read("memory", "memory.limit_in_bytes") // MiB,
        "pids": read("pids", "pids.max"),
        "cpus": read("cpu", "cpu.cfs_quota_us") / read("cpu", "cpu.cfs_period_us"),
    }


def test_limits_within_the_maxima_are_accepted_and_reach_the_sandboxs_cgroup(hub, api, remote_repo):
    body = spawn_body(remote_repo, "sleep 60", memory_mb=256, pids=100, cpus=0.5)

    agent = wait_for_state(spawned(api, body), AgentState.RUNNING)

    assert bwrap_limits(agent.sandbox_handle) == {"memory_mb": 256, "pids": 100, "cpus": 0.5}


@pytest.mark.docker
def test_limits_within_the_maxima_reach_the_docker_containers_cgroup(hub, api, remote_repo):
    body = spawn_body(remote_repo, "sleep 60", sandbox="docker", memory_mb=256, pids=100, cpus=0.5)

    agent = wait_for_state(spawned(api, body), AgentState.RUNNING)

    assert docker_limits(agent.sandbox_handle) == {"memory_mb": 256, "pids": 100, "cpus": 0.5}


def test_limits_that_bypass_the_api_are_held_to_the_maxima_by_the_runner(hub, remote_repo):
    # A service call (a project task, a management command) is not validated by the API.
    request = SpawnRequest(
        task_id="past-the-api",
        agent_type="worker",
        runtime="script",
        repository=str(remote_repo),
        base_branch="main",
        script="sleep 60",
        timeout_s=1_000_000,
        options={"memory_mb": 65536, "pids": 65536, "cpus": 64},
    )

    agent = agent_spawn(request=request, requested_by="user:operator")
    running = wait_for_state(agent.id, AgentState.RUNNING)

    assert bwrap_limits(running.sandbox_handle) == {"memory_mb": 4096, "pids": 1024, "cpus": 2.0}
    (held,) = [data for data in log_messages(agent.id) if "limits_held" in data]
    assert held["limits_held"] == {
        "memory_mb": {"requested": 65536, "maximum": 4096},
        "pids": {"requested": 65536, "maximum": 1024},
        "cpus": {"requested": 64, "maximum": 2.0},
        "timeout_s": {"requested": 1_000_000, "maximum": 14400},
    }
    assert "FLOTILLA_MAX_TIMEOUT_S" in held["message"]


@pytest.fixture
def peer_key(db):
    key = Ed25519PrivateKey.generate()
    document = {
        "instance_id": "limits-peer",
        "name": "limits-peer",
        "url": "http://127.0.0.1:9",
        "keys": [
            {
                "key_id": "limits-peer#1",
                "alg": "ed25519",
                "created": None,
                "expires": None,
                "public_key": signing.public_key_text(key),
            }
        ],
    }
    peer = peer_register_inbound(document=document, key_id="limits-peer#1")
    Peer.objects.filter(id=peer.id).update(state=PeerState.ACTIVE)
    return key


def test_a_peers_spawn_above_a_maximum_is_refused_naming_the_field_and_the_maximum(
    peer_key, remote_repo
):
    url = "http://testserver/federation/v1/commands"
    body = json.dumps(
        {
            "message_id": str(uuid.uuid4()),
            "instance_id": "limits-peer",
            "command": "agent.spawn",
            "payload": spawn_body(remote_repo, "true", memory_mb=65536),
            "timestamp": "2026-01-01T00:00:00Z",
        }
    ).encode()
    headers = signing.request_sign(
        method="POST", url=url, body=body, key_id="limits-peer#1", private_key=peer_key
    )

    response = Client().generic("POST", "/federation/v1/commands", body, headers=headers)

    assert response.status_code == 400, response.content
    error = json.dumps(response.json()["error"])
    assert "memory_mb" in error and "at most 4096 (FLOTILLA_MAX_MEMORY_MB)" in error


# --- output: a bound over the whole run, then a rolling tail --------------------------------


def stored_output(agent_id) -> list[str]:
    lines: list[str] = []
    for data in (
        AgentEvent.objects.filter(agent_id=agent_id, kind=AgentEventKind.OUTPUT)
        .order_by("id")
        .values_list("data", flat=True)
    ):
        lines += data["lines"]
    return lines


def output_bytes(lines: list[str]) -> int:
    return sum(len(line.encode()) + 1 for line in lines)


def database_bytes() -> int:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database())")
            return cursor.fetchone()[0]
    name = Path(connection.settings_dict["NAME"])
    return sum(path.stat().st_size for path in (name, Path(f"{name}-wal")) if path.exists())


def assert_output_bounded(agent_id, *, total_lines: int, total_bytes: int) -> None:
    lines = stored_output(agent_id)
    (dropped,) = [data for data in log_messages(agent_id) if "dropped_bytes" in data]
    assert output_bytes(lines) <= settings.FLOTILLA_MAX_OUTPUT_BYTES + TAIL_BYTES
    # Nothing is miscounted: what was kept and what was dropped make up the whole output.
    assert len(lines) + dropped["dropped_lines"] == total_lines
    assert output_bytes(lines) + dropped["dropped_bytes"] == total_bytes
    assert f"{dropped['dropped_bytes']} bytes" in dropped["message"]


@pytest.mark.timeout(300)
def test_a_hundred_megabytes_of_output_keep_the_bound_and_a_tail_and_say_what_was_dropped(
    hub, api, remote_repo
):
    before = database_bytes()

    agent = final_state(spawned(api, spawn_body(remote_repo, HUNDRED_MB_SCRIPT, timeout_s=240)))

    assert agent.state == AgentState.COMPLETED, agent.error
    assert_output_bounded(agent.id, total_lines=100_001, total_bytes=100_000_000 + 8)
    assert stored_output(agent.id)[-1] == "the-end"  # the tail is the end of the output
    assert database_bytes() - before <= 4 * settings.FLOTILLA_MAX_OUTPUT_BYTES


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_a_hundred_megabytes_of_output_from_a_docker_agent_keep_the_same_bound(
    hub, api, remote_repo
):
    body = spawn_body(remote_repo, HUNDRED_MB_SCRIPT, sandbox="docker", timeout_s=240)

    agent = final_state(spawned(api, body))

    assert agent.state == AgentState.COMPLETED, agent.error
    assert_output_bounded(agent.id, total_lines=100_001, total_bytes=100_000_000 + 8)
    assert stored_output(agent.id)[-1] == "the-end"


def spawn_claude(api, remote, **options) -> str:
    body = {
        "task_id": "limits",
        "agent_type": "worker",
        "runtime": "claude",
        "context": {"repository": str(remote), "branch": "main", "instructions": "Do it."},
        "options": options,
    }
    return spawned(api, body)


@pytest.mark.timeout(300)
def test_the_output_bound_spans_every_command_of_a_claude_agent(claude_server, api, tmp_path):
    remote = make_remote(tmp_path, {"README.md": "# sample\n", ".flotilla.toml": GATES})
    six_mb = f'yes "{LINE}" | head -n 6000'
    claude_server.default = conversation(
        tool_use_reply([("run_command", {"command": six_mb, "timeout_s": 120})]),
        tool_use_reply([("run_command", {"command": six_mb, "timeout_s": 120})]),
        tool_use_reply([("finish", {"summary": "printed twice"})]),
    )

    agent = final_state(spawn_claude(api, remote, timeout_s=240))

    assert agent.state == AgentState.COMPLETED, agent.error
    assert_output_bounded(agent.id, total_lines=12_000, total_bytes=12_000_000)


# --- events pages bounded in bytes, through the API and the dashboard -----------------------


def agent_with_a_huge_log(*, events: int = 300, oversized: bool = False):
    """An agent row (run on a peer, so no worker here touches it) with about 12 MB of events."""
    request = SpawnRequest(
        task_id="huge-log",
        agent_type="worker",
        runtime="script",
        repository="/nowhere.git",
        base_branch="main",
        script="true",
    )
    agent = agent_register_remote(
        request=request, requested_by="user:operator", node="elsewhere", sandbox_handle={}
    )
    with transaction.atomic():
        for number in range(events):
            line = f"{number} " + "x" * 40_000
            agent_event_append(agent_id=agent.id, kind="output", data={"lines": [line]})
            if number % 10 == 0:
                agent_event_append(agent_id=agent.id, kind="log", data={"message": f"{number}"})
            if oversized and number == events // 2:
                big = {"lines": ["y" * (2 * settings.FLOTILLA_EVENTS_PAGE_BYTES)]}
                agent_event_append(agent_id=agent.id, kind="output", data=big)
    ids = list(
        AgentEvent.objects.filter(agent_id=agent.id).order_by("id").values_list("id", flat=True)
    )
    return agent, ids


def json_bytes(value) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def test_events_pages_stay_within_the_byte_bound_and_next_after_leads_through_every_event_once(
    api, user
):
    agent, ids = agent_with_a_huge_log(oversized=True)
    bound = settings.FLOTILLA_EVENTS_PAGE_BYTES

    seen: list[int] = []
    pages, after, has_more = 0, 0, True
    while has_more:
        page = api.get(f"/api/v1/agents/{agent.id}/events?after={after}&limit=1000").json()
        # A single event larger than the bound still comes, alone in its page.
        assert json_bytes(page["events"]) <= bound or len(page["events"]) == 1
        seen += [event["id"] for event in page["events"]]
        after, has_more, pages = page["next_after"], page["has_more"], pages + 1

    assert seen == ids
    assert pages >= 12
    last = api.get(f"/api/v1/agents/{agent.id}/events?after={after}").json()
    assert last["events"] == [] and last["has_more"] is False and last["next_after"] == after


@pytest.fixture(scope="module")
def web(django_db_setup):
    """A real daphne process serving the dashboard, as in tests/dashboard."""
    server = WebProcess(free_port())
    server.start()
    yield server
    server.stop()


def ws_frames(web, user, path: str, *, until_id: int, max_size: int) -> list[str]:
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    url = web.url.replace("http://", "ws://") + path
    frames: list[str] = []
    with connect(
        url, origin=web.url, additional_headers={"Cookie": cookie}, max_size=max_size
    ) as socket:
        while not frames or json.loads(frames[-1])["last_id"] < until_id:
            frames.append(socket.recv(timeout=20))
    return frames


def test_the_agent_pages_replay_of_a_huge_log_comes_in_frames_within_the_bound(
    transactional_db, user, web
):
    agent, ids = agent_with_a_huge_log()
    bound = settings.FLOTILLA_EVENTS_PAGE_BYTES
    # A client that accepts frames of the bound and a little more (the agent's summary).
    limit = bound + 16 * 1024

    frames = ws_frames(
        web, user, f"/ws/dashboard/agents/{agent.id}/?after=0", until_id=ids[-1], max_size=limit
    )

    events = [event for frame in frames for event in json.loads(frame)["events"]]
    assert [event["id"] for event in events] == ids
    assert all(json_bytes(json.loads(frame)["events"]) <= bound for frame in frames)
    assert len(frames) >= 12


def test_a_burst_of_live_events_reaches_the_agent_page_in_frames_within_the_bound(
    transactional_db, user, web
):
    agent, ids = agent_with_a_huge_log(events=1)
    bound = settings.FLOTILLA_EVENTS_PAGE_BYTES
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    url = web.url.replace("http://", "ws://") + f"/ws/dashboard/agents/{agent.id}/?after={ids[-1]}"

    with connect(
        url, origin=web.url, additional_headers={"Cookie": cookie}, max_size=bound + 16 * 1024
    ) as socket:
        json.loads(socket.recv(timeout=20))  # the page is current
        # One transaction: the relay finds all of it in one tick.
        with transaction.atomic():
            burst = [
                agent_event_append(
                    agent_id=agent.id, kind="output", data={"lines": [f"{n} " + "z" * 40_000]}
                ).id
                for n in range(200)
            ]
        received: list[int] = []
        while not received or received[-1] < burst[-1]:
            frame = json.loads(socket.recv(timeout=20))
            assert json_bytes(frame["events"]) <= bound
            received += [event["id"] for event in frame["events"]]

    assert received == burst


# --- disk: the worktree is watched, and the agent stopped past the maximum ------------------


# Many files, each below the per-file limit (RLIMIT_FSIZE is the worktree
# maximum too), that together pass the worktree's maximum.
FILLER = "for i in $(seq 1 40); do fallocate -l 8M filler-$i.bin; done; sleep 60"


def worktree_error(cluster) -> str:
    """The reason an agent stopped for its worktree's size gives, under the worker's maximum."""
    maximum = worker_setting(cluster, "FLOTILLA_MAX_WORKTREE_MB")
    return f"the worktree grew past {maximum} MB (FLOTILLA_MAX_WORKTREE_MB)"


@pytest.mark.timeout(180)
def test_an_agent_whose_worktree_passes_the_maximum_is_stopped_and_keeps_its_commits(
    hub, claude_server, api, tmp_path
):
    remote = make_remote(tmp_path, {"README.md": "# sample\n", ".flotilla.toml": GATES})
    claude_server.default = conversation(
        tool_use_reply([("write_file", {"path": "notes.txt", "content": "kept\n"})]),
        tool_use_reply([("commit", {"message": "Keep the notes"})]),
        tool_use_reply([("run_command", {"command": FILLER, "timeout_s": 90})]),
        tool_use_reply([("finish", {"summary": "filled the disk"})]),
    )

    agent_id = spawn_claude(api, remote, timeout_s=40)
    agent = wait_for_state(agent_id, AgentState.FAILED, timeout=120)

    assert agent.error == worktree_error(hub)
    # Nothing is lost: the commit it made stays on its branch, and the hub says so.
    wait_until(
        lambda: any(
            "kept: 1 unpushed commit" in data.get("message", "") for data in log_messages(agent_id)
        ),
        what="any( 'kept: 1 unpushed commit' in data.get('message', '') fo",
    )
    branch = f"flotilla/{agent_id}"
    repository = workspace.mirror_path(agent.repository)
    assert "Keep the notes" in git(repository, "log", "-1", "--format=%B", branch)
    assert git(repository, "show", f"{branch}:notes.txt") == "kept"
    wait_until(
        lambda: not Path(agent.worktree_path).exists(),
        what="not Path(agent.worktree_path).exists()",
    )


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_a_docker_agent_whose_worktree_passes_the_maximum_is_stopped_with_the_reason(
    hub, api, remote_repo
):
    body = spawn_body(remote_repo, FILLER, sandbox="docker", timeout_s=40)

    agent = wait_for_state(spawned(api, body), AgentState.FAILED, timeout=120)

    assert agent.error == worktree_error(hub)
    wait_until(
        lambda: not Path(agent.worktree_path).exists(),
        what="not Path(agent.worktree_path).exists()",
    )


@pytest.mark.parametrize("backend", ["bwrap", pytest.param("docker", marks=pytest.mark.docker)])
def test_one_file_larger_than_the_worktree_maximum_cannot_be_written_at_all(
    hub, api, remote_repo, backend
):
    maximum = int(worker_setting(hub, "FLOTILLA_MAX_WORKTREE_MB"))
    # Written to /tmp, so the worktree's watcher has no part in it: the limit
    # holds for every file a sandboxed process writes, wherever it is.
    script = (
        "fallocate -l 3G /tmp/huge.bin || echo REFUSED-FALLOCATE; "
        f"dd if=/dev/zero of=/tmp/big.bin bs=1M count={maximum + 8} status=none "
        "|| echo REFUSED-DD; ls -s --block-size=1M /tmp/big.bin; exit 1"
    )

    agent = wait_for_state(
        spawned(api, spawn_body(remote_repo, script, sandbox=backend, gate_profile="minimal")),
        AgentState.FAILED,
        timeout=60,
    )

    lines = [
        line
        for event in AgentEvent.objects.filter(agent_id=agent.id, kind="output")
        for line in event.data.get("lines", [])
    ]
    assert "REFUSED-FALLOCATE" in lines
    assert "REFUSED-DD" in lines
    written = next(int(line.split()[0]) for line in lines if line.endswith("big.bin"))
    assert written <= maximum
