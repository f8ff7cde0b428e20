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
        return _unwrap(task.apply(args=args, kwargs=kwargs).get())
    return _get(task.apply_async(args=args, kwargs=kwargs, queue=node_queue(node)), node, timeout)


def send(task, *args, node: str | None = None, **kwargs) -> str:
    """Queue ``task`` on the node's worker without waiting; ``wait_for`` its id gives the answer."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        result = task.apply(args=args, kwargs=kwargs)
        _EAGER[result.id] = result.get()
        return result.id
    return task.apply_async(args=args, kwargs=kwargs, queue=node_queue(node)).id


_EAGER: dict[str, dict] = {}


def wait_for(task_id: str, node: str | None = None, timeout: float = DEFAULT_TIMEOUT):
    """The answer of a task ``send`` queued, as ``call`` gives it (its engine error raised)."""
    if task_id in _EAGER:
        return _unwrap(_EAGER.pop(task_id))
    from celery.result import AsyncResult

    return _get(AsyncResult(task_id), node, timeout)


def _get(result, node: str | None, timeout: float):
    try:
        answer = result.get(timeout=timeout)
    except TimeoutError:
        raise errors.EngineError(f"the worker of node {node or settings.NODE_NAME} did not answer "
                                 f"within {timeout:.0f}s: is it running?") from None
    return _unwrap(answer)


def _unwrap(answer: dict):
    if answer["ok"]:
        return answer["result"]
    cls = getattr(errors, answer["error"], errors.EngineError)
    if not (isinstance(cls, type) and issubclass(cls, errors.EngineError)):
        cls = errors.EngineError
    raise cls(answer["message"])
