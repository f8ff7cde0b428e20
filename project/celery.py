"""The Celery app. Workers listen on their node's queue: ``celery -A project worker -Q node.<hostname>``."""

import os

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def on_worker_ready(**kwargs):
    """At worker start: clean the engine's staging areas and make the models match the disk."""
    from project.startup import worker_started

    worker_started()


@worker_shutdown.connect
def on_worker_shutdown(**kwargs):
    """At worker stop: give back the pre-networked namespaces (their leases and veths), and stop
    the embedded DNS (its nat redirections go with it)."""
    from project.engine import get_engine

    networks = getattr(get_engine(), "networks", None)
    if networks is not None and hasattr(networks, "stop_pool"):
        networks.stop_pool()
    if networks is not None and hasattr(networks, "stop_dns"):
        networks.stop_dns()
