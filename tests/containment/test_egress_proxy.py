"""The egress proxy: what a sandbox reaches through its Unix socket, and what it never reaches.

Every test talks to a real proxy listener over its real Unix socket, as the
sandbox's bridge does, and reaches real HTTP servers on 127.0.0.1. Loopback
is refused unless the operator's list names it as ``host:port``, so the
tests name their local servers that way.
"""

import contextlib
import http.client
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agents.egress.policy import Allowlist, EgressPolicy, allowlist_parse
from agents.egress.service import egress_close, egress_open
from tests.conftest import ROOT


class OriginServer:
    """A local HTTP/1.1 server that answers with its name and remembers what it was asked."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[dict] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._answer(origin.name.encode())

            def do_POST(self) -> None:
                if self.headers.get("Transfer-Encoding") == "chunked":
                    self._answer(self._read_chunks())
                    return
                length = int(self.headers.get("Content-Length") or 0)
                self._answer(self.rfile.read(length))

            def _read_chunks(self) -> bytes:
                body = b""
                while size := int(self.rfile.readline().strip(), 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return body

            def _answer(self, body: bytes) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                origin.requests.append({"line": self.requestline, "headers": headers})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    server = OriginServer("origin")
    yield server
    server.close()


@pytest.fixture
def other_origin() -> Iterator[OriginServer]:
    server = OriginServer("other")
    yield server
    server.close()


@dataclass
class AgentProxy:
    """One agent's listener: its socket, and the connection events the proxy reported."""

    agent_id: str
    socket_path: Path
    events: list[dict] = field(default_factory=list)

    def close(self) -> list[dict]:
        """Close the listener; every event has been delivered when this returns."""
        egress_close(agent_id=self.agent_id)
        return self.events

    def connections(self) -> list[dict]:
        return [event for event in self.events if event["event"] == "connection"]


@pytest.fixture
def open_proxy(settings) -> Iterator:
    # A Unix socket path must stay under 108 bytes, which pytest's tmp_path may not.
    directory = Path(tempfile.mkdtemp(prefix="egress-"))
    opened: list[AgentProxy] = []

    def open_(*, allowlist=(), mode="allowlist", allow_hosts=()) -> AgentProxy:
        settings.FLOTILLA_EGRESS_ALLOWLIST = tuple(allowlist)
        proxy = AgentProxy(str(uuid.uuid4()), directory / f"{len(opened)}.sock")
        egress_open(
            agent_id=proxy.agent_id,
            mode=mode,
            allow_hosts=allow_hosts,
            socket_path=proxy.socket_path,
            on_connection=proxy.events.append,
        )
        opened.append(proxy)
        return proxy

    yield open_
    for proxy in opened:
        egress_close(agent_id=proxy.agent_id)
    shutil.rmtree(directory, ignore_errors=True)


class ProxiedConnection(http.client.HTTPConnection):
    """http.client speaking to the egress proxy over its Unix socket, as the sandbox bridge does."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__("egress-proxy", timeout=30)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.socket_path))
        if self._tunnel_host:
            self._tunnel()


def unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(path))
    return sock


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the proxy sends until it closes (a reset counts as a close)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(path: Path, request: bytes) -> bytes:
    with unix_socket(path) as sock:
        # The proxy may close before it has read everything (a huge head).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        return read_to_close(sock)


def tunnel(path: Path, target: str) -> tuple[bytes, socket.socket]:
    """Ask for a CONNECT tunnel; returns the proxy's answer head and the socket."""
    sock = unix_socket(path)
    # A proxy at its connection limit answers 429 before the request arrives.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return head, sock


def get_through(path: Path, url: str) -> tuple[int, bytes]:
    connection = ProxiedConnection(path)
    connection.request("GET", url)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body


# --- reaching what the operator allows ---------------------------------------


