"""Running a Job: its state changes, its log, its live events and its cancellation.

A task does ``with JobRun(job_id) as run: ... run.emit(event) ...``; JobRun marks the job running,
records every event (progress ones only live, and as the job's latest progress), and marks it
succeeded, failed or cancelled when the block ends (Baserow's run_async_job, NetBox's JobRunner).

Events published to the ``job_<pk>`` and ``events`` groups:
- ``{"type": "job.events", "job": pk, "events": [...]}`` (the job's group only): a batch of the
  job's events in order: its log lines, ``{"type": "job.event", "job": pk, "seq": n, ...message}``
  (each kept as a JobEvent), and its state changes (below). Lines are written in batches (one
  ``bulk_create`` at most every ``EVENT_FLUSH_INTERVAL`` seconds, the last one in the same
  transaction as the job's final state) and published once committed, one message per batch
  (a group message per line cost the worker more than a cached build's own work). The job's group
  hears that it runs with the first batch, and of its end in the last one: a short job (a cached
  build) is one message there;
- ``{"type": "job.progress", "job": pk, "id": ..., "current": c, "total": t, ...message}``: live only;
- ``{"type": "job.state", "job": pk, "status": ..., "error": ...}``: a state change, to the events
  group as it happens (and in a batch to the job's group); the final one also has ``"seq"``, the
  job's last log line (all of them committed with the state).
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import connection, transaction
from django.utils import timezone

from runtime.errors import Cancelled

from . import realtime
from .choices import JobStatusChoices, TERMINAL_JOB_STATES
from .models import Job, JobEvent

logger = logging.getLogger(__name__)

CANCEL_POLL_INTERVAL = 0.5
PROGRESS_SAVE_INTERVAL = 1.0
# A log line waits at most this long for the lines after it, to share their database write.
EVENT_FLUSH_INTERVAL = 0.05


def create_job(kind: str, target: str, user=None, **params) -> Job:
    """Create a pending job; the caller enqueues its task (after commit)."""
    from django.conf import settings

    job = Job.objects.create(kind=kind, target=target, user=user if user and user.is_authenticated else None,
                             node=settings.NODE_NAME, params=params)
    realtime.publish_on_commit(realtime.EVENTS_GROUP, state_event(job))
    return job


def enqueue_job(task, kind: str, target: str, *, user=None, request=None, audit_action: str,
                audit_detail: dict | None = None, task_kwargs: dict | None = None, **params) -> Job:
    """Create a job, audit it, and queue ``task(job.pk, **task_kwargs)`` on this node once committed.

    ``task_kwargs`` travel with the task only (credentials), never to the database.
    """
    from . import audit
    from .nodes import node_queue

    with transaction.atomic():  # the job and its audit record: one commit
        job = create_job(kind, target, user, **params)
        audit.record(request, audit_action, job, **(audit_detail or {}))
        transaction.on_commit(lambda: task.apply_async((job.pk,), task_kwargs or {}, queue=node_queue()))
    return job


def state_event(job: Job) -> dict:
    return {"type": "job.state", "job": job.pk, "kind": job.kind, "target": job.target,
            "status": job.status, "error": job.error}


def request_cancel(job: Job) -> bool:
    """Ask a pending or running job to stop. A pending job is cancelled at once.

    Returns False when the job had already ended.
    """
    # Claim with a conditional UPDATE: the worker may be finishing it at this very moment.
    if Job.objects.filter(pk=job.pk, status=JobStatusChoices.PENDING).update(
        status=JobStatusChoices.CANCELLED, cancel_requested=True, finished_at=timezone.now(),
        error="cancelled before it started",
    ):
        job.refresh_from_db()
        _publish_state(job)
        return True
    updated = Job.objects.filter(pk=job.pk, status=JobStatusChoices.RUNNING).update(cancel_requested=True)
    job.refresh_from_db()
    return bool(updated)


def _publish_state(job: Job) -> None:
    event = state_event(job)
    realtime.publish(job.group_name, event)
    realtime.publish(realtime.EVENTS_GROUP, event)


class JobRun:
    """The running side of a job. Thread-safe: pulls emit from several threads."""

    def __init__(self, job_id: int):
        self.job = Job.objects.get(pk=job_id)
        self._lock = threading.Lock()
        # Only a job that already ran (a task delivered again) can have lines: JobRun writes them all.
        self._seq = self.job.events.count() if self.job.status != JobStatusChoices.PENDING else 0
        self._written = self._seq  # the last seq in the database
        self._cancel_checked = 0.0
        self._cancelled = False
        self._progress_saved = 0.0
        self._error_emitted = False
        # Log lines not written yet, (seq, time, message); a thread writes them in batches.
        self._pending: list[tuple[int, object, dict]] = []
        # State changes not yet sent to the job's group (they go with the next batch).
        self._states: list[dict] = []
        self._wake = threading.Condition(self._lock)
        self._flush_lock = threading.Lock()  # one batch written and published at a time, in order
        self._flusher: threading.Thread | None = None
        self._closing = False

    @property
    def skip(self) -> bool:
        """True when the job must not run (cancelled before it started, or already ended)."""
        return self.job.status in TERMINAL_JOB_STATES

    def __enter__(self) -> "JobRun":
        if self.skip:
            return self
        started = timezone.now()
        claimed = Job.objects.filter(pk=self.job.pk, status=JobStatusChoices.PENDING).update(
            status=JobStatusChoices.RUNNING, started_at=started)
        if claimed:
            self.job.status, self.job.started_at = JobStatusChoices.RUNNING, started
        else:
            self.job.refresh_from_db()
        if claimed:
            # Pages of all jobs hear of it now; the job's own group with its first batch of lines
            # (EVENT_FLUSH_INTERVAL at most), which saves a group message per job (~1 ms of worker CPU).
            state = state_event(self.job)
            realtime.publish(realtime.EVENTS_GROUP, state)
            with self._lock:
                self._states.append(state)
                self._wake_writer()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.skip and exc is None:
            self._close()
            return False
        if exc is None:
            self.finish(JobStatusChoices.SUCCEEDED)
        elif isinstance(exc, Cancelled):
            self.emit({"status": "cancelled", "message": str(exc)})
            self.finish(JobStatusChoices.CANCELLED, error=str(exc))
        else:
            message = str(exc) or exc.__class__.__name__
            if not self._error_emitted:  # the engine may have said it already (builds do)
                self.emit({"error": message, "errorDetail": {"message": message}})
            self.finish(JobStatusChoices.FAILED, error=message)
            if not _is_expected(exc):
                logger.exception("job %s failed", self.job.pk, exc_info=(exc_type, exc, tb))
        # An expected failure is recorded, not raised: the task itself succeeded in recording it.
        return _is_expected(exc) or isinstance(exc, Cancelled)

    def finish(self, status: str, error: str = "", result: dict | None = None) -> None:
        """End the job: its last log lines and its final state in one transaction, then published.

        Whoever sees the final state can find every line in the database (and the final state
        names the last one, ``seq``); a short job costs one commit at its end, not two.
        """
        self._close(flush=False)
        self.job.status = status
        self.job.error = error
        self.job.finished_at = timezone.now()
        if result is not None:
            self.job.result = result
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
                states, self._states = self._states, []
            try:
                with transaction.atomic():
                    self._insert(batch)
                    self.job.save(update_fields=("status", "error", "finished_at", "result", "progress"))
            except BaseException:
                with self._lock:
                    self._pending[:0] = batch
                    self._states[:0] = states
                raise
            # The job's group gets its last lines and its end in one message; the events group the end.
            state = {**state_event(self.job), "seq": self._written}
            self._publish_batch(states, batch, end=state)
            realtime.publish(realtime.EVENTS_GROUP, state)

    def set_result(self, result: dict) -> None:
        """The job's result: written with its final state (``finish``), in the same commit."""
        self.job.result = result

    def cancelled(self) -> bool:
        """True once somebody asked to cancel (read from the database at most twice a second)."""
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._cancel_checked >= CANCEL_POLL_INTERVAL:
            self._cancel_checked = now
            self._cancelled = Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists()
        return self._cancelled

    def emit(self, message: dict) -> None:
        """Record and publish one event (a Docker-style JSON message: status, id, progressDetail...)."""
        detail = message.get("progressDetail") or {}
        if detail.get("total"):
            self._progress(message, detail)
            return
        if "error" in message:
            self._error_emitted = True
        with self._lock:
            self._seq += 1
            self._pending.append((self._seq, timezone.now(), dict(message)))
            self._wake_writer()
        if self._closing:
            self.flush()

    def _wake_writer(self) -> None:
        """With the lock held: make sure the writer thread will send what is pending."""
        if self._closing:
            pass  # _close() writes it
        elif self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True, name=f"job-{self.job.pk}-events")
            self._flusher.start()
        else:
            self._wake.notify()

    def flush(self) -> None:
        """Write the pending log lines in one statement, then publish them (in seq order)."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
                states, self._states = self._states, []
            try:
                self._insert(batch)
            except BaseException:
                with self._lock:  # keep them for the next try (the final one raises)
                    self._pending[:0] = batch
                    self._states[:0] = states
                raise
            self._publish_batch(states, batch)

    def _insert(self, batch: list[tuple[int, object, dict]]) -> None:
        if batch:
            JobEvent.objects.bulk_create(
                [JobEvent(job_id=self.job.pk, seq=seq, time=when, data=message) for seq, when, message in batch])
            self._written = batch[-1][0]

    def _publish_batch(self, states: list[dict], batch: list[tuple[int, object, dict]],
                       end: dict | None = None) -> None:
        """Send the job's group one ``job.events`` message: the pending states, the committed lines
        of ``batch``, then ``end`` (the job's final state), in that order."""
        pk = self.job.pk
        events = states + [{"type": "job.event", "job": pk, "seq": seq, **line} for seq, _, line in batch]
        if end is not None:
            events.append(end)
        if events:
            realtime.publish(self.job.group_name, {"type": "job.events", "job": pk, "events": events})

    def _flush_loop(self) -> None:
        """The writer thread: a batch ``EVENT_FLUSH_INTERVAL`` after its first line, until ``_close()``."""
        try:
            while True:
                with self._lock:
                    while not (self._pending or self._states) and not self._closing:
                        self._wake.wait()
                    if self._closing:
                        return
                    deadline = time.monotonic() + EVENT_FLUSH_INTERVAL
                    while not self._closing and (left := deadline - time.monotonic()) > 0:
                        self._wake.wait(left)
                    if self._closing:
                        return
                try:
                    self.flush()
                except Exception:
                    logger.exception("job %s: writing log lines (retried when the job ends)", self.job.pk)
        finally:
            connection.close()  # this thread's own connection

    def _close(self, flush: bool = True) -> None:
        """Stop the writer thread; with ``flush``, write what is left here."""
        with self._lock:
            self._closing = True
            self._wake.notify_all()
            flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join()
        if flush:
            self.flush()

    def _progress(self, message: dict, detail: dict) -> None:
        key = message.get("id") or "-"
        event = {"type": "job.progress", "job": self.job.pk, "current": detail.get("current", 0),
                 "total": detail["total"], **message}
        with self._lock:
            states, self._states = self._states, []
        if states:  # the job's group hears that it runs before its progress
            realtime.publish(self.job.group_name, {"type": "job.events", "job": self.job.pk, "events": states})
        realtime.publish(self.job.group_name, event)
        realtime.publish(realtime.EVENTS_GROUP, event)
        with self._lock:
            self.job.progress[key] = {"current": detail.get("current", 0), "total": detail["total"],
                                      "status": message.get("status", "")}
            now = time.monotonic()
            if now - self._progress_saved >= PROGRESS_SAVE_INTERVAL:
                self._progress_saved = now
                Job.objects.filter(pk=self.job.pk).update(progress=self.job.progress)


def _is_expected(exc: BaseException | None) -> bool:
    """Errors the engine raises on purpose (bad input, registry answers) are the job's outcome, not a bug."""
    from runtime.errors import EngineError

    return isinstance(exc, EngineError)
