"""Django's side of the Docker API's hijacked streams (attach, attached exec start) and resize.

The front listener (project/front.py) splices the streams; every rule stays here. Before it answers
101 the front calls ``preflight`` on Daphne's socket with the client's own headers (so the token
middleware authenticates the caller as usual), the front secret, and the client's path, query and
body. The answer says where to connect (a conmon attach socket), the tty flag and the stdin rules;
any other answer (401, 403, 404, 409) goes to the client verbatim and no 101 is sent.

- attach: a container that is not running yet (``docker run`` attaches before start, ``start -ai``)
  is created in runc first (``ContainerStore.init``, on the worker), so its attach socket exists
  and the CLI's start loses no output. The preflight only queues that create (``init_task``): the
  front answers 101 at once, waits for it (``init_wait``), connects, and meanwhile holds any start
  of the container, so the create overlaps the CLI's next requests instead of preceding them.
- exec: the worker prepares the conmon exec session (``ContainerStore.exec_session``); the front
  connects, sends 101, then calls ``exec_start`` (one byte to the session's start FIFO), and when
  the stream ends ``exec_finish`` waits for the exit code and records it before the front closes
  the connection (the CLI reads ``GET /exec/{id}/json`` once, right after).

The internal views answer only a request that carries the front's secret (X-Berth-Front-Secret,
generated once into DATA_DIR/front_secret); the front refuses ``/_berth/`` paths from clients.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import re

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpResponse, JsonResponse, QueryDict
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from project import audit, nodes
from project.engine import get_engine
from project.front import SECRET_HEADER, load_secret
from runtime import errors
from runtime.info import API_VERSION

from .base import ApiError, docker_endpoint, json_response, query_int, require_perm

logger = logging.getLogger(__name__)

ATTACH_RE = re.compile(r"^/(?:v(\d+\.\d+)/)?containers/([^/]+)/attach$")
EXEC_START_RE = re.compile(r"^/(?:v(\d+\.\d+)/)?exec/([^/]+)/start$")
EXEC_FINISH_TIMEOUT = 10.0
EXEC_PERM = "containers.exec_container"


@functools.cache
def front_secret() -> str:
    return load_secret(settings.DATA_DIR / "front_secret")


def from_front(request) -> bool:
    return hmac.compare_digest(request.headers.get(SECRET_HEADER, "").encode(), front_secret().encode())


def front_only(view):
    """Refuse (404, as for an unknown path) a request that does not carry the front's secret."""
    if asyncio.iscoroutinefunction(view):
        @functools.wraps(view)
        async def async_wrapper(request, *args, **kwargs):
            if not from_front(request):
                return JsonResponse({"message": "page not found"}, status=404)
            return await view(request, *args, **kwargs)

        return csrf_exempt(async_wrapper)

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not from_front(request):
            return JsonResponse({"message": "page not found"}, status=404)
        return view(request, *args, **kwargs)

    return csrf_exempt(wrapper)


def store():
    return get_engine().containers


def _state(record) -> str:
    return getattr(record.state, "value", record.state)


#
# The preflight
#

@front_only
@docker_endpoint("POST")
def preflight(request):
    """What the front needs to splice the client's hijack, or the client's error answer."""
    try:
        hijack = json.loads(request.body or b"{}")
    except ValueError:
        raise ApiError("bad preflight") from None
    path = hijack.get("path", "")
    match = ATTACH_RE.match(path) or EXEC_START_RE.match(path)
    if match is None:
        raise ApiError(f"{path} is not a hijacked endpoint", 404)
    version = match[1]
    if version and tuple(map(int, version.split("."))) > tuple(map(int, API_VERSION.split("."))):
        raise ApiError(f"client version {version} is too new. Maximum supported API version is {API_VERSION}")
    if ATTACH_RE.match(path):
        return _attach(request, match[2], QueryDict(hijack.get("query", "")))
    try:
        body = json.loads(hijack.get("body") or "{}")
    except ValueError as e:
        raise ApiError(f"invalid JSON body: {e}") from None
    return _exec(request, match[2], body if isinstance(body, dict) else {})