def test_an_allowlisted_server_is_reached_through_a_connect_tunnel(open_proxy, origin):
    proxy = open_proxy(allowlist=[origin.address])

    connection = ProxiedConnection(proxy.socket_path)
    connection.set_tunnel("127.0.0.1", origin.port)
    connection.request("GET", "/through-the-tunnel")
    response = connection.getresponse()

    assert (response.status, response.read()) == (200, b"origin")
    connection.close()
    [event] = proxy.close()
    assert event["event"] == "connection" and event["allowed"] is True
    assert (event["host"], event["address"]) == ("127.0.0.1", "127.0.0.1")
    assert event["port"] == origin.port
    assert event["bytes_up"] > 0 and event["bytes_down"] > 0


def test_a_large_body_goes_both_ways_through_a_tunnel(open_proxy, origin):
    proxy = open_proxy(allowlist=[origin.address])
    body = bytes(range(256)) * 20_000

    connection = ProxiedConnection(proxy.socket_path)
    connection.set_tunnel("127.0.0.1", origin.port)
    connection.request("POST", "/echo", body=body)
    response = connection.getresponse()

    assert response.read() == body
    connection.close()
    [event] = proxy.close()
    assert event["bytes_up"] > len(body) and event["bytes_down"] > len(body)


def test_an_allowlisted_server_is_reached_by_a_plain_absolute_form_get(open_proxy, origin):
    proxy = open_proxy(allowlist=[origin.address])

    status, body = get_through(proxy.socket_path, f"{origin.url}/page?x=1")

    assert (status, body) == (200, b"origin")
    [asked] = origin.requests
    assert asked["line"] == "GET /page?x=1 HTTP/1.1"
    assert asked["headers"]["host"] == origin.address
    assert not any(name.startswith("proxy-") for name in asked["headers"])


def test_a_request_body_is_forwarded_to_the_origin(open_proxy, origin):
    proxy = open_proxy(allowlist=[origin.address])

    connection = ProxiedConnection(proxy.socket_path)
    connection.request("POST", f"{origin.url}/echo", body=b"x" * 300_000)
    response = connection.getresponse()

    assert (response.status, response.read()) == (200, b"x" * 300_000)
    connection.close()


def test_a_chunked_request_body_is_forwarded_to_the_origin(open_proxy, origin):
    proxy = open_proxy(allowlist=[origin.address])
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    head = (
        f"POST {origin.url}/echo HTTP/1.1\r\nHost: {origin.address}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()

    answer = exchange(proxy.socket_path, head + body)

    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"hello world")


def test_the_agents_allow_hosts_narrow_the_operators_list(open_proxy, origin, other_origin):
    proxy = open_proxy(
        allowlist=[origin.address, other_origin.address], allow_hosts=[origin.address]
    )

    assert get_through(proxy.socket_path, f"{origin.url}/") == (200, b"origin")
    status, body = get_through(proxy.socket_path, f"{other_origin.url}/")

    assert status == 403 and other_origin.address.encode() in body
    assert other_origin.requests == []


def test_the_proxy_resolves_names_itself(open_proxy, origin, other_origin):
    proxy = open_proxy(allowlist=[f"localhost:{origin.port}"])

    head, sock = tunnel(proxy.socket_path, f"localhost:{origin.port}")
    sock.close()
    refused, sock = tunnel(proxy.socket_path, f"localhost:{other_origin.port}")
    sock.close()

    assert head.startswith(b"HTTP/1.1 200")
    assert refused.startswith(b"HTTP/1.1 403")
    allowed, denied = sorted(proxy.close(), key=lambda event: not event["allowed"])
    assert allowed["host"] == "localhost" and allowed["address"] in ("127.0.0.1", "::1")
    assert (denied["host"], denied["port"], denied["allowed"]) == (
        "localhost",
        other_origin.port,
        False,
    )


# --- refusing everything else -------------------------------------------------


def test_a_host_that_is_not_listed_is_refused_with_403_and_a_refused_event(
    open_proxy, origin, other_origin
):
    proxy = open_proxy(allowlist=[origin.address])

    head, sock = tunnel(proxy.socket_path, other_origin.address)
    answer = head + read_to_close(sock)
    sock.close()

    assert answer.startswith(b"HTTP/1.1 403")
    assert other_origin.address.encode() in answer.split(b"\r\n\r\n", 1)[1]
    [event] = proxy.close()
    assert event["allowed"] is False and event["port"] == other_origin.port
    assert other_origin.address in event["reason"]
    assert other_origin.requests == []


