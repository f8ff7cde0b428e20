"""The exit watcher: a thread in the worker that notices containers exiting on their own.

conmon writes each container's exit file (``<root>/containers/<id>/exits/<id>``); the engine's
``get(id)`` reads it. The watcher sleeps on inotify over every container's exits directory and the
containers directory itself (a new container), so an exit wakes it at once; it also looks every
INTERVAL seconds in any case. Each pass looks at the containers the models think are active, and
hands each one the engine says has stopped to ``services.handle_exit`` (record the exit code, apply
the restart policy, --rm).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from django.db import close_old_connections

from runtime.containers import ContainerState
from runtime.errors import NotFound
from runtime.monitor import IN_CLOSE_WRITE, IN_CREATE, IN_MOVED_TO, FileWatch

logger = logging.getLogger(__name__)

INTERVAL = 0.5
# When a new container's exits directory was not made yet, look again this soon.
RETRY = 0.02
_watcher: "ExitWatcher | None" = None


class ExitWatcher(threading.Thread):
    def __init__(self):
        super().__init__(name="berth-exit-watcher", daemon=True)
        self.stopping = threading.Event()
        self._watch: FileWatch | None = None
        self._watched: frozenset[str] = frozenset()
        self._exit_dirs: dict[str, str] = {}  # a watched exits directory -> its container's id

    def run(self) -> None:
        from . import services

        changed: set[str] = set()
        last_pass = 0.0
        try:
            while not self.stopping.is_set():
                timeout = INTERVAL
                try:
                    engine = services.engine_containers()
                    # The containers whose exit file was just written first, without reading the
                    # models (docker run --rm waits for what handle_exit does next).
                    exits = {d for d in changed if d in self._exit_dirs}
                    for cid in sorted(self._exit_dirs[d] for d in exits):
                        self._look(services, engine, cid)
                    # Watched before the models are read: an exit from now on wakes the next wait.
                    if not self._rewatch(engine):
                        timeout = RETRY
                    # The whole pass (the models' active containers) when woken by something else
                    # than those exits, and at least every INTERVAL.
                    now = time.monotonic()
                    if changed != exits or not changed or now - last_pass >= INTERVAL:
                        self._pass(services, engine)
                        last_pass = now
                except Exception:
                    logger.exception("exit watcher pass failed")
                if self._watch is not None:
                    changed = self._watch.changed(timeout)
                else:
                    changed = set()
                    self.stopping.wait(timeout)
        finally:
            if self._watch is not None:
                self._watch.close()

    def _rewatch(self, engine) -> bool:
        """Watch the exits directory of every container (new ones included); False if one was not
        made yet (a container being created), so the caller looks again soon."""
        ids = frozenset(engine._ids())
        if ids == self._watched and self._watch is not None:
            return True
        if self._watch is None:
            self._watch = FileWatch([(engine.root, IN_CREATE | IN_MOVED_TO)])
        # Only the new containers' directories are added; a removed one's watch ends with it.
        for cid in ids - self._watched:
            path = os.path.dirname(engine._exit_file(cid))
            if self._watch.add(path, IN_CLOSE_WRITE | IN_MOVED_TO):
                self._exit_dirs[path] = cid
        self._exit_dirs = {path: cid for path, cid in self._exit_dirs.items() if cid in ids}
        self._watched = frozenset(self._exit_dirs.values())
        return self._watched == ids

    @staticmethod
    def _look(services, engine, container_id: str) -> None:
        """One container whose exits directory changed: hand its exit to ``handle_exit`` (which
        acts once per exit, whoever else saw it). A failure is logged: the others go on."""
        try:
            record = engine.get(container_id)
            if record.state is ContainerState.EXITED:
                close_old_connections()
                services.handle_exit(container_id)
        except NotFound:
            return  # removed meanwhile: the pass drops its row
        except Exception:
            logger.exception("handling the exit of %s failed", container_id[:12])

    def _pass(self, services, engine) -> None:
        close_old_connections()
        for container in list(services.active_containers()):
            try:
                # get() records an exit it finds; so may any reader (docker ps): compare
                # the engine's state with the model's, not "has it exited since".
                record = engine.get(container.container_id)
            except Exception:
                services.forget_container(container.container_id)
                continue
            if not record.running:
                services.handle_exit(record.id)


def start_watcher() -> None:
    """Start the watcher once per worker process."""
    global _watcher
    if _watcher is None:
        _watcher = ExitWatcher()
        _watcher.start()
