"""The Celery app. Workers listen on their node's queue: ``celery -A project worker -Q node.<hostname>``."""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def on_worker_ready(**kwargs):
    """At worker start: clean the engine's staging areas and make the models match the disk."""
    from project.startup import worker_started

    worker_started()
