"""The exit watcher: a thread in the worker that notices containers exiting on their own.

conmon writes each container's exit file; the engine's ``get(id)`` reads it. Twice a second the
watcher looks at the containers the models think are active, and hands each one the engine says
has stopped to ``services.handle_exit`` (record the exit code, apply the restart policy, --rm).
"""

from __future__ import annotations

import logging
import threading

from django.db import close_old_connections

logger = logging.getLogger(__name__)

INTERVAL = 0.5
_watcher: "ExitWatcher | None" = None


class ExitWatcher(threading.Thread):
    def __init__(self):
        super().__init__(name="berth-exit-watcher", daemon=True)
        self.stopping = threading.Event()

    def run(self) -> None:
        from . import services

        while not self.stopping.wait(INTERVAL):
            try:
                close_old_connections()
                active = list(services.active_containers())
                if not active:
                    continue
                engine = services.engine_containers()
                for container in active:
                    try:
                        # get() records an exit it finds; so may any reader (docker ps): compare
                        # the engine's state with the model's, not "has it exited since".
                        record = engine.get(container.container_id)
                    except Exception:
                        services.forget_container(container.container_id)
                        continue
                    if not record.running:
                        services.handle_exit(record.id)
            except Exception:
                logger.exception("exit watcher pass failed")


def start_watcher() -> None:
    """Start the watcher once per worker process."""
    global _watcher
    if _watcher is None:
        _watcher = ExitWatcher()
        _watcher.start()
