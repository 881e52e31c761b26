"""Helpers of the containment suite: hostile agents spawned through the API, watched from the host.

Every attack runs on both sandboxes (the docker cases carry the ``docker``
marker). A test asserts what a user or an operator would check: the agent's
final state, its output and events as the API returns them, and markers on
the host (files, listeners, processes, cgroups, containers).
"""

import json
import os
import re
import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings

from agents.models import FINAL_STATES
from tests.conftest import spawn_body

BACKENDS = ["bwrap", pytest.param("docker", marks=pytest.mark.docker)]

# --- Agents through the API ---------------------------------------------------


def spawn(api, repository: Path, script: str, *, backend: str, **options) -> str:
    body = spawn_body(repository, script, sandbox=backend, **options)
    response = api.post("/api/v1/agents", body, format="json")
    assert response.status_code == 202, response.content
    return response.json()["agent_id"]


def agent_of(api, agent_id: str) -> dict:
    response = api.get(f"/api/v1/agents/{agent_id}")
    assert response.status_code == 200, response.content
    return response.json()


def finished(api, agent_id: str, timeout: float = 90.0) -> dict:
    """The agent as the API shows it once it has reached a final state."""
    deadline = time.monotonic() + timeout
    while True:
        agent = agent_of(api, agent_id)
        if agent["state"] in FINAL_STATES:
            return agent
        if time.monotonic() > deadline:
            raise AssertionError(f"agent {agent_id} still {agent['state']} after {timeout} s")
        time.sleep(0.1)


def events_of(api, agent_id: str, after: int = 0) -> list[dict]:
    """Every event of the agent after ``after``, paged through the API as a client would."""
    events: list[dict] = []
    while True:
        response = api.get(f"/api/v1/agents/{agent_id}/events", {"after": after, "limit": 1000})
        assert response.status_code == 200, response.content[:500]
        page = response.json()
        if not page["events"]:
            return events
        events += page["events"]
        after = page["last_id"]


def output_lines(events: list[dict]) -> list[str]:
    return [
        line for event in events if event["kind"] == "output" for line in event["data"]["lines"]
    ]


def output_of(api, agent_id: str) -> str:
    """Everything a user reads of what the agent printed: output events, result tail, error."""
    agent = agent_of(api, agent_id)
    tail = (agent["result"] or {}).get("output_tail", "")
    return "\n".join([*output_lines(events_of(api, agent_id)), str(tail), agent["error"]])


def run_attack(api, repository: Path, script: str, *, backend: str, **options) -> tuple[dict, str]:
    """Spawn a script agent, wait until it ends; the finished agent and its output."""
    timeout = options.pop("wait_s", 90.0)
    agent_id = spawn(api, repository, script, backend=backend, **options)
    return finished(api, agent_id, timeout=timeout), output_of(api, agent_id)


def wait_for_output(api, agent_id: str, text: str, timeout: float = 45.0) -> None:
    deadline, after = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        events = events_of(api, agent_id, after)
        if any(text in line for line in output_lines(events)):
            return
        after = events[-1]["id"] if events else after
        if agent_of(api, agent_id)["state"] in FINAL_STATES:
            raise AssertionError(f"agent {agent_id} ended before printing {text!r}")
        time.sleep(0.1)
    raise AssertionError(f"agent {agent_id} never printed {text!r}")


def network_events(events: list[dict]) -> list[dict]:
    """The data of the events recording a connection through the egress proxy."""
    return [
        event["data"]
        for event in events
        if event["kind"] == "network" or "allowed" in (event["data"] or {})
    ]


def connection_recorded(events: list[dict], *, host: str, port: int | None, allowed: bool) -> bool:
    """Whether an event records a connection to ``host`` (and ``port``) with that verdict."""
    for data in network_events(events):
        text = json.dumps(data)
        if data.get("allowed") is allowed and host in text and (port is None or str(port) in text):
            return True
    return False


# --- What runs inside the sandbox ----------------------------------------------

_TCP_PROBE = """
import socket, sys
for target in sys.argv[1:]:
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
        print("PROBE", target, "CONNECTED", flush=True)
    except OSError as error:
        print("PROBE", target, "FAILED", type(error).__name__, flush=True)
"""

_PROXY_FETCH = """
import socket, sys, urllib.error, urllib.request
PROXY = "http://127.0.0.1:3128"
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": PROXY, "https": PROXY}))
for item in sys.argv[1:]:
    name, _, target = item.partition("=")
    try:
        if target.startswith("connect:"):
            address = target[len("connect:"):]
            with socket.create_connection(("127.0.0.1", 3128), timeout=5) as tunnel:
                request = f"CONNECT {address} HTTP/1.1\\r\\nHost: {address}\\r\\n\\r\\n"
                tunnel.sendall(request.encode())
                status = tunnel.recv(200).split(b"\\r\\n")[0].decode(errors="replace")
            print("FETCH", name, "STATUS", status, flush=True)
        else:
            with opener.open(target, timeout=5) as reply:
                body = reply.read(100).decode(errors="replace")
                print("FETCH", name, "STATUS", reply.status, body, flush=True)
    except urllib.error.HTTPError as error:
        print("FETCH", name, "REFUSED", error.code, flush=True)
    except Exception as error:
        print("FETCH", name, "FAILED", type(error).__name__, flush=True)
"""


def tcp_probe(targets: list[str]) -> str:
    """A command that tries a direct TCP connection to each ``host:port`` and prints a verdict."""
    return f"python3 -c {shlex.quote(_TCP_PROBE)} " + " ".join(map(shlex.quote, targets))


