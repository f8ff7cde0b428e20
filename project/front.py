"""Berth's front listener: owns the public port, splices the Docker API's hijacked streams, and
streams everything else, byte for byte, to Daphne on a unix socket.

No ASGI server can answer ``Upgrade: tcp`` (notes/hijack.md §2), so the two hijacked endpoints of
the Docker API are served here:

- ``POST [/v1.xx]/containers/{id}/attach`` (always a hijack);
- ``POST [/v1.xx]/exec/{id}/start`` with ``Upgrade: tcp`` (``exec -d`` has no Upgrade header and
  goes to Django like any other request).

The front decides nothing. Before it answers 101 it asks Django (an internal preflight request on
Daphne's socket, carrying the client's headers and the shared front secret) whether the caller may
attach, and where to: the container's (or exec session's) conmon attach socket, the tty flag and the
stdin rules. It then connects to that socket **before** the 101, sends the 101 alone, and relays:
conmon's packets -> Docker frames (raw with a TTY), client bytes -> the process's stdin, with the
stdin-EOF rules dockerd follows (notes/hijack.md §1). An attach before start (``docker run``) is
the exception: the container is still being created in runc, so the front sends the 101 first,
connects when the create is done, and holds the client's ``start`` of that container until then
(``Front.pass_gate``): the process cannot write before someone reads.

Everything else (HTTP requests with any body framing, streaming answers, websockets) is copied to a
Daphne connection pinned to the client connection; answers are relayed blindly (clients do not
pipeline). One exception: ``/_ping``, the first request of every docker command, as the first
request of a connection: Daphne's 200 to it is replayed to the same credentials for PING_TTL
seconds (``Front.ping``); it tells nothing but the API version.

Stdlib only: run it as ``python project/front.py --listen HOST:PORT --upstream SOCK``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import struct
import sys
from pathlib import Path

logger = logging.getLogger("berth.front")

MAX_HEAD = 64 * 1024
MAX_HIJACK_BODY = 64 * 1024
CHUNK = 64 * 1024
STDIN_PACKET = 8192  # conmon reads at most 32 KiB per packet and drops the rest (notes/conmon.md §5)
SECRET_HEADER = "X-Berth-Front-Secret"
PREFLIGHT_PATH = "/v1.41/_berth/hijack/preflight"
EXEC_START_PATH = "/v1.41/_berth/hijack/exec-start"
EXEC_FINISH_PATH = "/v1.41/_berth/hijack/exec-finish"
INIT_WAIT_PATH = "/v1.41/_berth/hijack/init-wait"
# How long a start waits for an attach that is still connecting (the container's runc create):
# longer than the init-wait view waits for the worker (project/nodes.py DEFAULT_TIMEOUT).
START_GATE_TIMEOUT = 130.0
UPGRADED = (b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
            b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
NOT_UPGRADED = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n"

ATTACH_RE = re.compile(r"^/(?:v\d+\.\d+/)?containers/([^/]+)/attach$")
START_RE = re.compile(r"^/(?:v\d+\.\d+/)?containers/([^/]+)/start$")
EXEC_START_RE = re.compile(r"^/(?:v\d+\.\d+/)?exec/([^/]+)/start$")
INTERNAL_RE = re.compile(r"^/(?:v\d+\.\d+/)?_berth(?:/|$)")
PING_RE = re.compile(r"^/(?:v\d+\.\d+/)?_ping$")
# Daphne's answer to a ping is replayed this long to the same credentials (Front.ping).
PING_TTL = 5.0
PING_FETCH_TIMEOUT = 30.0
# Headers the client may not set (they mean something between the front and Daphne), and the
# hop-by-hop headers that never go to the preflight.
STRIPPED = {SECRET_HEADER.lower(), "x-forwarded-for", "x-forwarded-port", "x-forwarded-proto"}
HOP = {"connection", "upgrade", "content-length", "transfer-encoding", "content-type", "keep-alive", "host"}

# Trap 2 of notes/hijack.md: asyncio holds a half-closed connection's tasks only weakly; keep
# every per-connection task here until it is done, or a live session can be garbage-collected.
TASKS: set[asyncio.Task] = set()


def frame(stream: int, data: bytes, tty: bool) -> bytes:
    """Output as the client reads it: raw with a TTY, else Docker's frame (stream 1 stdout, 2
    stderr; three zero bytes; the big-endian length)."""
    return data if tty else struct.pack(">BxxxI", stream, len(data)) + data


def _message(answer: bytes) -> str:
    """The ``message`` of a JSON error answer, else its text."""
    try:
        return str(json.loads(answer or b"{}").get("message") or "")
    except (ValueError, AttributeError):
        return answer.decode("utf-8", "replace")[:300]


def spawn(coro) -> asyncio.Task:
    task = asyncio.ensure_future(coro)
    TASKS.add(task)
    task.add_done_callback(TASKS.discard)
    return task


def load_secret(path: str | os.PathLike) -> str:
    """The secret shared by the front and Django: BERTH_FRONT_SECRET, or generated once into ``path``
    (whichever process comes first writes it; O_EXCL makes the other one read it)."""
    if value := os.environ.get("BERTH_FRONT_SECRET"):
        return value
    path = Path(path)
    for _ in range(50):
        try:
            value = path.read_text().strip()
            if value:
                return value
        except FileNotFoundError:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            value = secrets.token_urlsafe(32)
            with os.fdopen(fd, "w") as f:
                f.write(value)
            return value
        import time
        time.sleep(0.01)  # the other process has created the file and is writing it
    raise RuntimeError(f"{path} stays empty")


#
# HTTP heads
#

class Head:
    """A request head: request line and headers, kept as sent."""

    def __init__(self, raw: bytes):
        lines = raw.decode("latin-1").split("\r\n")
        self.method, self.target, self.version = lines[0].split(" ", 2)
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError(f"bad header line {line!r}")
            self.headers.append((name, value.strip()))
        self.path, _, self.query = self.target.partition("?")

    def get(self, name: str, default: str = "") -> str:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in self.get(name).split(",") if t.strip()}

    def encode(self, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"{self.method} {self.target} {self.version}"] + [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def simple_response(status: int, reason: str, body: bytes, content_type: str = "application/json",
                    extra: list[tuple[str, str]] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             "Api-Version: 1.41", "Ostype: linux", "Server: Berth (linux)", *[f"{k}: {v}" for k, v in extra]]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_response(status: int, reason: str, message: str) -> bytes:
    return simple_response(status, reason, json.dumps({"message": message}).encode() + b"\n")


async def copy_body(head: Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy a request body by its framing (Content-Length or chunked), unchanged."""
    if "chunked" in head.tokens("transfer-encoding"):
        while True:
            line = await reader.readuntil(b"\r\n")
            writer.write(line)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = await reader.readuntil(b"\r\n")
                    writer.write(trailer)
                    if trailer == b"\r\n":
                        await writer.drain()
                        return
            remaining = size + 2  # the data and its CRLF
            while remaining:
                data = await reader.read(min(remaining, CHUNK))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                writer.write(data)
                remaining -= len(data)
                await writer.drain()
    length = head.get("content-length")
    remaining = int(length) if length else 0
    while remaining:
        data = await reader.read(min(remaining, CHUNK))
        if not data:
            raise asyncio.IncompleteReadError(b"", remaining)
        writer.write(data)
        remaining -= len(data)
        await writer.drain()


