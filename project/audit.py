"""The audit log: every change is recorded with who, what, when and the outcome."""

from .models import AuditEvent


def record(request, action: str, obj=None, *, outcome: str = "ok", **detail) -> AuditEvent:
    """Record ``action`` by the request's user on ``obj``."""
    user = request.user if request is not None and request.user.is_authenticated else None
    return AuditEvent.objects.create(
        user=user,
        action=action,
        object_type=obj._meta.model_name if obj is not None and hasattr(obj, "_meta") else "",
        object_id=str(getattr(obj, "pk", "") or "") if obj is not None else "",
        outcome=outcome,
        detail=detail,
        remote_addr=request.META.get("REMOTE_ADDR") if request is not None else None,
    )
