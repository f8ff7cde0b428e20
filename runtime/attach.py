"""Clients of conmon's attach socket, and the debounced resize of its ``ctl`` FIFO.

conmon serves one attach socket per container (``<run_root>/s/<cuuid>/attach``) and per
interactive exec session (runtime.containers.ContainerStore.exec_session). Facts from
notes/conmon.md §5 and §6, measured on conmon 2.1.6:

- ``SOCK_SEQPACKET``; a path over 107 bytes is reached through ``/proc/self/fd/<O_PATH fd>/attach``.
- conmon -> client: each packet is one stream byte (``STDOUT`` 2, ``STDERR`` 3) and at most 8192
  bytes of output. With a TTY everything comes as ``STDOUT``.
- client -> conmon: raw stdin bytes, one packet per send; conmon reads at most 32 KiB of a packet
  and drops the rest, so ``send`` cuts the data into packets of 8 KiB.
- Every client gets every packet; any client may write. conmon writes to each client with a
  *blocking* write: a client that stops reading stalls the session's output for everyone (and,
  through the PTY or pipe, the process). Keep reading, or close.
- Closing or ``shutdown(SHUT_WR)`` (``close_stdin``) ends the client's input. With ``-i``
  (non-TTY, Docker's StdinOnce) the first such client closes the process's stdin: ``cat`` gets
  EOF; output still flows to a half-closed client until the process ends. With a TTY it
  touches nothing: the shell runs on and another client can join.
- When the process ends conmon sends what is left, then EOF (``recv`` answers None).
- conmon has no detach keys: detaching is closing the socket.

Two APIs over the same protocol: ``AttachConnection`` (blocking, for threads and tests) and
``open_attach`` -> ``AsyncAttach`` (asyncio, for the Channels consumer and the Docker API front:
``loop.sock_recv`` keeps SEQPACKET boundaries, and nothing is read ahead, so a slow consumer slows
conmon instead of growing a buffer).

Order of calls so that no output is lost (the process must not run before a client is connected):
- container: ``store.init(id)`` (runc create: conmon holds the PTY/pipes and serves the socket),
  connect to ``store.attach_socket_path(id)``, then ``store.start(id)``; then ``store.resize``.
- exec: ``store.exec_session(id, cmd, ...)`` -> {"socket", ...}, connect, then
  ``store.exec_session_start(exec_id)`` (any process may call it); ``exec_session_resize`` at any
  time, even before the start (conmon keeps the size and applies it to the new PTY).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import threading
import time

__all__ = ["STDOUT", "STDERR", "MAX_PACKET", "STDIN_CHUNK", "RESIZE_INTERVAL", "AsyncAttach",
           "AttachConnection", "docker_frame", "open_attach", "resize_ctl"]

# Stream bytes of conmon's packets (conmon never sends 1, stdin).
STDOUT = 2
STDERR = 3
# The largest packet conmon sends: the stream byte and 8192 bytes.
MAX_PACKET = 8193
# What one packet to conmon carries (conmon reads up to 32 KiB a packet; 8 KiB is safe).
STDIN_CHUNK = 8192
# The least time between two ctl writes (conmon 2.1.6 runs only the first of two queued lines, §6).
RESIZE_INTERVAL = 0.05
_SUN_PATH_MAX = 107


def _split(data: bytes):
    view = memoryview(data)
    for off in range(0, len(view), STDIN_CHUNK):
        yield view[off:off + STDIN_CHUNK]


def _parse(packet: bytes) -> tuple[int, bytes] | None:
    """(stream, data) of a packet; None for EOF (an empty read)."""
    if not packet:
        return None
    return packet[0], packet[1:]


@contextlib.contextmanager
def _address(path: str):
    """A connectable address for ``path``: itself, or ``/proc/self/fd/<O_PATH fd>/<name>`` when it
    is longer than sun_path allows (the fd stays open until the connect is done)."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


def docker_frame(stream: int, data: bytes) -> bytes:
    """Docker's multiplexed-stream frame of a non-TTY packet: stream 1 (stdout) or 2 (stderr),
    three zero bytes, a big-endian length, then the data (notes/hijack.md §1)."""
    return struct.pack(">BxxxL", 2 if stream == STDERR else 1, len(data)) + bytes(data)