def test_network_off_refuses_every_connection(open_proxy, origin):
    proxy = open_proxy(allowlist=[origin.address], mode="off")

    status, body = get_through(proxy.socket_path, f"{origin.url}/")

    assert status == 403 and b"network is off" in body
    assert origin.requests == []


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1",
        "127.1.2.3",
        "[::1]",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "[fe80::1]",
        "[fc00::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:169.254.169.254]",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
    ],
)
def test_host_and_private_addresses_are_refused_even_with_network_on(open_proxy, target):
    proxy = open_proxy(allowlist=[], mode="on")

    head, sock = tunnel(proxy.socket_path, f"{target}:80")
    body = read_to_close(sock)
    sock.close()

    assert head.startswith(b"HTTP/1.1 403"), head
    assert b"not a public address" in body
    [event] = proxy.close()
    assert event["allowed"] is False


def test_a_name_that_does_not_resolve_gets_502(open_proxy):
    proxy = open_proxy(allowlist=[], mode="on")

    head, sock = tunnel(proxy.socket_path, "nothing.invalid:443")
    body = read_to_close(sock)
    sock.close()

    assert head.startswith(b"HTTP/1.1 502") and b"nothing.invalid" in body
    [event] = proxy.close()
    assert event["allowed"] is False and event["address"] is None


def test_a_name_for_a_host_address_is_refused_with_network_on(open_proxy, origin):
    proxy = open_proxy(allowlist=[], mode="on")

    status, body = get_through(proxy.socket_path, f"http://localhost:{origin.port}/")

    assert status == 403 and b"not a public address" in body
    assert origin.requests == []


def test_a_host_address_named_as_host_port_by_the_operator_is_reached_with_network_on(
    open_proxy, origin
):
    proxy = open_proxy(allowlist=[origin.address], mode="on")

    assert get_through(proxy.socket_path, f"{origin.url}/") == (200, b"origin")


def test_a_host_entry_without_a_port_opens_no_tunnel_to_an_odd_port(open_proxy, origin):
    proxy = open_proxy(allowlist=["127.0.0.1", "example.org"])

    for target in (origin.address, "example.org:8443", "example.org:22"):
        head, sock = tunnel(proxy.socket_path, target)
        sock.close()
        assert head.startswith(b"HTTP/1.1 403"), target
    assert origin.requests == []


def test_a_host_entry_without_a_port_never_reaches_a_host_address(open_proxy):
    """A listed name that resolves to loopback is refused: only ``host:port`` opens the host."""
    proxy = open_proxy(allowlist=["localhost"])

    head, sock = tunnel(proxy.socket_path, "localhost:443")
    body = read_to_close(sock)
    sock.close()

    assert head.startswith(b"HTTP/1.1 403") and b"not a public address" in body


def test_an_https_url_without_connect_is_refused(open_proxy, origin):
    proxy = open_proxy(allowlist=[origin.address])

    answer = exchange(
        proxy.socket_path, f"GET https://{origin.address}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )

    assert answer.startswith(b"HTTP/1.1 400")
    assert origin.requests == []


def test_an_origin_form_request_to_the_proxy_is_refused(open_proxy, origin):
    proxy = open_proxy(allowlist=[origin.address])

    answer = exchange(
        proxy.socket_path, f"GET / HTTP/1.1\r\nHost: {origin.address}\r\n\r\n".encode()
    )

    assert answer.startswith(b"HTTP/1.1 400")
    assert origin.requests == []


# --- a hostile client ---------------------------------------------------------


def test_a_slowloris_client_is_cut_off_while_another_client_is_served(open_proxy, origin, settings):
    settings.FLOTILLA_EGRESS_HEAD_TIMEOUT_S = 1.0
    proxy = open_proxy(allowlist=[origin.address])
    head = f"GET {origin.url}/ HTTP/1.1\r\nHost: {origin.address}\r\nX-Pad: {'a' * 5000}\r\n\r\n"
    slow = unix_socket(proxy.socket_path)
    sent = 0

    def trickle() -> None:
        nonlocal sent
        for character in head:
            try:
                slow.send(character.encode())
            except OSError:
                return
            sent += 1
            time.sleep(0.05)

    trickler = threading.Thread(target=trickle)
    trickler.start()
    served = get_through(proxy.socket_path, f"{origin.url}/")
    trickler.join()
    answer = read_to_close(slow)
    slow.close()

    assert served == (200, b"origin")
    assert sent < len(head)
    assert answer.startswith(b"HTTP/1.1 408")
    assert len(origin.requests) == 1


def test_a_100_kb_header_gets_431_and_a_closed_connection(open_proxy, origin):
    proxy = open_proxy(allowlist=[origin.address])
    huge = f"GET {origin.url}/ HTTP/1.1\r\nHost: {origin.address}\r\nX-Big: {'b' * 100_000}\r\n\r\n"

    answer = exchange(proxy.socket_path, huge.encode())

    assert answer.startswith(b"HTTP/1.1 431")
    assert origin.requests == []


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"CONNECT \r\nHost: x\r\n\r\n",
        b"CONNECT example.org HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT example.org:99999 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT user@example.org:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT /etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://exa mple.org/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://user:pw@example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n",
        b"GET http://example.org:http/ HTTP/1.1\r\nHost: example.org\r\n\r\n",
        b"GET ftp://example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n",
        "GET http://bücher.example/ HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        b"GET http://example.org/ HTTP/1.1\r\n\r\n",
    ],
)
def test_garbage_gets_an_error_and_the_proxy_keeps_serving(open_proxy, origin, garbage):
    proxy = open_proxy(allowlist=[origin.address, "example.org"])

    answer = exchange(proxy.socket_path, garbage)

    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert get_through(proxy.socket_path, f"{origin.url}/") == (200, b"origin")


def test_connections_of_one_agent_are_bounded(open_proxy, origin, settings):
    settings.FLOTILLA_EGRESS_MAX_CONNECTIONS = 2
    proxy = open_proxy(allowlist=[origin.address])

    held = [tunnel(proxy.socket_path, origin.address) for _ in range(2)]
    third, sock = tunnel(proxy.socket_path, origin.address)
    sock.close()

    assert all(head.startswith(b"HTTP/1.1 200") for head, _ in held)
    assert third.startswith(b"HTTP/1.1 429")
    for _, held_sock in held:
        held_sock.close()


def test_an_idle_tunnel_is_closed(open_proxy, origin, settings):
    settings.FLOTILLA_EGRESS_IDLE_TIMEOUT_S = 0.5
    proxy = open_proxy(allowlist=[origin.address])

    head, sock = tunnel(proxy.socket_path, origin.address)
    rest = read_to_close(sock)
    sock.close()

    assert head.startswith(b"HTTP/1.1 200") and rest == b""
    [event] = proxy.close()
    assert event["allowed"] is True and event["end"] == "idle"


def test_egress_close_cuts_an_open_tunnel(open_proxy, origin):
    proxy = open_proxy(allowlist=[origin.address])
    head, sock = tunnel(proxy.socket_path, origin.address)
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {origin.address}\r\n\r\n".encode())
    answered = b""
    while not answered.endswith(b"origin"):
        answered += sock.recv(65536)

    events = proxy.close()
    rest = read_to_close(sock)
    sock.close()

    assert head.startswith(b"HTTP/1.1 200") and rest == b""
    assert [event["end"] for event in events] == ["closed by the hub"]
    assert not proxy.socket_path.exists()
    with pytest.raises(OSError):
        unix_socket(proxy.socket_path)