async def read_body(head: Head, reader: asyncio.StreamReader, limit: int) -> bytes:
    """A small request body (a hijack's), whole."""
    class Sink:
        def __init__(self):
            self.data = bytearray()

        def write(self, b):
            self.data += b
            if len(self.data) > limit:
                raise ValueError("request body too large")

        async def drain(self):
            pass

    sink = Sink()
    await copy_body(head, reader, sink)  # type: ignore[arg-type]
    if "chunked" in head.tokens("transfer-encoding"):
        return _dechunk(bytes(sink.data))
    return bytes(sink.data)


def _dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2:end + 2 + size]
        pos = end + 2 + size + 2


#
# The conmon attach socket (SOCK_SEQPACKET), a small client of our own
#

class AttachSocket:
    """conmon's attach socket: packets of one stream byte (2 stdout, 3 stderr) + up to 8192 bytes
    out; raw stdin packets in (notes/conmon.md §5). A path beyond 107 bytes is reached through an
    O_PATH descriptor of its directory."""

    STREAMS = {2: 1, 3: 2}  # conmon's stream byte -> Docker's frame stream

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, path: str) -> "AttachSocket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        dir_fd = None
        target = path
        if len(path.encode()) > 107:
            dir_fd = os.open(os.path.dirname(path), os.O_PATH)
            target = f"/proc/self/fd/{dir_fd}/{os.path.basename(path)}"
        try:
            await asyncio.get_running_loop().sock_connect(sock, target)
        except BaseException:
            sock.close()
            raise
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        return cls(sock)

    async def recv(self) -> tuple[int, bytes] | None:
        """The next (docker stream 1|2, data), or None at the end."""
        while True:
            try:
                packet = await self.loop.sock_recv(self.sock, 8192 + 1)
            except (ConnectionResetError, OSError):
                return None
            if not packet:
                return None
            stream = self.STREAMS.get(packet[0])
            if stream is not None and len(packet) > 1:
                return stream, packet[1:]

    async def send(self, data: bytes) -> None:
        for i in range(0, len(data), STDIN_PACKET):
            await self.loop.sock_sendall(self.sock, data[i:i + STDIN_PACKET])

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


