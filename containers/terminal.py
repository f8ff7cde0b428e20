"""Terminal sessions in the web process: one relay per attach target, shared by every viewer.

A session is a container's TTY (attach) or an interactive exec. Its ``Session`` holds the one
connection to conmon's attach socket, the last output (replayed to a viewer who joins late or
comes back), and the viewers. It outlives its viewers by ``IDLE_TIMEOUT``: closing the tab never
ends the shell, and reopening within a few minutes rejoins the same session.

Flow control: conmon writes to its clients with blocking writes, so the relay reads only as fast
as its slowest viewer takes the output (each viewer has a bounded queue). A 100 MB flood therefore
throttles the process instead of growing memory; a viewer that stops reading for ``STALL_TIMEOUT``
is dropped so it cannot stall the others.
"""

from __future__ import annotations

import asyncio
import logging
import time

from runtime.attach import MAX_PACKET, open_attach

logger = logging.getLogger(__name__)

REPLAY_BYTES = 64 * 1024
VIEWER_QUEUE = 64
IDLE_TIMEOUT = 300.0
STALL_TIMEOUT = 30.0
# Output already waiting on the attach socket is relayed as one message of at most this many bytes
# (conmon sends 8 KiB packets: one websocket frame each cost Daphne ~150 us, a flood 12,000 frames).
BATCH_BYTES = 64 * 1024

_sessions: dict[tuple[str, str], "Session"] = {}


class Session:
    """One attach target, relayed to any number of viewers."""

    def __init__(self, kind: str, key: str, socket_path: str, ctl_resize, on_end=None):
        self.kind = kind
        self.key = key
        self.socket_path = socket_path
        self.ctl_resize = ctl_resize
        self.on_end = on_end
        self.replay = bytearray()
        self.viewers: dict[object, asyncio.Queue] = {}
        self.conn = None
        self.reader: asyncio.Task | None = None
        self.idle_since = time.monotonic()
        self.ended = False

    async def open(self) -> None:
        self.conn = await open_attach(self.socket_path)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                packet = await self.conn.recv()
                if packet is None:
                    break
                data, eof = self._ready(packet[1])
                self.replay += data
                if len(self.replay) > REPLAY_BYTES:
                    del self.replay[: len(self.replay) - REPLAY_BYTES]
                for viewer, queue in list(self.viewers.items()):
                    try:
                        queue.put_nowait(data)
                        continue
                    except asyncio.QueueFull:
                        pass
                    try:
                        await asyncio.wait_for(queue.put(data), STALL_TIMEOUT)
                    except asyncio.TimeoutError:
                        logger.warning("dropping a stalled terminal viewer of %s %s", self.kind, self.key)
                        self.viewers.pop(viewer, None)
                        await viewer.close(code=4408)
                if eof:
                    break
        except Exception:
            logger.exception("terminal relay of %s %s failed", self.kind, self.key)
        finally:
            self.ended = True
            for queue in self.viewers.values():
                queue.put_nowait(None)
            self.close()
            if self.on_end is not None:
                await self.on_end(self)

    def _ready(self, data: bytes) -> tuple[bytes, bool]:
        """``data`` and the packets conmon has already queued behind it (read without waiting), up to
        BATCH_BYTES; and whether the end was read too."""
        sock = getattr(self.conn, "sock", None)
        if sock is None:
            return data, False
        parts, size = [data], len(data)
        while size < BATCH_BYTES:
            try:
                packet = sock.recv(MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # reset: conmon is gone
                return b"".join(parts), True
            if not packet:
                return b"".join(parts), True
            if len(packet) > 1:
                parts.append(packet[1:])
                size += len(packet) - 1
        return (data if len(parts) == 1 else b"".join(parts)), False

    def join(self, viewer) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=VIEWER_QUEUE)
        self.viewers[viewer] = queue
        return queue

    def leave(self, viewer) -> None:
        self.viewers.pop(viewer, None)
        if not self.viewers:
            self.idle_since = time.monotonic()
            asyncio.get_running_loop().call_later(IDLE_TIMEOUT + 1, self._maybe_expire)

    def _maybe_expire(self) -> None:
        if not self.viewers and time.monotonic() - self.idle_since >= IDLE_TIMEOUT:
            self.close()

    async def send(self, data: bytes) -> None:
        if self.conn is not None and not self.ended:
            await self.conn.send(data)

    def close(self) -> None:
        _sessions.pop((self.kind, self.key), None)
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.reader is not None and not self.reader.done() and asyncio.current_task() is not self.reader:
            self.reader.cancel()


def get_session(kind: str, key: str) -> Session | None:
    session = _sessions.get((kind, key))
    return session if session is not None and not session.ended else None


async def open_session(kind: str, key: str, socket_path: str, ctl_resize, on_end=None) -> Session:
    session = Session(kind, key, socket_path, ctl_resize, on_end)
    await session.open()
    _sessions[(kind, key)] = session
    return session