def _attach(request, name: str, query: QueryDict):
    from containers import services, tasks

    require_perm(request, EXEC_PERM)
    record = store().get(name)
    state = _state(record)
    if state in ("removing", "dead"):
        raise ApiError(f"Container {record.id} is {state}: cannot attach", 409)
    init_task = None
    if state in ("configured", "exited"):
        # Attached before start (docker run, start -ai): the worker creates it in runc now, so its
        # attach socket exists before it starts and no output is lost. The front answers 101 at
        # once, waits for this (init_wait), connects, and holds the client's start until then.
        # A never-run container's early init (docker run --rm) may be running: wait for its answer,
        # unless it failed already (its error is in the record): then try again.
        reuse = state == "configured" and not record.error
        init_task = (services.early_init_task(record.id) if reuse else None) or nodes.send(
            tasks.hijack, "init", record.id)
    stdin = query.get("stdin", "").lower() in ("1", "true", "yes") and bool(record.config.open_stdin)
    audit.record(request, "container.attach", functools.partial(services.get_container, record.id),
                 stdin=stdin)
    return json_response({"kind": "attach", "container_id": record.id, "socket": store().attach_socket_path(record.id),
                          "tty": bool(record.config.tty), "stdin": stdin, "stdin_once": bool(record.config.stdin_once),
                          "init_task": init_task, "name": record.name.lstrip("/"),
                          # Never run: no conmon of an earlier run can still be serving its socket.
                          "fresh": state == "configured"})


def _exec(request, exec_id: str, body: dict):
    from containers import tasks
    from containers.models import ExecSession

    require_perm(request, EXEC_PERM)
    session = ExecSession.objects.select_related("container").filter(exec_id=exec_id).first()
    if session is None:
        raise errors.NotFound(f"No such exec instance: {exec_id}")
    if session.started:
        raise ApiError(f"Exec {exec_id} has already been started", 409)
    if body.get("Detach"):
        raise ApiError("a detached exec start has no Upgrade header", 400)
    record = store().get(session.container.container_id)
    if _state(record) != "running":
        raise ApiError(f"Container {record.id} is not running", 409)
    answer = nodes.call(tasks.hijack, "exec_session", exec_id)
    spec = session.spec or {}
    stdin = bool(spec.get("AttachStdin", True))
    audit.record(request, "container.exec", session.container, cmd=session.cmd, tty=session.tty, stdin=stdin)
    return json_response({"kind": "exec", "exec_id": exec_id, "container_id": record.id, "socket": answer["socket"],
                          "tty": bool(session.tty), "stdin": stdin, "stdin_once": True})


@front_only
@docker_endpoint("POST")
def exec_start(request):
    """Start the prepared session's process: the front has connected and sent its 101."""
    from containers.models import ExecSession

    exec_id = json.loads(request.body or b"{}").get("exec_id", "")
    session = ExecSession.objects.filter(exec_id=exec_id).first()
    if session is None or not (session.spec or {}).get("runtime_id"):
        raise errors.NotFound(f"No such exec instance: {exec_id}")
    store().exec_session_start(session.spec["runtime_id"])
    return json_response({"ok": True})


@front_only
async def init_wait(request, version=None):
    """The answer of the runc create an early attach queued (``_attach``): 200 once the container's
    attach socket is there, else the engine's error (the client's start reports it again)."""
    doc = json.loads(request.body or b"{}")
    try:
        await sync_to_async(nodes.wait_for, thread_sensitive=False)(doc.get("task", ""))
    except errors.EngineError as e:
        return JsonResponse({"message": str(e)}, status=409)
    return JsonResponse({"ok": True})


