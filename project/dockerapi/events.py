"""``GET /events`` (``docker events``): Berth's live events in Docker's shape, as they happen.

The stream joins the Channels ``events`` group that every state change already goes to
(project.realtime) and translates each event; ``until`` ends it, filters narrow it.
"""

import asyncio
import json
import time

from channels.layers import get_channel_layer
from django.http import StreamingHttpResponse

from .. import realtime
from .base import docker_endpoint, query_filters, query_int

CONTAINER_ACTIONS = {"running": "start", "exited": "die", "removed": "destroy", "configured": "create",
                     "created": "create", "paused": "pause", "stopping": "kill"}


def to_docker(event: dict) -> dict | None:
    """One Berth event as Docker's event message, or None when Docker has no word for it."""
    now = time.time_ns()
    kind = event.get("type", "")
    if kind == "container.state":
        action = CONTAINER_ACTIONS.get(event.get("state"))
        if action is None:
            return None
        attributes = {"name": event.get("name", "")}
        if action == "die":
            attributes["exitCode"] = str(event.get("exit_code"))
        actor = {"ID": event.get("id", ""), "Attributes": attributes}
        return {"status": action, "id": actor["ID"], "Type": "container", "Action": action, "Actor": actor,
                "scope": "local", "time": now // 1_000_000_000, "timeNano": now}
    if kind in ("image.changed", "image.removed"):
        action = "tag" if kind == "image.changed" else "delete"
        ids = [event["image"]] if "image" in event else event.get("images") or []
        image_id = ids[0] if ids else ""
        return {"status": action, "id": image_id, "Type": "image", "Action": action,
                "Actor": {"ID": image_id, "Attributes": {}}, "scope": "local",
                "time": now // 1_000_000_000, "timeNano": now}
    if kind == "network.changed":
        action = {"remove": "destroy"}.get(event.get("action"), event.get("action", ""))
        return {"Type": "network", "Action": action, "Actor": {"ID": "", "Attributes": {}}, "scope": "local",
                "time": now // 1_000_000_000, "timeNano": now}
    return None


def matches(message: dict, filters: dict) -> bool:
    """Docker's filters: type, event, container (id or name), image."""
    if "type" in filters and message["Type"] not in filters["type"]:
        return False
    if "event" in filters and message["Action"] not in filters["event"]:
        return False
    if "container" in filters:
        actor = message["Actor"]
        if not any(c in (actor["ID"], actor["ID"][:12], actor["Attributes"].get("name")) for c in filters["container"]):
            return False
    return True


@docker_endpoint("GET")
def events(request):
    """Stream events until ``until`` (a Unix time) or until the client goes away."""
    wanted = query_filters(request)
    until = query_int(request, "until")

    async def body():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(realtime.EVENTS_GROUP, channel)
        try:
            yield b""  # headers now: the CLI waits for them before it prints anything
            while until is None or time.time() < until:
                try:
                    message = await asyncio.wait_for(layer.receive(channel), 1.0)
                except asyncio.TimeoutError:
                    continue
                translated = to_docker(message.get("event", {}))
                if translated is not None and matches(translated, wanted):
                    yield (json.dumps(translated) + "\n").encode()
        finally:
            await layer.group_discard(realtime.EVENTS_GROUP, channel)

    return StreamingHttpResponse(body(), content_type="application/json")
