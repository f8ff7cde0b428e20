"""Websocket consumers of the project app: the live event stream and job logs."""

import asyncio
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import realtime
from .health import health
from .choices import TERMINAL_JOB_STATES
from .models import Job

HEALTH_INTERVAL = 5.0


class EventsConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/events``: container state changes, job progress, and the health of Berth's parts.

    Every page opens this socket; the dashboard also shows the health it pushes every few seconds.
    """

    async def connect(self):
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        await self.channel_layer.group_add(realtime.EVENTS_GROUP, self.channel_name)
        await self.accept()
        self.health_task = asyncio.create_task(self.push_health())

    async def disconnect(self, code):
        task = getattr(self, "health_task", None)
        if task is not None:
            task.cancel()
        await self.channel_layer.group_discard(realtime.EVENTS_GROUP, self.channel_name)

    async def push_health(self):
        """Send the health of Redis and the workers now and every HEALTH_INTERVAL seconds."""
        while True:
            state = await asyncio.to_thread(health)
            await self.send_json({"type": "health", "health": state})
            await asyncio.sleep(HEALTH_INTERVAL)

    async def event_message(self, message):
        """Forward an event published to the ``events`` group."""
        await self.send_json(message["event"])


class JobConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/jobs/<pk>``: the events of one job as they happen."""

    async def connect(self):
        user = self.scope["user"]
        if not user.is_authenticated:
            await self.close(code=4401)
            return
        self.job_id = int(self.scope["url_route"]["kwargs"]["pk"])
        if not await database_sync_to_async(Job.objects.filter(pk=self.job_id).exists)():
            await self.close(code=4404)
            return
        self.group = f"job_{self.job_id}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        # Replay what happened since the page was rendered (?after=<last seq it shows>).
        query = parse_qs(self.scope.get("query_string", b"").decode())
        after = int((query.get("after") or ["0"])[0] or 0)
        for event in await database_sync_to_async(self.events_after)(after):
            await self.send_json(event)

    def events_after(self, after: int) -> list[dict]:
        job = Job.objects.get(pk=self.job_id)
        events = [{"type": "job.event", "job": job.pk, "seq": e.seq, **e.data} for e in job.events.filter(seq__gt=after)]
        if job.status in TERMINAL_JOB_STATES:
            events.append({"type": "job.state", "job": job.pk, "status": job.status, "error": job.error})
        return events

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def event_message(self, message):
        event = message["event"]
        if event.get("type") == "job.events":  # a batch of the job's events (project/jobs.py): a frame each
            for item in event["events"]:
                await self.send_json(item)
        else:
            await self.send_json(event)