@front_only
async def exec_finish(request, version=None):
    """Wait (a little) for the session's exit code and record it: the CLI reads it right after."""
    from containers import services
    from containers.models import ExecSession

    doc = json.loads(request.body or b"{}")
    exec_id = doc.get("exec_id", "")
    inspect = sync_to_async(services.exec_inspect, thread_sensitive=False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EXEC_FINISH_TIMEOUT
    answer = {}
    while loop.time() < deadline:
        try:
            answer = await inspect(exec_id)
        except errors.EngineError as e:
            return JsonResponse({"message": str(e)}, status=404)
        if answer.get("ExitCode") is not None and not answer.get("Running"):
            return JsonResponse(answer)
        await asyncio.sleep(0.02)
    if doc.get("error"):
        # The session never ran (the front could not attach): say so in the exit code, as dockerd's 126.
        await sync_to_async(ExecSession.objects.filter(exec_id=exec_id, exit_code=None).update)(
            exit_code=126, finished_at=timezone.now())
    return JsonResponse(answer, status=202)


#
# The worker's side (containers.tasks.hijack)
#

def do_init(container_id: str) -> str:
    """runc create without start, and the row in step (CREATED)."""
    from containers import services

    try:
        record = store().init(container_id)
    except errors.InvalidState:
        # Another attach (or a start) got there first: nothing to create.
        record = store().get(container_id)
        if _state(record) in ("created", "running", "paused"):
            return record.id
        raise
    with services.row_lock(record.id):  # do_create may be writing the row of an early init
        services.sync_container(store().get(record.id))
    return record.id


def do_exec_session(exec_id: str) -> dict:
    """Prepare the conmon exec session of a created exec; record its runtime id (started)."""
    from containers.models import ExecSession

    session = ExecSession.objects.select_related("container").get(exec_id=exec_id)
    spec = session.spec or {}
    answer = store().exec_session(session.container.container_id, list(spec.get("Cmd") or session.cmd),
                                  env=spec.get("Env") or (), user=spec.get("User") or "",
                                  workdir=spec.get("WorkingDir") or "", tty=bool(spec.get("Tty")),
                                  stdin=bool(spec.get("AttachStdin", True)),
                                  privileged=bool(spec.get("Privileged")))
    session.spec = {**spec, "runtime_id": answer["exec_id"]}
    session.started = True
    session.save(update_fields=("spec", "started"))
    return {"runtime_id": answer["exec_id"], "socket": answer["socket"]}


#
# Resize (ordinary requests; the CLI sends them beside the hijack)
#

def _size(request) -> tuple[int, int]:
    h, w = query_int(request, "h", 0), query_int(request, "w", 0)
    if h <= 0 or w <= 0:
        raise ApiError(f"bad terminal size h={h} w={w}")
    return h, w


@docker_endpoint("POST")
def container_resize(request, name: str):
    """``POST /containers/{id}/resize?h=&w=``: the PTY of a running container with a TTY."""
    require_perm(request, EXEC_PERM)
    h, w = _size(request)
    record = store().get(name)
    if _state(record) not in ("running", "paused", "created"):
        raise ApiError(f"Container {record.id} is not running", 409)
    if record.config.tty:
        try:
            store().resize(record.id, h, w)
        except (OSError, errors.EngineError) as e:  # the terminal went away meanwhile: harmless
            logger.info("resize of %s: %s", record.id, e)
    return HttpResponse(status=200)


@docker_endpoint("POST")
def exec_resize(request, exec_id: str):
    """``POST /exec/{id}/resize?h=&w=``: may come before the process runs (right after the 101)."""
    from containers.models import ExecSession

    require_perm(request, EXEC_PERM)
    h, w = _size(request)
    session = ExecSession.objects.filter(exec_id=exec_id).first()
    if session is None:
        raise errors.NotFound(f"No such exec instance: {exec_id}")
    runtime_id = (session.spec or {}).get("runtime_id")
    if session.tty and runtime_id:
        try:
            store().exec_session_resize(runtime_id, h, w)
        except (OSError, errors.EngineError) as e:
            logger.info("resize of exec %s: %s", exec_id, e)
    return HttpResponse(status=200)
