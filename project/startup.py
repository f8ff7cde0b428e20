"""What the worker does when it starts: the reconcile pass of DESIGN.md."""

import logging
import time


logger = logging.getLogger(__name__)


STAGED_FILE_MAX_AGE = 24 * 3600


def clean_staged_files() -> None:
    """Remove uploads and saved archives older than a day (a crashed job's, or never downloaded)."""
    from django.conf import settings

    now = time.time()
    for kind in ("uploads", "exports"):
        folder = settings.DATA_DIR / kind
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            try:
                if now - entry.stat().st_mtime > STAGED_FILE_MAX_AGE:
                    entry.unlink()
            except OSError:
                pass


def worker_started() -> None:
    """1. Clean the engine's staging areas and old staged files. 2. Reconcile every app's models."""
    from django.conf import settings

    from project.engine import get_engine

    # Two namespaces kept ready on the default network take CNI off `docker run`'s path (runtime.network).
    # It also answers the embedded DNS of user-defined networks (runtime/network/dns.py).
    get_engine().start(network_pool=2, dns=settings.EMBEDDED_DNS)
    clean_staged_files()
    from containers import services as containers
    from images import services as images

    for reconcile in (images.reconcile_images, containers.reconcile_containers, containers.reconcile_networks):
        try:
            logger.info("%s: %s", reconcile.__name__, reconcile())
        except Exception:
            logger.exception("%s failed", reconcile.__name__)
    from containers.watcher import start_watcher

    start_watcher()