async def open_attach(path: str):
    """runtime/attach.py's client when it is there (the same protocol), else ours."""
    try:
        from runtime import attach as runtime_attach  # noqa: PLC0415
    except ImportError:
        return await AttachSocket.open(path)
    return RuntimeAttach(await runtime_attach.open_attach(path), runtime_attach.STDERR)


ATTACH_POLL = 0.0005
# An early attach asks for the worker's answer (init-wait) only when the socket is not there this
# soon: the create takes ~10 ms, and the question costs Daphne a request on the path of docker run.
INIT_WAIT_AFTER = 0.05


async def connect_when_there(path: str, waiting: asyncio.Task | None, within: float | None = None):
    """Connect to an attach socket as soon as it answers, or None once ``waiting`` is done first
    (or ``within`` seconds have passed).

    conmon binds the socket while the worker's create is still finishing; a stale socket file of
    an earlier run refuses connections until then, and a missing one is simply not there yet."""
    loop = asyncio.get_running_loop()
    deadline = None if within is None else loop.time() + within
    while waiting is None or not waiting.done():
        try:
            return await open_attach(path)
        except OSError:
            if deadline is not None and loop.time() >= deadline:
                return None
            if waiting is None:
                await asyncio.sleep(ATTACH_POLL)
            else:
                await asyncio.wait({waiting}, timeout=ATTACH_POLL)
    return None


class RuntimeAttach:
    """runtime.attach.AsyncAttach, whose ``recv`` answers conmon's stream byte, as Docker's."""

    def __init__(self, conn, stderr: int):
        self.conn, self.stderr = conn, stderr
        self.send, self.close_stdin, self.close = conn.send, conn.close_stdin, conn.close

    async def recv(self):
        item = await self.conn.recv()
        if item is None:
            return None
        return (2 if item[0] == self.stderr else 1), item[1]


#
# The server
#