class AttachConnection:
    """A blocking client of one attach socket. ``open`` connects; the process may already run
    (output written before the connect is not replayed: it is in the log, if any)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    @classmethod
    def open(cls, path: str, timeout: float | None = None) -> "AttachConnection":
        """Connect to ``path`` (FileNotFoundError/ConnectionRefusedError when nothing serves it:
        the container is not created, or has ended). ``timeout`` applies to every later call."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            with _address(path) as address:
                sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> tuple[int, bytes] | None:
        """The next packet as ``(STDOUT | STDERR, data)``; None once the process ended (or
        conmon went away). Each call reads one packet: at most 8192 bytes of data."""
        while True:
            try:
                packet = self.sock.recv(MAX_PACKET)
            except ConnectionResetError:
                return None
            result = _parse(packet)
            if result is None or result[1]:
                return result

    def send(self, data: bytes) -> None:
        """Write ``data`` to the process's stdin, in packets of at most 8 KiB. Blocks while
        conmon does not keep up. BrokenPipeError once the session is gone."""
        for chunk in _split(data):
            self.sock.sendall(chunk)

    def close_stdin(self) -> None:
        """Half-close: no more input from this client; output keeps coming until EOF."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Leave the session (the process goes on; see the module docstring for ``-i``)."""
        self.sock.close()

    def __enter__(self) -> "AttachConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncAttach:
    """The asyncio client, from ``open_attach``. One reader and one writer task may use it at
    the same time; ``recv`` and ``send`` are not for concurrent use by several tasks each."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop):
        self.sock = sock
        self.loop = loop

    def fileno(self) -> int:
        return self.sock.fileno()

    async def recv(self) -> tuple[int, bytes] | None:
        """The next packet as ``(STDOUT | STDERR, data)``; None at EOF."""
        while True:
            try:
                packet = await self.loop.sock_recv(self.sock, MAX_PACKET)
            except ConnectionResetError:
                return None
            result = _parse(packet)
            if result is None or result[1]:
                return result

    async def send(self, data: bytes) -> None:
        """Write ``data`` to stdin in packets of at most 8 KiB (a SEQPACKET send is all or
        nothing, so each ``sock_sendall`` is one packet)."""
        for chunk in _split(data):
            await self.loop.sock_sendall(self.sock, chunk)

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    async def __aenter__(self) -> "AsyncAttach":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()


async def open_attach(path: str) -> AsyncAttach:
    """Connect to the attach socket at ``path`` without blocking the loop."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        with _address(path) as address:
            await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return AsyncAttach(sock, loop)


#
# Resize
#


class _Resizer:
    """The pending size of one ctl FIFO while a write is due or being done."""

    def __init__(self, ctl: str):
        self.ctl = ctl
        self.pending: tuple[int, int] | None = None
        self.timer: threading.Timer | None = None


# Only ctl FIFOs with a write due or in progress are here (a long-lived web process sees many).
_resizers: dict[str, _Resizer] = {}
_resizers_lock = threading.Lock()


def resize_ctl(ctl: str, rows: int, cols: int) -> None:
    """Ask conmon (through its ``ctl`` FIFO) to resize the PTY to ``rows`` x ``cols``.

    conmon 2.1.6 runs the first line of a read once per line it holds (§6), so the sizes are
    debounced: one line per open/write/close, at most one write every 50 ms, and of the sizes
    asked for in between only the last is written. The first size after a quiet time is written
    before this returns; later ones by a timer thread, RESIZE_INTERVAL after the previous write.
    Writes from several processes are spaced too: under an flock of ``<ctl>.lock``, which keeps
    the CLOCK_MONOTONIC time of the last write. FileNotFoundError if the FIFO is missing;
    OSError(ENXIO) if conmon is gone (only from a write made before returning).
    """
    rows, cols = int(rows), int(cols)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"bad terminal size {rows}x{cols}")
    if not os.path.exists(ctl):
        raise FileNotFoundError(ctl)
    with _resizers_lock:
        resizer = _resizers.get(ctl)
        if resizer is not None:
            resizer.pending = (rows, cols)  # The write due (or the one after it) takes it.
            return
        resizer = _resizers[ctl] = _Resizer(ctl)
        resizer.pending = (rows, cols)
        delay = _last_write(ctl) + RESIZE_INTERVAL - time.monotonic()
        if delay > 0:
            resizer.timer = threading.Timer(min(delay, RESIZE_INTERVAL), _flush, (resizer, False))
            resizer.timer.start()
            return
    _flush(resizer, True)


def _flush(resizer: _Resizer, raise_errors: bool) -> None:
    with _resizers_lock:
        resizer.timer = None
        size, resizer.pending = resizer.pending, None
    try:
        if size is not None:
            _write_ctl(resizer.ctl, *size)
    except OSError:
        if raise_errors:
            with _resizers_lock:
                _resizers.pop(resizer.ctl, None)
            raise
    finally:
        with _resizers_lock:
            if resizer.pending is not None and _resizers.get(resizer.ctl) is resizer:
                resizer.timer = threading.Timer(RESIZE_INTERVAL, _flush, (resizer, False))
                resizer.timer.start()
            elif _resizers.get(resizer.ctl) is resizer:
                del _resizers[resizer.ctl]


def _last_write(ctl: str) -> float:
    try:
        with open(ctl + ".lock", "rb") as f:
            return float(f.read(64) or b"0")
    except (FileNotFoundError, ValueError):
        return 0.0


def _write_ctl(ctl: str, rows: int, cols: int) -> None:
    """One ``1 rows cols\\n`` line, spaced RESIZE_INTERVAL from any process's previous one."""
    lock_fd = os.open(ctl + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            last = float(os.pread(lock_fd, 64, 0) or b"0")
        except ValueError:
            last = 0.0
        wait = last + RESIZE_INTERVAL - time.monotonic()
        if 0 < wait <= RESIZE_INTERVAL:
            time.sleep(wait)
        fd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, f"1 {rows} {cols}\n".encode())
        finally:
            os.close(fd)
        stamp = repr(time.monotonic()).encode()
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, stamp, 0)
    finally:
        os.close(lock_fd)
