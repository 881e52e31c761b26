"""Local HTTP servers that stand in for hosts on the internet in network tests.

One is on the egress allowlist of the test worker cluster, the other is not;
both answer every GET with a body that names the server, so a test can tell
which one a sandbox reached.

They listen on 127.0.0.2, a loopback address of the host that is not the
sandbox's own: inside a sandbox 127.0.0.1 and localhost are the sandbox
itself (its clients do not send them to the proxy), so a host service that
an operator allowlists is named by another address.
"""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class HostService:
    """A threaded HTTP server on 127.0.0.2 that answers each ``GET`` with ``answer(path)``."""

    def __init__(self) -> None:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body, kind = service.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.2:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str) -> tuple[int, bytes, str]:
        """The status, body and content type for a GET of ``path``."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class NamedHttpServer(HostService):
    """Answers every ``GET`` with ``name``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.url = f"http://{self.address}/"

    def answer(self, path: str) -> tuple[int, bytes, str]:
        return 200, self.name.encode(), "text/plain"