def test_events_of_one_agent_are_bounded_and_the_rest_counted(open_proxy, origin, settings):
    settings.FLOTILLA_EGRESS_MAX_EVENTS = 3
    proxy = open_proxy(allowlist=[origin.address])

    for _ in range(5):
        exchange(proxy.socket_path, b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\n")
    events = proxy.close()

    assert [event["event"] for event in events] == [
        "connection",
        "connection",
        "connection",
        "limit",
        "summary",
    ]
    assert "counted, not listed" in events[3]["message"]
    assert events[4]["connections"] == 5 and events[4]["unlisted"] == 2
    assert events[4]["refused"] == 5


def test_the_sandbox_user_may_connect_to_the_socket(open_proxy, origin, settings):
    proxy = open_proxy(allowlist=[origin.address])
    # Only the socket's own permissions count: a sandbox gets it bound in.
    proxy.socket_path.parent.chmod(0o755)
    code = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "s.sendall(sys.argv[2].encode()); print(s.recv(100).decode().splitlines()[0])"
    )
    request = f"GET {origin.url}/ HTTP/1.1\r\nHost: {origin.address}\r\n\r\n"

    result = subprocess.run(
        # The system Python: the venv lives where the sandbox user may not look.
        ["/usr/bin/python3", "-c", code, str(proxy.socket_path), request],
        user=settings.FLOTILLA_SANDBOX_UID,
        capture_output=True,
        text=True,
    )

    assert result.stdout.strip() == "HTTP/1.1 200 OK", result.stderr


# --- the policy and the operator's list ---------------------------------------


def test_an_address_of_the_hosts_own_interfaces_is_refused_even_when_public():
    policy = EgressPolicy(mode="on", operator=Allowlist.parse([]), agent=None)
    public = ["93.184.215.14"]

    assert policy.refuse_addresses("example.org", 443, public, own=frozenset()) is None
    assert "this host" in policy.refuse_addresses(
        "example.org", 443, public, own=frozenset({ipaddress.ip_address(public[0])})
    )


def test_a_name_with_any_host_address_among_its_addresses_is_refused():
    policy = EgressPolicy(mode="on", operator=Allowlist.parse([]), agent=None)

    reason = policy.refuse_addresses(
        "rebind.example", 443, ["93.184.215.14", "127.0.0.1"], own=frozenset()
    )

    assert reason is not None and "127.0.0.1" in reason


@pytest.mark.parametrize(
    "entry",
    [
        "bad host",
        "http://pypi.org",
        "pypi.org:",
        ":443",
        "pypi.org:0",
        "pypi.org:99999",
        "pypi.org:https",
        "[::1",
        "::1",
        "a..b",
        "-a.example",
        "pypi.org/simple",
        "*.pypi.org",
        "x" * 300,
    ],
)
def test_a_malformed_allowlist_entry_is_refused(entry):
    with pytest.raises(ValueError, match="host or host:port"):
        allowlist_parse(f"pypi.org,{entry}")


def test_allowlist_entries_are_host_or_host_port():
    assert allowlist_parse(" PyPI.org , localhost:8080,[::1]:5432, 10.0.0.1 ") == (
        "pypi.org",
        "localhost:8080",
        "[::1]:5432",
        "10.0.0.1",
    )
    listed = Allowlist.parse(["pypi.org", "localhost:8080"])
    assert listed.permits("pypi.org", 443) and listed.permits("pypi.org", 80)
    assert not listed.permits("pypi.org", 8443)
    assert listed.permits("localhost", 8080) and not listed.permits("localhost", 443)
    assert listed.covers("pypi.org:443") and listed.covers("pypi.org")
    assert not listed.covers("localhost")


def settings_in_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = (
        "import json; from orchestrator_site import settings_test as settings; "
        "print(json.dumps(list(settings.FLOTILLA_EGRESS_ALLOWLIST)))"
    )
    base = {key: value for key, value in os.environ.items() if "EGRESS" not in key}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings_test", **env},
        capture_output=True,
        text=True,
    )


def test_a_malformed_operator_allowlist_stops_the_hub_naming_the_variable():
    result = settings_in_subprocess({"FLOTILLA_EGRESS_ALLOWLIST": "pypi.org,not a host"})

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "FLOTILLA_EGRESS_ALLOWLIST" in result.stderr and "not a host" in result.stderr


def test_the_operator_allowlist_defaults_to_common_package_registries():
    result = settings_in_subprocess({})

    preset = json.loads(result.stdout)
    for registry in ("pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "github.com"):
        assert registry in preset
    assert settings_in_subprocess({"FLOTILLA_EGRESS_ALLOWLIST": "a.example:8080"}).stdout == (
        '["a.example:8080"]\n'
    )
