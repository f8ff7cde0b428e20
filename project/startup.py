"""What the worker does when it starts: the reconcile pass of DESIGN.md."""

import logging

from django.apps import apps

logger = logging.getLogger(__name__)


def worker_started() -> None:
    """1. Clean the engine's staging areas. 2. Reconcile every app that keeps engine state in models."""
    from project.engine import get_engine

    get_engine().start()
    for label in ("images", "containers"):
        module = getattr(apps.get_app_config(label).module, "services", None)
        if module is None:
            try:
                module = __import__(f"{label}.services", fromlist=["services"])
            except ImportError:
                continue
        reconcile = getattr(module, f"reconcile_{label}", None)
        if reconcile is not None:
            try:
                logger.info("reconcile %s: %s", label, reconcile())
            except Exception:
                logger.exception("reconcile of %s failed", label)