def probe_verdicts(output: str) -> dict[str, str]:
    return {
        match[1]: match[2]
        for match in re.finditer(r"^PROBE (\S+) (CONNECTED|FAILED)", output, re.M)
    }


def proxy_fetch(requests_by_name: dict[str, str]) -> str:
    """A command that asks the sandbox's proxy for each URL (or ``connect:host:port``)."""
    items = [f"{name}={target}" for name, target in requests_by_name.items()]
    return f"python3 -c {shlex.quote(_PROXY_FETCH)} " + " ".join(map(shlex.quote, items))


def fetch_answers(output: str) -> dict[str, str]:
    return {match[1]: match[2] for match in re.finditer(r"^FETCH (\S+) (.*)$", output, re.M)}


def fetch_reached(answer: str | None) -> bool:
    """Whether the proxy answered with success (a 200, or an established tunnel)."""
    return bool(answer and re.match(r"STATUS (200\b|HTTP/\S+ 200\b)", answer))


def interfaces_command() -> str:
    """Prints the sandbox's network interfaces (from /proc, which both sandboxes have)."""
    return (
        "echo \"INTERFACES $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')\""
    )


def interfaces_in(output: str) -> set[str]:
    match = re.search(r"^INTERFACES (.*)$", output, re.M)
    assert match, f"the sandbox did not list its interfaces:\n{output[-2000:]}"
    return set(match[1].split())


# --- The host, seen from outside -------------------------------------------------


def host_addresses() -> list[str]:
    """The host's own global addresses (not loopback, not link-local), from ``ip``."""
    listing = subprocess.run(
        ["ip", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[3].split("/")[0] for line in listing.splitlines()]


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ConnectionRecorder:
    """A TCP listener on every host address (IPv4 and IPv6) recording each connection it accepts."""

    def __init__(self) -> None:
        self.server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
        self.port = self.server.getsockname()[1]
        self.accepted: list[object] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            while True:
                connection, peer = self.server.accept()
                self.accepted.append(peer)
                connection.close()
        except OSError:
            return

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def host_listener():
    recorder = ConnectionRecorder()
    yield recorder
    recorder.close()


class HealthWatch:
    """Asks the live hub for ``GET /api/v1/health`` over real HTTP until stopped; keeps answers."""

    def __init__(self, base_url: str) -> None:
        self.url = f"{base_url}/api/v1/health"
        self.answers: list[object] = []
        # Seconds each answer took: printed as a figure when the watch ends
        # (the "within 1 s" is a benchmark's bound, not an assertion).
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    started = time.monotonic()
                    self.answers.append(session.get(self.url, timeout=30).status_code)
                    self.latencies.append(time.monotonic() - started)
                except requests.RequestException as error:
                    self.answers.append(repr(error))
                self._stop.wait(0.25)

    def __enter__(self) -> "HealthWatch":
        # The live server's first request loads the URLconf and the API: that
        # is the test process warming up, not the hub under attack.
        requests.get(self.url, timeout=30)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if self.latencies:
            print(
                f"health during the attack: {len(self.latencies)} answers, "
                f"slowest {max(self.latencies) * 1000:.0f} ms"
            )

    def always_healthy(self) -> bool:
        return bool(self.answers) and all(answer == 200 for answer in self.answers)


@pytest.fixture
def health_watch(live_server):
    """Starts a HealthWatch on the hub's live HTTP server: ``with health_watch() as watch``."""
    return lambda: HealthWatch(live_server.url)


def worker_setting(cluster, name: str) -> str | None:
    """A setting in the worker cluster's environment (what its agents run under)."""
    environ = Path(f"/proc/{cluster.pid}/environ").read_bytes().split(b"\0")
    prefix = f"{name}=".encode()
    for item in environ:
        if item.startswith(prefix):
            return item[len(prefix) :].decode()
    return None


def sandbox_processes(*markers: str) -> list[int]:
    """Live processes of the sandbox user whose cgroup, environment or command names a marker."""
    uid = str(settings.FLOTILLA_SANDBOX_UID)
    wanted = [marker.encode() for marker in markers if marker]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            blob = b"\0".join(
                (entry / name).read_bytes() for name in ("cgroup", "environ", "cmdline")
            )
        except OSError:
            continue
        uids = re.search(r"^Uid:\s+(\d+)", status, re.M)
        zombie = re.search(r"^State:\s+Z", status, re.M)
        if uids and uids[1] == uid and not zombie and any(marker in blob for marker in wanted):
            found.append(int(entry.name))
    return found


def cgroup_dirs_naming(marker: str, depth: int = 4) -> list[Path]:
    """Cgroup directories (any controller, a few levels down) whose name contains ``marker``."""
    root = Path(settings.FLOTILLA_CGROUP_ROOT)
    found = []
    for controller in root.iterdir():
        base = len(controller.parts)
        for directory, children, _ in os.walk(controller):
            if len(Path(directory).parts) - base >= depth:
                children.clear()
            found += [Path(directory) / child for child in children if marker in child]
    return found


def containers_of(agent_id: str) -> list[str]:
    """Full ids of the containers (running or not) labelled with, or named after, the agent."""
    ids: set[str] = set()
    for selector in (f"label=flotilla.agent_id={agent_id}", f"name={agent_id}"):
        listing = subprocess.run(
            ["docker", "ps", "-a", "-q", "--no-trunc", "--filter", selector],
            capture_output=True,
            text=True,
            check=True,
        )
        ids |= set(listing.stdout.split())
    return sorted(ids)
