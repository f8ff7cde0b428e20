"""Berth's Django project: settings, URLs, ASGI routing, the Celery app and cross-cutting models."""

from .celery import app as celery_app

__all__ = ("celery_app",)
