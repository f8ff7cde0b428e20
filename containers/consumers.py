"""Websockets of the containers app: a container's live logs and live stats.

(The terminal consumers, attach and exec, come with the browser terminal.)
"""

import asyncio
import threading

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from project.engine import get_engine

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
