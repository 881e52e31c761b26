"""Moving bytes once the proxy has allowed a connection: CONNECT tunnels and plain requests.

The proxy works on plain non-blocking sockets, so that a tunnel can move its
bytes with splice(2): from one socket into a pipe and from the pipe into the
other socket, inside the kernel, never copied into Python. Where splice is
not available it falls back to copying through one buffer.

Both directions of a connection share one idle clock: it ends when neither
side has sent anything for ``idle_s``, or when a side stops reading for that
long. Nothing here decides what is allowed.
"""

import asyncio
import errno
import fcntl
import os
import socket
from contextlib import suppress
from dataclasses import dataclass

import h11

from agents.egress.events import ConnectionRecord
from agents.egress.policy import entry_format
from agents.unixserver import HOP_BY_HOP

CHUNK = 256 * 1024
# A pipe this large moves a megabyte per wake-up; the system maximum is
# /proc/sys/fs/pipe-max-size, and a smaller pipe still works.
PIPE_SIZE = 1024 * 1024
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK

# Headers that belong to the hop between the sandbox and the proxy; the Host
# header is rewritten from the request's URL.
_HOP_BY_HOP = HOP_BY_HOP | {b"host"}
# The body's framing is forwarded as it came, whatever Connection lists.
_FRAMING = {b"content-length", b"transfer-encoding"}


class Idle(Exception):
    """Neither side sent anything, or a side stopped reading, for the idle timeout."""


