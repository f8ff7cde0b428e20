"""Publishing events to open pages through the Channels layer.

Groups: ``events`` (everything, for lists and the dashboard) and ``job_<pk>`` (one job's log).
Code outside consumers publishes with ``publish(group, event)`` (Channels docs, "Using Outside
Of Consumers"); inside a transaction, use ``publish_on_commit`` so nobody sees an uncommitted row.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

EVENTS_GROUP = "events"

logger = logging.getLogger(__name__)


def publish(group: str, event: dict) -> None:
    """Send ``event`` (a JSON-able dict with a "type") to every socket in ``group``.

    A broken channel layer never fails the operation that publishes: the event is logged and lost,
    and the page still finds the truth in the database when it is reloaded.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, {"type": "event.message", "event": event})
    except Exception as e:  # Redis down or unreachable: the operation itself went through
        logger.warning("could not publish %s to %s: %s", event.get("type"), group, e)


def publish_on_commit(group: str, event: dict) -> None:
    transaction.on_commit(lambda: publish(group, event))
