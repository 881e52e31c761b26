"""Fixtures of the outbound-guard tests: recording HTTP servers, the guard on, made-up names."""

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# A public address (once example.com's); nothing here connects to it.
PUBLIC_ADDRESS = "93.184.215.14"


class Recorder:
    """A real HTTP server on 127.0.0.1 that records each request and answers ``answer``."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.requests: list[dict[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                recorder.requests.append({"path": self.path, "host": self.headers["Host"]})
                body = b'{"approved": true, "gate": "qa", "message": "ok", "details": {}}'
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value.format(**recorder.__dict__))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    made: list[Recorder] = []

    def make(status: int = 200, headers: dict[str, str] | None = None) -> Recorder:
        made.append(Recorder(status, headers))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.fixture
def guarded(settings):
    """The guard as a production hub has it: no private address unless named."""
    settings.FLOTILLA_ALLOW_PRIVATE_URLS = False
    settings.FLOTILLA_PRIVATE_URL_ALLOWLIST = ()
    return settings


@pytest.fixture
def resolver(monkeypatch):
    """Addresses for made-up names: ``resolver["hooks.example.test"] = [...]``.

    Every other name is looked up for real.
    """
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        family = {True: socket.AF_INET6, False: socket.AF_INET}
        return [(family[":" in a], socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers
