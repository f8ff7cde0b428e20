"""Websockets of the containers app: a container's live logs and live stats.

And the browser terminal: TerminalConsumer (exec) and AttachTerminalConsumer (attach).
"""

import asyncio
import json
import shlex
import threading
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer

from project.engine import get_engine
from runtime.errors import EngineError

from . import services, terminal

STATS_INTERVAL = 1.0
LOG_BATCH = 64 * 1024


class ContainerLogsConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/containers/<id>/logs``: the last lines, then every new one while the container runs."""

    async def connect(self):
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        self.container_id = self.scope["url_route"]["kwargs"]["container_id"]
        self.stop = threading.Event()
        await self.accept()
        self.task = asyncio.create_task(self.follow())

    async def disconnect(self, code):
        if hasattr(self, "stop"):
            self.stop.set()
        if hasattr(self, "task"):
            self.task.cancel()

    async def follow(self):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=256)

        def read():
            try:
                for stream, data, stamp in get_engine().containers.logs(self.container_id, tail=500, follow=True,
                                                                        timestamps=True):
                    if self.stop.is_set():
                        return
                    asyncio.run_coroutine_threadsafe(queue.put((stream, data, stamp)), loop).result()
            except Exception as e:  # the container went away: say so on the page
                asyncio.run_coroutine_threadsafe(queue.put(("error", str(e).encode(), "")), loop).result()
            finally:
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

        threading.Thread(target=read, daemon=True, name=f"logs-{self.container_id[:12]}").start()
        while (item := await queue.get()) is not None:
            stream, data, stamp = item
            await self.send_json({"type": "log", "stream": stream, "time": stamp,
                                  "text": data.decode("utf-8", "replace")})
        await self.send_json({"type": "log.end"})


class ContainerStatsConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/containers/<id>/stats``: Docker's stats document every second."""

    async def connect(self):
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        self.container_id = self.scope["url_route"]["kwargs"]["container_id"]
        await self.accept()
        self.task = asyncio.create_task(self.push())

    async def disconnect(self, code):
        if hasattr(self, "task"):
            self.task.cancel()

    async def push(self):
        while True:
            try:
                stats = await asyncio.to_thread(get_engine().containers.stats, self.container_id)
            except Exception as e:
                await self.send_json({"type": "stats.error", "error": str(e)})
                return
            await self.send_json({"type": "stats", "stats": stats})
            await asyncio.sleep(STATS_INTERVAL)


class TerminalConsumer(AsyncWebsocketConsumer):
    """``/ws/containers/<id>/attach`` and ``/ws/containers/<id>/exec``: a terminal in the browser.

    Binary frames both ways carry the terminal's bytes; text frames carry JSON control messages:
    ``{"type": "resize", "rows", "cols"}`` from the page, ``{"type": "session", ...}`` and
    ``{"type": "exit", "code"}`` to it. Query: ``rows``, ``cols``, ``readonly=1``; for exec also
    ``cmd``, ``user``, ``workdir`` or ``session=<exec id>`` to rejoin. Only operators and admins
    (``containers.exec_container``) get a terminal; the Origin was checked before this runs.
    """

    kind = "exec"
    # Berth's own pages get JSON control frames; Docker's attach/ws is the raw stream only.
    control_messages = True
    # The browser's size becomes the container's when it attaches; an API client says nothing of it.
    resize_on_attach = True
    # No channel layer: nothing is ever sent to a terminal through one, and its receive (a Redis
    # BZPOPMIN of 5 s under redis-py's 5 s read timeout) loses that race when the loop is busy
    # relaying output, which killed the socket with 1011 about 5 s into a big output.
    channel_layer_alias = None

    async def connect(self):
        user = self.scope["user"]
        self.session = None
        if not user.is_authenticated:
            await self.close(code=4401)
            return
        if not await database_sync_to_async(user.has_perm)("containers.exec_container"):
            await self.close(code=4403)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.query = {k: v[-1] for k, v in query.items()}
        self.readonly = self.query.get("readonly") == "1"
        self.rows, self.cols = _size(self.query)
        self.detach_armed = False
        # Flow control with our pages: at most SEND_WINDOW bytes sent and not yet acknowledged by
        # the page's terminal (it acks what xterm has rendered), so a slow browser slows the
        # session instead of piling output up in Daphne's send buffer.
        self.sent = 0
        self.acked = 0
        self.acked_event = asyncio.Event()
        await self.accept()
        try:
            self.session = await self.open_or_join()
        except EngineError as e:
            if self.control_messages:
                await self.send(text_data=json.dumps({"type": "error", "message": str(e)}))
            await self.close(code=4400)
            return
        self.queue = self.session.join(self)
        if self.control_messages:
            await self.send(text_data=json.dumps({"type": "session", "kind": self.session.kind,
                                                  "id": self.session.key}))
        if self.session.replay and self.control_messages:
            await self.send(bytes_data=bytes(self.session.replay))
        self.pump = asyncio.create_task(self.forward())

    async def dispatch(self, message):
        """As Channels', but a keystroke (``websocket.receive``) skips ``aclose_old_connections``: that
        is a hop to a worker thread per message, and receive() touches no database."""
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
            return
        await super().dispatch(message)

    async def open_or_join(self):
        container_id = self.scope["url_route"]["kwargs"]["container_id"]
        user = self.scope["user"]
        if self.kind == "attach":
            record = await asyncio.to_thread(services.engine_containers().get, container_id)
            if not record.running:
                raise EngineError(f"container {record.name} is not running")
            existing = terminal.get_session("attach", record.id)
            if existing:
                return existing
            path = await asyncio.to_thread(services.engine_containers().attach_socket_path, record.id)
            session = await terminal.open_session(
                "attach", record.id, path,
                lambda rows, cols: services.engine_containers().resize(record.id, rows, cols))
            if self.resize_on_attach:
                await asyncio.to_thread(services.engine_containers().resize, record.id, self.rows, self.cols)
            await database_sync_to_async(services.audit_terminal)(user, record.id, "attach", [])
            return session
        rejoin = self.query.get("session")
        if rejoin:
            existing = terminal.get_session("exec", rejoin)
            if existing:
                return existing
        cmd = shlex.split(self.query.get("cmd") or "") or DEFAULT_SHELL
        info = await database_sync_to_async(services.exec_session_create)(
            container_id, cmd, user=user, user_name=self.query.get("user", ""),
            workdir=self.query.get("workdir", ""), rows=self.rows, cols=self.cols)
        engine = services.engine_containers()
        exec_id = info["exec_id"]
        session = await terminal.open_session(
            "exec", exec_id, info["socket"], lambda rows, cols: engine.exec_session_resize(exec_id, rows, cols),
            on_end=services.exec_session_ended)
        await asyncio.to_thread(engine.exec_session_start, exec_id)
        return session

    async def forward(self):
        """Output of the session -> this browser; the end of the session closes the socket."""
        while True:
            data = await self.queue.get()
            if data is None:
                if self.control_messages:
                    code = await asyncio.to_thread(services.terminal_exit_code, self.session)
                    await self.send(text_data=json.dumps({"type": "exit", "code": code}))
                await self.close(code=1000)
                return
            if self.control_messages:
                while self.sent - self.acked > SEND_WINDOW:
                    self.acked_event.clear()
                    await self.acked_event.wait()
                self.sent += len(data)
            await self.send(bytes_data=data)

    async def receive(self, text_data=None, bytes_data=None):
        if self.session is None:
            return
        if text_data is not None and not self.control_messages:
            bytes_data, text_data = text_data.encode(), None
        if text_data is not None:
            try:
                message = json.loads(text_data)
            except ValueError:
                return
            if message.get("type") == "ack":
                self.acked = max(self.acked, int(message.get("bytes") or 0))
                self.acked_event.set()
                return
            if message.get("type") == "resize":
                rows, cols = _size(message)
                await asyncio.to_thread(self.session.ctl_resize, rows, cols)
            return
        if bytes_data and not self.readonly:
            if self.session.kind == "attach" and await self.detach_keys(bytes_data):
                return
            await self.session.send(bytes_data)

    async def detach_keys(self, data: bytes) -> bool:
        """ctrl-p ctrl-q detaches from an attached container (Docker's keys): close, keep it running."""
        if data == b"\x10":
            self.detach_armed = True
            return True
        if self.detach_armed:
            self.detach_armed = False
            if data == b"\x11":
                await self.send(text_data=json.dumps({"type": "detached"}))
                await self.close(code=1000)
                return True
            await self.session.send(b"\x10")
        return False

    async def disconnect(self, code):
        if getattr(self, "pump", None) is not None:
            self.pump.cancel()
        if self.session is not None:
            self.session.leave(self)


class AttachTerminalConsumer(TerminalConsumer):
    kind = "attach"


class DockerAttachWebsocketConsumer(AttachTerminalConsumer):
    """``GET /containers/{id}/attach/ws`` of the Docker API: the container's raw stream both ways
    (stdin in, stdout/stderr out), for API clients with a token (and pages of ours)."""

    control_messages = False
    resize_on_attach = False


SEND_WINDOW = 1 << 20


def _size(values) -> tuple[int, int]:
    try:
        rows, cols = int(values.get("rows", 24)), int(values.get("cols", 80))
    except (TypeError, ValueError):
        rows, cols = 24, 80
    return max(2, min(rows, 500)), max(10, min(cols, 1000))


# bash when the image has it, else sh: decided inside the container, with no extra exec.
DEFAULT_SHELL = ["/bin/sh", "-c", "if [ -x /bin/bash ]; then exec /bin/bash; else exec /bin/sh; fi"]