@dataclass
class Activity:
    idle_s: float
    last: float

    @classmethod
    def start(cls, idle_s: float) -> "Activity":
        return cls(idle_s, asyncio.get_running_loop().time())

    def touch(self) -> None:
        self.last = asyncio.get_running_loop().time()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def ready(fd: int, *, write: bool, timeout: float | None) -> None:
    """Wait until ``fd`` can be read (or written); TimeoutError after ``timeout``."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    if write:
        loop.add_writer(fd, _wake, future)
    else:
        loop.add_reader(fd, _wake, future)
    try:
        async with asyncio.timeout(timeout):
            await future
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _ready_or_idle(fd: int, *, write: bool, activity: Activity) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await ready(fd, write=write, timeout=activity.idle_s)
        except TimeoutError:
            # The other direction may be busy (a long download): only a quiet
            # connection is idle.
            if loop.time() - activity.last >= activity.idle_s:
                raise Idle from None


async def recv(sock: socket.socket, activity: Activity) -> bytes:
    """Up to CHUNK bytes (b"" at the end of the stream)."""
    while True:
        try:
            data = sock.recv(CHUNK)
        except BlockingIOError:
            await _ready_or_idle(sock.fileno(), write=False, activity=activity)
            continue
        activity.touch()
        return data


async def sendall(sock: socket.socket, data: bytes | memoryview, activity: Activity) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            await _ready_or_idle(sock.fileno(), write=True, activity=activity)


def _half_close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


async def _copy(
    src: socket.socket, dst: socket.socket, activity: Activity, count: list[int]
) -> None:
    """Relay ``src`` to ``dst`` through one buffer (where splice cannot be used)."""
    buffer = memoryview(bytearray(CHUNK))
    while True:
        try:
            received = src.recv_into(buffer)
        except BlockingIOError:
            await _ready_or_idle(src.fileno(), write=False, activity=activity)
            continue
        if not received:
            return
        activity.touch()
        count[0] += received
        await sendall(dst, buffer[:received], activity)


async def _splice(
    src: socket.socket, dst: socket.socket, activity: Activity, count: list[int]
) -> None:
    """Relay ``src`` to ``dst`` through a pipe, inside the kernel."""
    pipe_out, pipe_in = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with suppress(OSError):
            fcntl.fcntl(pipe_in, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        while True:
            try:
                moved = os.splice(src.fileno(), pipe_in, PIPE_SIZE, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                await _ready_or_idle(src.fileno(), write=False, activity=activity)
                continue
            if not moved:
                return
            activity.touch()
            count[0] += moved
            while moved:
                try:
                    moved -= os.splice(pipe_out, dst.fileno(), moved, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    await _ready_or_idle(dst.fileno(), write=True, activity=activity)
    finally:
        os.close(pipe_out)
        os.close(pipe_in)


async def pump(
    src: socket.socket, dst: socket.socket, activity: Activity, count: list[int]
) -> None:
    """Relay one direction until ``src`` ends, then end that direction of ``dst`` too."""
    try:
        await _splice(src, dst, activity, count)
    except OSError as error:
        # Kernels or socket types without splice say so before moving a byte.
        if error.errno not in (errno.EINVAL, errno.ENOSYS) or count[0]:
            raise
        await _copy(src, dst, activity, count)
    _half_close(dst)


def _widen(client: socket.socket, size: int) -> None:
    """Let the client socket hold a pipe's worth and more, so a splice rarely waits on it.

    The default Unix socket buffer (about 200 KB) takes a fraction of what one
    splice moves; the kernel caps ``size`` at net.core.wmem_max.
    """
    with suppress(OSError):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


async def _until_done(*pumps: asyncio.Task[None]) -> str:
    """How the connection ended, once every pump has finished or one has failed."""
    try:
        await asyncio.gather(*pumps)
        return "closed"
    except Idle:
        return "idle"
    except h11.RemoteProtocolError as error:
        return f"malformed request body: {error}"
    except OSError as error:
        return f"connection lost: {error.strerror or type(error).__name__}"
    finally:
        for each in pumps:
            each.cancel()
        await asyncio.wait(pumps)


async def tunnel(
    client: socket.socket,
    upstream: socket.socket,
    *,
    early: bytes,
    record: ConnectionRecord,
    idle_s: float,
    client_buffer: int,
) -> str:
    """Answer a CONNECT with 200 and relay bytes both ways until both sides are done."""
    activity = Activity.start(idle_s)
    up, down = [len(early)], [0]
    _widen(client, client_buffer)
    try:
        await sendall(client, b"HTTP/1.1 200 Connection Established\r\n\r\n", activity)
        # What the client sent right behind its CONNECT head (a TLS hello, say).
        await sendall(upstream, early, activity)
        return await _until_done(
            asyncio.create_task(pump(client, upstream, activity, up)),
            asyncio.create_task(pump(upstream, client, activity, down)),
        )
    finally:
        record.bytes_up += up[0]
        record.bytes_down += down[0]


def request_head(request: h11.Request, *, host: str, port: int, path: str) -> bytes:
    """The request in origin form for the origin server, without hop-by-hop headers.

    It keeps the client's HTTP version, so the origin frames its answer for
    that client and the answer can be relayed unchanged; ``Connection: close``
    makes the origin end the answer by closing.
    """
    named = {
        token.strip().lower()
        for name, value in request.headers
        if name == b"connection"
        for token in value.split(b",")
    } - _FRAMING
    lines = [
        b"%s %s HTTP/%s" % (request.method, path.encode("ascii"), request.http_version),
        b"host: " + entry_format(host, None if port == 80 else port).encode("ascii"),
        *(
            name + b": " + value
            for name, value in request.headers
            if name not in _HOP_BY_HOP and name not in named
        ),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _send_body(
    parser: h11.Connection,
    client: socket.socket,
    upstream: socket.socket,
    chunked: bool,
    activity: Activity,
    count: list[int],
) -> None:
    """Forward exactly one request body, framed as the client framed it; then stop reading."""

    async def send_counted(data: bytes) -> None:
        count[0] += len(data)
        await sendall(upstream, data, activity)

    while True:
        event = parser.next_event()
        if event is h11.NEED_DATA:
            parser.receive_data(await recv(client, activity))
        elif isinstance(event, h11.Data) and event.data:
            data = bytes(event.data)
            await send_counted(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        elif isinstance(event, h11.EndOfMessage):
            if chunked:
                await send_counted(b"0\r\n\r\n")
            return
        elif not isinstance(event, h11.Data):
            return


async def forward(
    request: h11.Request,
    parser: h11.Connection,
    client: socket.socket,
    upstream: socket.socket,
    *,
    host: str,
    port: int,
    path: str,
    record: ConnectionRecord,
    idle_s: float,
    client_buffer: int,
) -> str:
    """Send one plain request to the origin and relay its answer until the origin closes."""
    activity = Activity.start(idle_s)
    head = request_head(request, host=host, port=port, path=path)
    up, down = [len(head)], [0]
    _widen(client, client_buffer)
    chunked = any(name == b"transfer-encoding" for name, _ in request.headers)
    try:
        await sendall(upstream, head, activity)
        return await _until_done(
            asyncio.create_task(_send_body(parser, client, upstream, chunked, activity, up)),
            asyncio.create_task(pump(upstream, client, activity, down)),
        )
    finally:
        record.bytes_up += up[0]
        record.bytes_down += down[0]