class Front:
    def __init__(self, upstream: str, secret: str, auth_changed: str | None = None):
        self.upstream = upstream
        self.secret = secret
        # Replaced by Django whenever a token, a user or a group changes (project/models.py).
        self.auth_changed = auth_changed
        # Attaches still connecting, by container reference (the attach path's and the full id):
        # a start of that container waits for them, so the process's first output has a reader.
        self.gates: dict[str, list[asyncio.Event]] = {}
        # (method, target, host, authorization) -> (until when, auth_changed's stamp, Daphne's answer).
        self.pings: dict[tuple[str, str, str, str], tuple[float, tuple | None, bytes]] = {}

    def open_gate(self, refs: set[str]) -> asyncio.Event:
        """Hold starts of the container known as ``refs`` until the returned event is set."""
        event = asyncio.Event()
        for ref in refs:
            self.gates.setdefault(ref, []).append(event)
        return event

    def close_gate(self, refs: set[str], event: asyncio.Event) -> None:
        event.set()
        for ref in refs:
            waiting = self.gates.get(ref, [])
            if event in waiting:
                waiting.remove(event)
            if not waiting:
                self.gates.pop(ref, None)

    async def ping(self, head: Head, peer: str) -> bytes | None:
        """The answer to a client's ``/_ping`` (the first request of every docker command).

        Daphne answers it as it answers any request (authentication included), on a connection
        of its own; a 200 is then replayed to the same method, path, host and credentials for
        PING_TTL seconds, unless a token, user or group changed meanwhile (``auth_changed``): it
        says nothing but the API version, and docker run saves Daphne's 1.3 ms. None when there
        are no credentials or Daphne does not answer (forward it then).
        """
        auth = head.get("authorization")
        if not auth or head.get("content-length") or head.get("transfer-encoding"):
            return None
        key = (head.method, head.target, head.get("host"), auth)
        now = asyncio.get_running_loop().time()
        stamp = self._auth_stamp()
        cached = self.pings.get(key)
        if cached is not None and cached[0] > now and cached[1] == stamp:
            return cached[2]
        try:
            status, answer = await self._fetch(head, peer)
        except (OSError, ValueError, asyncio.TimeoutError):
            return None
        if status == 200:
            if len(self.pings) > 256:
                self.pings.clear()
            self.pings[key] = (now + PING_TTL, stamp, answer)
        return answer

    def _auth_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.auth_changed) if self.auth_changed else None
        except OSError:
            return None
        return st and (st.st_ino, st.st_mtime_ns)

    async def _fetch(self, head: Head, peer: str) -> tuple[int, bytes]:
        """One bodiless request to Daphne on a connection of its own, which Daphne closes after
        its answer: (status, the whole answer as sent, any body framing, without its Connection
        header). A 200 is only kept (``ping``) with a Content-Length."""
        reader, writer = await asyncio.open_unix_connection(self.upstream, limit=MAX_HEAD)
        try:
            headers = [(k, v) for k, v in head.headers
                       if k.lower() not in STRIPPED and k.lower() != "connection"]
            writer.write(head.encode(headers + [("X-Forwarded-For", peer), ("Connection", "close")]))
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(-1), PING_FETCH_TIMEOUT)
        finally:
            writer.close()
        head_part, sep, body = raw.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("no answer from Daphne")
        lines = head_part.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        kept = [line for line in lines[1:] if line.partition(":")[0].strip().lower() != "connection"]
        if status == 200 and not any(line.lower().startswith("content-length:") for line in kept):
            status = 0  # not one to replay
        return status, ("\r\n".join([lines[0], *kept]) + "\r\n\r\n").encode("latin-1") + body

    async def pass_gate(self, ref: str) -> None:
        """Wait until no attach of ``ref`` is connecting (bounded: a stuck attach does not block starts)."""
        events = list(self.gates.get(ref, ()))
        if events:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), START_GATE_TIMEOUT)

    async def internal(self, path: str, client_head: Head, payload: dict, peer: str) -> tuple[int, dict, bytes]:
        """One request to Daphne on its socket, as the front: the client's own headers (its token),
        the shared secret, a JSON body. Returns (status, headers, body)."""
        body = json.dumps(payload).encode()
        headers = [(k, v) for k, v in client_head.headers if k.lower() not in HOP and k.lower() not in STRIPPED]
        headers = [("Host", client_head.get("host", "localhost")), *headers, (SECRET_HEADER, self.secret),
                   ("X-Forwarded-For", peer), ("Content-Type", "application/json"),
                   ("Content-Length", str(len(body))), ("Connection", "close")]
        head = Head(f"POST {path} HTTP/1.1\r\n".encode())
        head.method, head.target, head.version = "POST", path, "HTTP/1.1"
        reader, writer = await asyncio.open_unix_connection(self.upstream, limit=MAX_HEAD)
        try:
            writer.write(head.encode(headers) + body)
            await writer.drain()
            raw = await reader.read()  # Connection: close: Daphne closes after its answer
        finally:
            writer.close()
        head_raw, _, rest = raw.partition(b"\r\n\r\n")
        lines = head_raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        answer_headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            answer_headers[k.strip().lower()] = v.strip()
        if "chunked" in answer_headers.get("transfer-encoding", "").lower():
            rest = _dechunk(rest)
        return status, answer_headers, rest

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = peername[0] if isinstance(peername, tuple) else "127.0.0.1"
        conn = Connection(self, reader, writer, peer, unix=not isinstance(peername, tuple))
        try:
            await conn.run()
        except Exception:
            logger.exception("connection from %s failed", peer)
        finally:
            await conn.close()


