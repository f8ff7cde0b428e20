"""The audit log: every change is recorded with who, what, when and the outcome."""

import atexit
import logging
import os
import queue
import threading
import time

from django.db import close_old_connections

from .models import AuditEvent

logger = logging.getLogger(__name__)


def record(request, action: str, obj=None, *, outcome: str = "ok", **detail) -> AuditEvent:
    """Record ``action`` by the request's user on ``obj`` (a model instance, or a function that
    returns one when the event is written).

    In a Docker API request (``defer``) the event is written after the answer, by a thread of its
    own (WRITE_DELAY_S later), not before it: the CLI's next request of docker run waits for that
    answer. Its time is now's either way.
    """
    user = request.user if request is not None and request.user.is_authenticated else None
    event = AuditEvent(user=user, action=action, outcome=outcome, detail=detail,
                       remote_addr=request.META.get("REMOTE_ADDR") if request is not None else None)
    event.subject = obj
    pending = getattr(request, "_audit_pending", None) if request is not None else None
    if pending is not None:
        pending.append(event)
    else:
        _save(event)
    return event


def defer(request) -> None:
    """Keep the events this request records until ``write_after`` hands them on."""
    request._audit_pending = []


def write_after(request) -> None:
    """Have the events ``request`` recorded written by the audit thread (the view is done: its
    answer goes out meanwhile); a client that hangs up before it is sent still leaves them."""
    pending = getattr(request, "_audit_pending", None)
    request._audit_pending = None
    if pending:
        _writer.submit(pending)


def write_now(request) -> None:
    """Write the events ``request`` recorded, here (its view failed)."""
    pending = getattr(request, "_audit_pending", None)
    request._audit_pending = None
    _save_all(pending or [])


class _Writer:
    """One thread per process writes deferred events, in order."""

    def __init__(self):
        self.queue: "queue.SimpleQueue[list[AuditEvent]] | None" = None
        self.pid = None
        self.lock = threading.Lock()

    def submit(self, events: list[AuditEvent]) -> None:
        with self.lock:
            if self.pid != os.getpid():
                self.queue, self.pid = queue.SimpleQueue(), os.getpid()
                threading.Thread(target=self.run, args=(self.queue,), name="berth-audit", daemon=True).start()
            self.queue.put(events)

    @staticmethod
    def run(batches: "queue.SimpleQueue[list[AuditEvent]]") -> None:
        while True:
            events = batches.get()
            # A moment later, with whatever came meanwhile: docker run's five requests come
            # within ~60 ms, and a write beside them slowed the next answer.
            time.sleep(WRITE_DELAY_S)
            _Writer.write(events, batches)

    @staticmethod
    def write(events: list[AuditEvent], batches: "queue.SimpleQueue[list[AuditEvent]]") -> None:
        try:
            while not batches.empty():
                events += batches.get_nowait()
            _save_all(events)
            close_old_connections()
        except Exception:  # the thread goes on
            logger.exception("the audit thread failed")

    def flush(self) -> None:
        """Write what is still waiting (at the process's exit: the thread is a daemon)."""
        if self.queue is not None and self.pid == os.getpid():
            _Writer.write([], self.queue)


# How long the audit thread waits before writing what it was given.
WRITE_DELAY_S = 0.1


_writer = _Writer()
atexit.register(_writer.flush)


def _save_all(events: list[AuditEvent]) -> None:
    for event in events:
        try:
            _save(event)
        except Exception:
            logger.exception("could not write the audit event %s", event.action)


def _save(event: AuditEvent) -> None:
    obj = event.subject
    if callable(obj) and not hasattr(obj, "_meta"):
        try:
            obj = obj()
        except Exception:  # gone meanwhile: the event stays, without its object
            obj = None
    event.object_type = obj._meta.model_name if obj is not None and hasattr(obj, "_meta") else ""
    event.object_id = str(getattr(obj, "pk", "") or "") if obj is not None else ""
    event.save()
