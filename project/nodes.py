"""Running engine operations on a node's worker: the worker is the only process that changes engine state.

Quick operations (tag, rmi, prune) are Celery tasks whose answer the caller waits for. Errors
travel back by name and are raised again as the same runtime.errors class, so views and the
Docker API map them to the same status codes wherever they ran.
"""

from __future__ import annotations

from django.conf import settings

from runtime import errors

DEFAULT_TIMEOUT = 120


def node_queue(node: str | None = None) -> str:
    return f"node.{node or settings.NODE_NAME}"


def wrap_result(fn, *args, **kwargs) -> dict:
    """Run ``fn`` in a task; return {"ok": True, "result": ...} or the engine error by name."""
    try:
        return {"ok": True, "result": fn(*args, **kwargs)}
    except errors.EngineError as e:
        return {"ok": False, "error": e.__class__.__name__, "message": str(e)}


def call(task, *args, node: str | None = None, timeout: float = DEFAULT_TIMEOUT, **kwargs):
    """Run ``task`` on the node's worker and wait for its answer; raise its engine error."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        answer = task.apply(args=args, kwargs=kwargs).get()
    else:
        try:
            answer = task.apply_async(args=args, kwargs=kwargs, queue=node_queue(node)).get(timeout=timeout)
        except TimeoutError:
            raise errors.EngineError(f"the worker of node {node or settings.NODE_NAME} did not answer "
                                     f"within {timeout:.0f}s: is it running?") from None
    if answer["ok"]:
        return answer["result"]
    cls = getattr(errors, answer["error"], errors.EngineError)
    if not (isinstance(cls, type) and issubclass(cls, errors.EngineError)):
        cls = errors.EngineError
    raise cls(answer["message"])