class Connection:
    """One client connection: normal requests to a pinned Daphne connection, or one hijack."""

    def __init__(self, front: Front, reader, writer, peer: str, unix: bool = False):
        self.front, self.reader, self.writer, self.peer = front, reader, writer, peer
        # Over the unix socket the CLI's Host is a made-up name (api.moby.localhost): Django's
        # ALLOWED_HOSTS would refuse it, so such requests go on as Host: localhost.
        self.unix = unix
        self.up_reader = self.up_writer = None
        self.pump: asyncio.Task | None = None

    async def close(self) -> None:
        self.drop_upstream()
        with contextlib.suppress(Exception):
            self.writer.close()
            await self.writer.wait_closed()

    def drop_upstream(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
            self.pump = None
        if self.up_writer is not None:
            self.up_writer.close()
            self.up_writer = None

    async def run(self) -> None:
        while True:
            try:
                raw = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the client closed between requests
            except asyncio.LimitOverrunError:
                self.writer.write(error_response(431, "Request Header Fields Too Large", "request head too large"))
                return
            except ConnectionError:
                return
            try:
                head = Head(raw[:-4])
            except ValueError:
                self.writer.write(error_response(400, "Bad Request", "malformed request"))
                return
            if self.unix:
                head.headers = [(k, v) for k, v in head.headers if k.lower() != "host"] + [("Host", "localhost")]
            if self.pump is not None and self.pump.done():
                return  # Daphne closed the previous answer's connection: so do we
            if INTERNAL_RE.match(head.path):
                self.writer.write(error_response(404, "Not Found", "page not found"))
                return
            if head.method == "POST" and (ATTACH_RE.match(head.path) or (
                    EXEC_START_RE.match(head.path) and "tcp" in head.tokens("upgrade"))):
                self.drop_upstream()  # a keep-alive connection may turn into a hijack (the SDK does)
                if not await Hijack(self, head).run():
                    continue  # refused with an ordinary answer: the connection lives on
                return
            if head.method in ("GET", "HEAD") and PING_RE.match(head.path) and self.up_writer is None:
                # The first request of the connection (no answer of Daphne's can be on its way).
                answer = await self.front.ping(head, self.peer)
                if answer is not None:
                    self.writer.write(answer)
                    await self.writer.drain()
                    framing = answer.partition(b"\r\n\r\n")[0].lower()
                    if b"content-length:" not in framing and b"chunked" not in framing:
                        return  # its end is the connection's (HTTP/1.0)
                    continue
            if head.method == "POST" and (match := START_RE.match(head.path)):
                await self.front.pass_gate(match[1])
            if not await self.forward(head):
                return

    async def ensure_upstream(self) -> None:
        if self.up_writer is None:
            self.up_reader, self.up_writer = await asyncio.open_unix_connection(self.front.upstream, limit=MAX_HEAD)
            self.pump = spawn(self.relay_answers(self.up_reader))

    async def relay_answers(self, up_reader: asyncio.StreamReader) -> None:
        """Daphne -> client, blindly. Daphne's EOF ends the client connection too."""
        try:
            while data := await up_reader.read(CHUNK):
                self.writer.write(data)
                await self.writer.drain()
        except asyncio.CancelledError:
            raise
        except (ConnectionError, OSError):
            pass
        with contextlib.suppress(Exception):
            self.writer.close()

    async def forward(self, head: Head) -> bool:
        """Send one request to Daphne; True while the connection goes on."""
        try:
            await self.ensure_upstream()
        except OSError as e:
            logger.warning("Daphne at %s: %s", self.front.upstream, e)
            self.writer.write(error_response(502, "Bad Gateway", f"Berth's web server does not answer: {e}"))
            return False
        headers = [(k, v) for k, v in head.headers if k.lower() not in STRIPPED]
        headers += [("X-Forwarded-For", self.peer)]
        up = self.up_writer
        up.write(head.encode(headers))
        if "websocket" in head.tokens("upgrade"):
            # A websocket (the SDK's attach_socket(ws=True), the browser's terminals): a raw
            # tunnel both ways from now on.
            await up.drain()
            await self.tunnel(up)
            return False
        try:
            await copy_body(head, self.reader, up)
        except (asyncio.IncompleteReadError, ValueError, ConnectionError):
            return False
        await up.drain()
        return True

    async def tunnel(self, up: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await self.reader.read(CHUNK):
                up.write(data)
                await up.drain()
        with contextlib.suppress(Exception):
            up.write_eof()
        if self.pump is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.pump


class Hijack:
    """One attach or attached exec start: preflight, connect, 101, relay, record the exit."""

    def __init__(self, conn: Connection, head: Head):
        self.conn, self.head = conn, head
        self.reader, self.writer = conn.reader, conn.writer
        self.started = asyncio.Event()
        self.done = asyncio.Event()

    async def refuse(self, status: int, headers: dict, body: bytes) -> None:
        reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                  409: "Conflict", 500: "Internal Server Error", 501: "Not Implemented"}.get(status, "Error")
        self.writer.write(simple_response(status, reason, body, headers.get("content-type", "application/json")))
        await self.writer.drain()

    async def run(self) -> bool:
        """False when refused with an ordinary answer (the connection may go on)."""
        front = self.conn.front
        try:
            body = await read_body(self.head, self.reader, MAX_HIJACK_BODY)
        except (ValueError, asyncio.IncompleteReadError):
            self.writer.write(error_response(400, "Bad Request", "bad request body"))
            return True
        payload = {"method": self.head.method, "path": self.head.path, "query": self.head.query,
                   "body": body.decode("utf-8", "replace")}
        try:
            status, headers, answer = await front.internal(PREFLIGHT_PATH, self.head, payload, self.conn.peer)
        except (OSError, ValueError, IndexError) as e:
            logger.warning("preflight failed: %s", e)
            self.writer.write(error_response(503, "Service Unavailable", f"Berth's web server did not answer: {e}"))
            return True
        if status != 200:
            await self.refuse(status, headers, answer)
            return False
        plan = json.loads(answer)
        if plan.get("init_task"):
            return await self.run_early(plan)
        try:
            attach = await open_attach(plan["socket"])
        except OSError as e:
            logger.warning("attach to %s failed: %s", plan["socket"], e)
            if plan.get("exec_id"):
                await self.finish_exec(plan, failed=f"cannot attach: {e}")
            self.writer.write(error_response(500, "Internal Server Error", f"cannot attach: {e}"))
            return True
        try:
            await self.relay(plan, attach)
        finally:
            attach.close()
        return True

    async def run_early(self, plan: dict) -> bool:
        """An attach before start (``docker run``, ``start -a``): the container is being created in
        runc (the preflight queued it). Answer 101 now, so the client goes on with its wait and
        start, and hold any start of this container until the attach socket is connected: the
        create overlaps the client's next requests, and no output is lost.

        The socket is connected as soon as conmon serves it, without waiting for the worker's
        answer to travel back (init-wait): that answer is asked for only when the socket is not
        there within ``INIT_WAIT_AFTER``, and decides when it never comes."""
        front = self.conn.front
        ref = ATTACH_RE.match(self.head.path)[1]
        refs = {ref, plan["container_id"]} | ({plan["name"]} if plan.get("name") else set())
        gate = front.open_gate(refs)
        waiting = None
        try:
            await self.upgrade()
            attach = None
            if plan.get("fresh"):
                attach = await connect_when_there(plan["socket"], None, INIT_WAIT_AFTER)
            if attach is None:
                waiting = spawn(front.internal(INIT_WAIT_PATH, self.head, {"task": plan["init_task"]},
                                               self.conn.peer))
                attach = await connect_when_there(plan["socket"], waiting) if plan.get("fresh") else None
            if attach is None:
                await asyncio.wait({waiting})
                if not await self.init_succeeded(plan, waiting):
                    return True
                try:
                    attach = await open_attach(plan["socket"])
                except OSError as e:
                    logger.warning("attach to %s failed: %s", plan["socket"], e)
                    return True
        finally:
            front.close_gate(refs, gate)
            if waiting is not None:
                waiting.cancel()  # answered, or no longer needed: conmon serves the socket
        try:
            await self.relay(plan, attach, upgraded=True)
        finally:
            attach.close()
        return True

    async def init_succeeded(self, plan: dict, waiting: asyncio.Task) -> bool:
        """The worker's answer to the early create; when it failed, say so if the client would not
        hear it otherwise."""
        try:
            status, _, answer = waiting.result()
        except (OSError, ValueError, IndexError) as e:
            status, answer = 503, json.dumps({"message": str(e)}).encode()
        if status == 200:
            return True
        if status == 409:
            # The create failed: the client's start (let through now) tries again and reports
            # the error the way Docker does, on the start; this stream just ends.
            logger.info("attach to %s: create failed: %s", plan["container_id"][:12], answer[:300])
            return False
        # Not the engine's answer (Daphne, Redis or the worker did not answer): say so on the
        # stream, as stderr, since its output would be lost.
        logger.warning("attach to %s: init-wait answered %s: %s", plan["container_id"][:12], status, answer[:300])
        message = (f"Berth could not attach: {_message(answer) or f'status {status}'}\r\n").encode()
        with contextlib.suppress(Exception):
            self.writer.write(frame(2, message, bool(plan.get("tty"))))
            await self.writer.drain()
        return False

    async def upgrade(self) -> None:
        self.writer.write(UPGRADED if "tcp" in self.head.tokens("upgrade") else NOT_UPGRADED)
        await self.writer.drain()  # the 101 goes alone (notes/hijack.md pitfall 5)

    async def relay(self, plan: dict, attach, upgraded: bool = False) -> None:
        front = self.conn.front
        upgrade = "tcp" in self.head.tokens("upgrade")
        if not upgraded:
            await self.upgrade()
        tty, stdin = bool(plan.get("tty")), bool(plan.get("stdin"))
        out = spawn(self.output(attach, tty))
        inp = spawn(self.input(attach, plan, stdin, tty))
        if plan.get("exec_id"):
            status, _, answer = await front.internal(EXEC_START_PATH, self.head, {"exec_id": plan["exec_id"]},
                                                     self.conn.peer)
            if status != 200:
                message = ((_message(answer) or "exec failed") + "\r\n").encode()
                with contextlib.suppress(Exception):
                    self.writer.write(frame(2, message, tty))
                out.cancel()
        self.started.set()
        ended = spawn(self.done.wait())
        await asyncio.wait({out, ended}, return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        # The session ends: either the process's output ended, or the client's stdin did (TTY,
        # or a container kept open -di): drain what is already read, record the exit, close.
        if plan.get("exec_id") and out.done():
            await self.finish_exec(plan)
        for task in (out, inp):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(out, inp, return_exceptions=True)
        if upgrade:
            with contextlib.suppress(Exception):
                await self.writer.drain()

    async def finish_exec(self, plan: dict, failed: str = "") -> None:
        """Wait until the exec's exit code is recorded: the CLI reads it once, right after the stream."""
        with contextlib.suppress(Exception):
            await self.conn.front.internal(EXEC_FINISH_PATH, self.head, {"exec_id": plan["exec_id"], "error": failed},
                                           self.conn.peer)

    async def output(self, attach, tty: bool) -> None:
        """Container -> client. A failed write means the client is gone; a read EOF does not."""
        while (item := await attach.recv()) is not None:
            stream, data = item
            try:
                self.writer.write(frame(stream, data, tty))
                await self.writer.drain()
            except (ConnectionError, OSError):
                self.done.set()
                return

    async def input(self, attach, plan: dict, stdin: bool, tty: bool) -> None:
        """Client -> container's stdin, with dockerd's rules for the end of stdin."""
        held = plan.get("exec_id") is not None  # an exec's stdin waits for its process to start
        try:
            while data := await self.reader.read(CHUNK):
                if not stdin:
                    continue
                if held and not self.started.is_set():
                    await self.started.wait()
                await attach.send(data)
        except (ConnectionError, OSError):
            self.done.set()
            return
        # The client half-closed.
        if not stdin:
            return  # no stdin attached: the CLI always half-closes; keep streaming
        if held and not self.started.is_set():
            await self.started.wait()
        if plan.get("stdin_once") and not tty:
            attach.close_stdin()  # run -i, start -ai, exec -i: EOF to the process, output goes on
            return
        self.done.set()  # TTY sessions, containers kept open: the attach session ends here


async def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", action="append", metavar="ADDR",
                        help="HOST:PORT or unix:PATH; repeat for several (default 127.0.0.1:8000)")
    parser.add_argument("--upstream", required=True, help="Daphne's unix socket")
    parser.add_argument("--secret-file", default=str(Path(os.environ.get("BERTH_DATA_DIR", "var")) / "front_secret"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s front %(levelname)s %(message)s")
    front = Front(args.upstream, load_secret(args.secret_file),
                  auth_changed=str(Path(args.secret_file).parent / "auth_changed"))

    async def handle(reader, writer):
        await spawn(front.serve(reader, writer))  # strongly held: trap 2

    servers = []
    for address in args.listen or ["127.0.0.1:8000"]:
        if address.startswith("unix:"):
            path = address[5:]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            servers.append(await asyncio.start_unix_server(handle, path, limit=MAX_HEAD))
            os.chmod(path, 0o660)
        else:
            host, _, port = address.rpartition(":")
            servers.append(await asyncio.start_server(handle, host.strip("[]") or "127.0.0.1", int(port),
                                                      limit=MAX_HEAD, reuse_address=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logger.info("listening on %s, upstream %s", ", ".join(args.listen or ["127.0.0.1:8000"]), args.upstream)
    await stop.wait()
    for server in servers:
        server.close()


if __name__ == "__main__":
    # Run as a script (not ``-m project.front``, which would import the Celery app): the repository
    # root goes on the path for runtime/'s attach client, project/ itself does not.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))
    asyncio.run(main())
