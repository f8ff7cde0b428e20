"""The audit log: every change is recorded with who, what, when and the outcome."""

import logging

from .models import AuditEvent

logger = logging.getLogger(__name__)


def record(request, action: str, obj=None, *, outcome: str = "ok", **detail) -> AuditEvent:
    """Record ``action`` by the request's user on ``obj`` (a model instance, or a function that
    returns one when the event is written).

    In a Docker API request (``defer``) the event is written once the answer is sent, not before:
    the CLI's next request of docker run waits for that answer. Its time is now's either way.
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
    """Keep the events this request records until ``write_after`` writes them."""
    request._audit_pending = []


def write_after(request, response) -> None:
    """Write the events ``request`` recorded once ``response`` is sent (when Django closes it)."""
    pending = getattr(request, "_audit_pending", None)
    request._audit_pending = None
    if pending:
        response._resource_closers.append(lambda: _save_all(pending))


def write_now(request) -> None:
    """Write the events ``request`` recorded (its view failed: there is no answer to wait for)."""
    pending = getattr(request, "_audit_pending", None)
    request._audit_pending = None
    _save_all(pending or [])


def _save_all(events: list[AuditEvent]) -> None:
    for event in events:
        try:
            _save(event)
        except Exception:  # Django's close() would swallow it
            logger.exception("could not write the audit event %s", event.action)


def _save(event: AuditEvent) -> None:
    obj = event.subject
    if callable(obj) and not hasattr(obj, "_meta"):
        obj = obj()
    event.object_type = obj._meta.model_name if obj is not None and hasattr(obj, "_meta") else ""
    event.object_id = str(getattr(obj, "pk", "") or "") if obj is not None else ""
    event.save()
