"""Health of Berth's parts, for the dashboard: Redis reachable, a worker answering."""

import redis
from django.conf import settings

from .celery import app


def redis_health() -> dict:
    """Ping Redis at REDIS_URL."""
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        client.ping()
        return {"ok": True, "detail": settings.REDIS_URL}
    except redis.RedisError as e:
        return {"ok": False, "detail": f"{settings.REDIS_URL}: {e}"}


def worker_health(timeout: float = 1.0) -> dict:
    """Ask the Celery workers to answer a ping; report which did."""
    try:
        replies = app.control.ping(timeout=timeout) or []
    except Exception as e:  # the broker itself is down: kombu raises many kinds
        return {"ok": False, "detail": f"no broker: {e}", "workers": []}
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return {"ok": False, "detail": "no worker answered", "workers": []}
    return {"ok": True, "detail": ", ".join(names), "workers": names}


def health() -> dict:
    """The health of every part the server can check itself (the browser adds the websocket)."""
    r = redis_health()
    w = worker_health() if r["ok"] else {"ok": False, "detail": "redis is down", "workers": []}
    return {"redis": r, "worker": w}
