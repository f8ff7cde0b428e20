"""Publishing events to open pages through the Channels layer.

Groups: ``events`` (everything, for lists and the dashboard) and ``job_<pk>`` (one job's log).
Code outside consumers publishes with ``publish(group, event)`` (Channels docs, "Using Outside
Of Consumers"); inside a transaction, use ``publish_on_commit`` so nobody sees an uncommitted row.
"""

import asyncio
import logging
import os
import queue
import threading

from channels.layers import get_channel_layer
from django.db import transaction

EVENTS_GROUP = "events"

logger = logging.getLogger(__name__)


class _Publisher:
    """One thread per process with its own event loop and Redis connections sends every event.

    ``async_to_sync`` per event would build a loop and a connection pool each time (a pull sends
    several progress events a second per layer); a queue keeps them in order and off the caller's
    path. Forked processes (Celery's pool) start their own thread on first use.
    """

    def __init__(self):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.pid = None
        self.lock = threading.Lock()

    def submit(self, group: str, event: dict) -> None:
        if self.pid != os.getpid():
            with self.lock:
                if self.pid != os.getpid():
                    self.queue = queue.SimpleQueue()
                    threading.Thread(target=self.run, args=(self.queue,), daemon=True,
                                     name="berth-publisher").start()
                    self.pid = os.getpid()
        self.queue.put((group, event))

    def run(self, items: queue.SimpleQueue) -> None:
        loop = asyncio.new_event_loop()
        layer = get_channel_layer()
        while True:
            group, event = items.get()
            try:
                loop.run_until_complete(layer.group_send(group, {"type": "event.message", "event": event}))
            except Exception as e:  # Redis down or unreachable: the operation itself went through
                logger.warning("could not publish %s to %s: %s", event.get("type"), group, e)


_publisher = _Publisher()


def publish(group: str, event: dict) -> None:
    """Send ``event`` (a JSON-able dict with a "type") to every socket in ``group``, in order.

    A broken channel layer never fails the operation that publishes: the event is logged and lost,
    and the page still finds the truth in the database when it is reloaded.
    """
    if get_channel_layer() is None:
        return
    _publisher.submit(group, event)


def publish_on_commit(group: str, event: dict) -> None:
    transaction.on_commit(lambda: publish(group, event))
