"""The rules of containers: create, run, start, stop, remove..., restart policies, and keeping the
models in step with the engine.

Changes go to the node's worker (``nodes.call`` on a task, which calls a ``do_*`` function here);
reads (inspect, logs, top, stats, diff, files) call the engine's read-only functions directly.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import io
import logging
import os
import secrets
import tarfile
import threading
import time

from django import db
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from project import audit, nodes, realtime
from project.engine import get_engine
from runtime import containerfs
from runtime.errors import EngineError, NotFound

from .choices import ACTIVE_STATES, ContainerStateChoices
from .models import Container, ExecSession

logger = logging.getLogger(__name__)


def engine_containers():
    return get_engine().containers


#
# Models <- engine
#

def _time(value) -> datetime.datetime | None:
    if not value:
        return None
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    try:
        parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.year < 1900:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def _config_dict(config) -> dict:
    import dataclasses

    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config or {})


def _state_of(record) -> str:
    """An engine record's state as the rows keep it (ContainerStateChoices' value)."""
    return getattr(record.state, "value", record.state)


@transaction.atomic
def sync_container(record, *, user_id: int | None = None) -> Container:
    """Create or update the row of one container from the engine's record; publish its state.
    ``user_id``: its owner too (the create's)."""
    from images.models import Image

    state = _state_of(record)
    fields = dict(
        name=record.name, node=settings.NODE_NAME, image=Image.objects.filter(digest=record.image_id).first(),
        image_ref=record.image_ref or record.image_id, config=_config_dict(record.config), state=state,
        pid=record.pid or 0, exit_code=record.exit_code, error=record.error or "",
        oom_killed=bool(record.oom_killed), created=_time(record.created) or timezone.now(),
        stopped_by_user=record.manually_stopped, restart_count=record.restart_count,
        started_at=_time(record.started_at), finished_at=_time(record.finished_at),
    )
    if user_id is not None:
        fields["user_id"] = user_id
    container, created = Container.objects.get_or_create(container_id=record.id, defaults=fields)
    changed = created or container.state != state or container.exit_code != record.exit_code
    if not created:
        for key, value in fields.items():
            setattr(container, key, value)
        container.save(update_fields=list(fields))  # never columns it did not read, like user
    if changed:
        realtime.publish_on_commit(realtime.EVENTS_GROUP, state_event(container))
    return container


def state_event(container: Container) -> dict:
    return {"type": "container.state", "id": container.container_id, "name": container.name,
            "state": container.state, "exit_code": container.exit_code}


def forget_container(container_id: str, *, ended=None) -> None:
    """Drop the row of a container that is gone, with its "destroy" event, once whoever calls.
    ``ended``: the engine's record of a run that ended just before (--rm): its "start" if the row
    never showed it, and its "die", go out first."""
    container = Container.objects.filter(container_id=container_id).first()
    if container is None or not Container.objects.filter(pk=container.pk).delete()[0]:
        return  # gone already: its events went out with it
    if ended is not None:
        if container.started_at != _time(ended.started_at):  # its row never said it ran
            _publish_started(ended)
        realtime.publish_on_commit(realtime.EVENTS_GROUP, {**state_event(container), "state": "exited",
                                                           "exit_code": ended.exit_code})
    realtime.publish_on_commit(realtime.EVENTS_GROUP, {**state_event(container), "state": "removed"})


def reconcile_containers() -> dict:
    """Make the models match the engine after a restart; apply restart policies to what exited."""
    was_active = set(active_containers().values_list("container_id", flat=True))
    # Stopped by a restart that the last worker did not finish: its exit was never acted on.
    was_restarting = {r.id for r in engine_containers().list(all=True) if r.restarting}
    records = engine_containers().reconcile()
    seen = set()
    for record in records:
        seen.add(record.id)
        # --rm, ended while no worker watched (its row may not say it ran: after_start runs in a
        # thread, which a crash can end first); never one that never ran.
        ran = record.id in was_active or record.id in was_restarting or _time(record.started_at) is not None
        if ran and record.config.auto_remove and _state_of(record) == ContainerStateChoices.EXITED:
            _auto_remove(record.id)
            continue
        sync_container(record)
    stale = Container.objects.filter(node=settings.NODE_NAME).exclude(container_id__in=seen)
    removed = list(stale.values_list("name", flat=True))
    stale.delete()
    restarted = [c.name for c in Container.objects.filter(node=settings.NODE_NAME, state="exited")
                 if restart_on_worker_start(c)]
    return {"containers": len(seen), "removed": removed, "restarted": restarted}


#
# Restart policies
#

def should_restart(container: Container) -> bool:
    """Docker's restart policies, for a container that just exited on its own."""
    policy = (container.config.get("restart_policy") or {})
    name, max_retries = policy.get("Name", "no"), int(policy.get("MaximumRetryCount") or 0)
    if container.stopped_by_user or name == "no":
        return False
    if name == "on-failure":
        return container.exit_code not in (0, None) and (max_retries == 0 or container.restart_count < max_retries)
    return name in ("always", "unless-stopped")


def restart_on_worker_start(container: Container) -> bool:
    """After a host or worker restart: ``always`` and ``unless-stopped`` (not stopped by a user) come back."""
    policy = (container.config.get("restart_policy") or {}).get("Name", "no")
    if policy == "always" or (policy == "unless-stopped" and not container.stopped_by_user):
        try:
            engine_containers().start(container.container_id)
            after_start(container.container_id)
            return True
        except Exception:
            logger.exception("restart of %s after a worker start failed", container.name)
    return False


def _remove_after_failed_start(container_id: str) -> None:
    """A --rm container that could not start is removed, as Docker does (``docker run --rm`` waits
    for the removal after reporting the start's error)."""
    engine = engine_containers()
    try:
        record = engine.get(container_id)
    except NotFound:
        return
    if record.config.auto_remove and not record.running:
        _auto_remove(container_id)


def _auto_remove(container_id: str) -> None:
    """--rm: the container and its anonymous volumes go (Docker's AutoRemove)."""
    with contextlib.suppress(NotFound):
        engine_containers().remove(container_id, force=True, volumes=True,
                                   when_gone=lambda: forget_container(container_id))
    forget_container(container_id)  # the engine had it no more: its row goes too (else a no-op)


@contextlib.contextmanager
def row_lock(container_id: str):
    """Hold while reading the engine's record and writing the container's row from it: the start
    and the exit watcher both do, and without it a row could be written from an older state of the
    engine than one already written (a running container shown exited, an exit acted on twice).
    A flock on the container's directory itself (no file is made in it: a removal may be emptying
    it); nothing to hold once it is gone. Never nested (a second flock of it in one process would
    wait for the first)."""
    try:
        fd = os.open(engine_containers()._dir(container_id), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# How long after_start's thread leaves a process that ended at once to the exit watcher.
EXIT_LEFT_TO_WATCHER_S = 0.5


def after_start(container_id: str, *, watched: bool = False) -> Container | None:
    """Record a start's outcome (start, restart, unpause, a policy's restart, run -d).

    A process that ended before its start was even recorded may never look active to the exit
    watcher's pass: its exit is handled here. One that ends while its row is being written may
    wake the watcher before the row says running: so once the row says running, look once more.
    Both this and the watcher may then see the same exit: ``handle_exit`` lets only one of them
    act on it. With ``watched`` (after_start's own thread, docker run --rm's path), the exit
    watcher is left to act on such an exit first (it wakes on the exit file itself, whatever the
    row says), and this only makes sure EXIT_LEFT_TO_WATCHER_S later: acting on it here at once
    doubled the exit's work at the moment the CLI waits for its code. None when the container is
    gone meanwhile (--rm).
    """
    engine = engine_containers()
    try:
        with row_lock(container_id):
            # Watched: the exit is not synced here either (a look at the exit file says enough).
            record = engine.get(container_id, sync=not watched)
            ended = not record.running or (watched and engine.has_exited(container_id))
            container = None if ended else sync_container(record)
        ended = container is None or (engine.has_exited(container_id) if watched
                                      else not engine.get(container_id).running)
        if ended:
            if watched:
                time.sleep(EXIT_LEFT_TO_WATCHER_S)
            return handle_exit(container_id)
    except NotFound:
        forget_container(container_id)
        return None
    return container


def _after_start_soon(container_id: str) -> None:
    """``after_start`` in a thread of this worker process, so that the start's answer waits neither
    for the row nor for the exit of a process that ended at once: ``docker run --rm busybox true``
    had its 204 only after the container's removal, and the CLI waits for that answer before its
    exit code. (A task of its own cost the worker ~3 ms of CPU more, on the same path.) With eager
    tasks (no worker), run here."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        after_start(container_id)
        return
    threading.Thread(target=_after_start_thread, args=(container_id,),
                     name=f"after-start-{container_id[:12]}", daemon=True).start()


def _after_start_thread(container_id: str) -> None:
    try:
        after_start(container_id, watched=True)
    except Exception:
        logger.exception("recording the start of %s failed", container_id[:12])
    finally:
        db.connections.close_all()  # this thread's own


RESTART_BACKOFF_FIRST = 0.1
RESTART_BACKOFF_MAX = 60.0


def restart_delay(restart_count: int) -> float:
    """Docker's back-off between policy restarts: 100 ms, doubling, at most a minute."""
    return min(RESTART_BACKOFF_FIRST * (2 ** restart_count), RESTART_BACKOFF_MAX)


def handle_exit(container_id: str) -> Container | None:
    """Called when a container's exit is seen: record it, then schedule a restart or auto-remove.

    Whoever saw the exit (the exit watcher, the start that saw the process end) may call this for
    the same exit: only the caller whose update turns the row to that exit acts on it. Returns
    the row, or None when the container is gone (--rm).
    """
    from . import tasks

    engine = engine_containers()
    with row_lock(container_id):
        try:
            record = engine.sync(container_id)
        except NotFound:  # removed meanwhile (by the other one who saw it end, with --rm)
            forget_container(container_id)
            return None
        if _state_of(record) != ContainerStateChoices.EXITED or record.restarting:
            return sync_container(record)  # not ended, or ``docker restart`` starts it next
        if record.config.auto_remove:
            _remove_ended(record)
            return None
        # A run that ended before its row said so (after_start runs in a thread of its own): its
        # "start" goes out before its "die" (docker events), by whoever acts on the exit.
        row = Container.objects.filter(container_id=container_id).only("started_at").first()
        unrecorded = row is not None and row.started_at != _time(record.started_at)
        if not _claim_exit(record):
            return Container.objects.filter(container_id=container_id).first()
        if unrecorded:
            _publish_started(record)
        container = sync_container(record)
    if should_restart(container):
        tasks.restart_by_policy.apply_async((container_id, record.finished_at), countdown=restart_delay(container.restart_count),
                                            queue=nodes.node_queue())
    elif container.config.get("auto_remove"):
        _auto_remove(container_id)
        return None
    return container


def _publish_started(record) -> None:
    realtime.publish_on_commit(realtime.EVENTS_GROUP, {
        "type": "container.state", "id": record.id, "name": record.name, "state": "running",
        "exit_code": None})


def _remove_ended(record) -> None:
    """--rm, once its process ended: the container goes first (``docker run --rm`` waits for
    that), its row right after it is moved out of the store (before its files are deleted: the
    CLI, answered at that move, may reuse the name at once), with the "die" and "destroy" events.
    No claim of the exit is needed: whoever else saw it end finds the container gone (the removal
    is the engine's, under its lock). A removal that fails leaves the container DEAD, and its row
    says so."""
    engine = engine_containers()
    try:
        engine.remove(record.id, force=True, volumes=True,
                      when_gone=lambda: forget_container(record.id, ended=record))
    except NotFound:
        return  # removed by the other one who saw it end, who drops the row
    except EngineError:
        with contextlib.suppress(NotFound):
            sync_container(engine.get(record.id))
        raise


def _claim_exit(record) -> bool:
    """True for the one caller that records this exit (the row's state and finish time) first.
    No row, no claim: it was removed meanwhile (writing one would bring it back)."""
    finished = _time(record.finished_at)
    rows = Container.objects.filter(container_id=record.id)
    return bool(rows.exclude(state=ContainerStateChoices.EXITED, finished_at=finished).update(
        state=ContainerStateChoices.EXITED, finished_at=finished))


def do_restart_by_policy(container_id: str, finished_at: str | None = None) -> None:
    """The restart policy's restart of the exit that ended at ``finished_at``: count it, start
    again, and handle an immediate exit."""
    engine = engine_containers()
    container = Container.objects.filter(container_id=container_id).first()
    if container is None or container.stopped_by_user:
        return
    record = engine.restart_by_policy(container_id, finished_at=finished_at)
    Container.objects.filter(pk=container.pk).update(restart_count=record.restart_count)
    after_start(container_id)


#
# Changes, run in the worker (do_*), asked for by views and the API (the functions without do_)
#

def do_create(config: dict, user_id: int | None = None, start: bool = False) -> dict:
    """The new container's id, and the id of the task of its early init (``_init_ahead``) if one
    was queued."""
    from runtime.containers import ContainerConfig

    engine = engine_containers()
    record = engine.create(ContainerConfig.from_json(config))
    init_task = None
    if not start and record.config.auto_remove:
        init_task = _init_ahead(record.id)  # first: the row below can be written while it runs
    with row_lock(record.id):  # the early init writes the row too: the later state wins
        fresh = engine.get(record.id) if not start and record.config.auto_remove else record
        container = sync_container(fresh, user_id=user_id or None)
    if start:
        try:
            engine.start(record.id)
        except EngineError:
            sync_container(engine.get(record.id))
            _remove_after_failed_start(record.id)
            raise
        after_start(record.id)
    return {"id": record.id, "pk": container.pk, "name": container.name, "init_task": init_task}


def _init_ahead(container_id: str) -> str | None:
    """Queue the ``runc create`` of a container that is about to start (``docker run --rm``).

    The CLI's attach, wait and start requests then overlap the slowest step of the run: the
    container is CREATED in runc (its attach socket there, its process not started) by the time
    they come. The attach's own init finds it made (``do_init``), and a start only runs
    ``runc start``. A failed init here changes nothing the client sees: the state stays as it
    was, and the attach or the start tries again and reports the error. ``docker create --rm``
    that is never started holds a conmon until it is removed, as an attached-but-unstarted
    container does. Returns the task's id (None when none was queued).
    """
    from . import tasks

    if settings.CELERY_TASK_ALWAYS_EAGER:
        return None  # no worker to overlap with: the start creates it
    try:
        return nodes.send(tasks.hijack, "init", container_id)
    except Exception:  # an optimisation: the start creates it anyway
        logger.warning("could not queue the early init of %s", container_id[:12], exc_info=True)
        return None


# The containers this process created, by id: (a reference to the row: its pk, id and name; the
# early init task its create queued, if any; when). The CLI's attach comes while that init still
# runs (the row says "configured"): it waits for that task rather than queueing a second init, which
# would hold a worker process while it waits for the first one's lock (the CLI's start then waited
# for a free worker process). The audit event of a start, written after the answer, names the row
# though a --rm container took it away since.
_CREATED: dict[str, tuple[Container, str | None, float]] = {}
CREATED_KEEP_S = 60.0


def _remember_created(container: Container, task_id: str | None) -> None:
    now = time.monotonic()
    for cid in [c for c, (_, _, when) in list(_CREATED.items()) if now - when > CREATED_KEEP_S]:
        _CREATED.pop(cid, None)
    _CREATED[container.container_id] = (container, task_id, now)


def _created(container_id: str) -> tuple[Container | None, str | None]:
    """What a create of this process recently knew of ``container_id``: (row reference, early
    init task id), or (None, None)."""
    entry = _CREATED.get(container_id)
    if entry is None or time.monotonic() - entry[2] > CREATED_KEEP_S:
        return None, None
    return entry[0], entry[1]


def early_init_task(container_id: str) -> str | None:
    """The id of the early init task queued for ``container_id`` by a create in this process (its
    answer says when the container exists in the OCI runtime), if it is recent."""
    return _created(container_id)[1]


def create_container(config: dict, *, start: bool = False, user=None, request=None,
                     read: bool = True) -> Container:
    """``docker create`` (or ``docker run -d`` with start): returns the new container's row; with
    ``read=False`` only a reference to it (its pk, id and name, not read back: the Docker API needs
    no more, on the path of docker run)."""
    from . import tasks

    user_id = user.pk if user is not None and user.is_authenticated else None
    answer = nodes.call(tasks.create_container, config, user_id, start)
    reference = Container(pk=answer["pk"], container_id=answer["id"], name=answer["name"])
    _remember_created(reference, answer.get("init_task"))
    container = Container.objects.filter(container_id=answer["id"]).first() if read else None
    container = container or reference  # not read, or gone already (run -d --rm of what ended)
    audit.record(request, "container.run" if start else "container.create", container, image=config.get("image"))
    return container


def do_action(container_id: str, action: str, **kwargs):
    """Run one lifecycle verb of the engine on a container and record the outcome."""
    engine = engine_containers()
    if action == "remove":
        engine.remove(container_id, **kwargs)
        forget_container(container_id)
        return None
    try:
        getattr(engine, action)(container_id, **kwargs)
    except EngineError:
        if action in ("start", "restart"):
            _remove_after_failed_start(container_id)
        raise
    if action in ("start", "restart", "unpause"):
        _after_start_soon(container_id)
        return None
    try:
        with row_lock(container_id):
            record = engine.get(container_id)
            exited = _state_of(record) == ContainerStateChoices.EXITED
            if not exited:
                sync_container(record)
    except NotFound:
        return None  # stopped with --rm: the watcher saw the exit and removed it already
    if exited:
        handle_exit(container_id)  # stop, kill: the exit is recorded once, --rm applies
    return None


ACTION_TIMEOUT_SLACK = 30


def container_action(container: Container | str, action: str, *, request=None, **kwargs) -> None:
    """start / stop / restart / kill / pause / unpause / remove / rename, through the worker.
    ``container``: its row, or its id (the row is then read for the audit log only when the event
    is written: after the Docker API's answer)."""
    from . import tasks

    container_id = container if isinstance(container, str) else container.container_id
    subject = functools.partial(_row_of, container_id) if isinstance(container, str) else container
    timeout = nodes.DEFAULT_TIMEOUT + int(kwargs.get("timeout") or 0) + ACTION_TIMEOUT_SLACK
    nodes.call(tasks.container_action, container_id, action, kwargs, timeout=timeout)
    audit.record(request, f"container.{action}", subject,
                 **{k: v for k, v in kwargs.items() if k != "signal"})


def _row_of(container_id: str) -> Container | None:
    """The container's row, or what a create of this process knew of it (gone since: --rm)."""
    row = Container.objects.filter(container_id=container_id).first()
    return row or _created(container_id)[0]


def get_container(name_or_id: str) -> Container:
    """The row of a container named by name, id or id prefix (NotFound as Docker words it)."""
    record = engine_containers().get(name_or_id)
    container = Container.objects.filter(container_id=record.id).first()
    return container or sync_container(record)


def docker_info_counts() -> dict:
    """The container counts of ``docker info``."""
    rows = Container.objects.filter(node=settings.NODE_NAME)
    running = rows.filter(state=ContainerStateChoices.RUNNING).count()
    paused = rows.filter(state=ContainerStateChoices.PAUSED).count()
    total = rows.count()
    return {"Containers": total, "ContainersRunning": running, "ContainersPaused": paused,
            "ContainersStopped": total - running - paused}


def image_in_use(image_id: str):
    """The id of a container that uses the image, or False (for rmi)."""
    row = Container.objects.filter(image__digest=image_id).first()
    return row.container_id if row else False


def active_containers():
    return Container.objects.filter(node=settings.NODE_NAME, state__in=ACTIVE_STATES)


#
# Files, exec, commit, prune
#

def do_copy_in(container_id: str, path: str, staged: str, no_overwrite_dir_non_dir: bool = False) -> None:
    try:
        with open(staged, "rb") as f:
            containerfs.copy_in(engine_containers(), container_id, path, f,
                                no_overwrite_dir_non_dir=no_overwrite_dir_non_dir)
    finally:
        os.unlink(staged)


def copy_in(container_id: str, path: str, stream, *, no_overwrite_dir_non_dir: bool = False, request=None) -> None:
    """``docker cp - CTR:path``: the tar is staged, then the worker extracts it inside the container."""
    from images.services import stage_upload

    from . import tasks

    staged = stage_upload(stream)
    nodes.call(tasks.copy_in, container_id, path, staged, no_overwrite_dir_non_dir)
    audit.record(request, "container.copy_in", Container.objects.filter(container_id=container_id).first(), path=path)


def upload_file(container_id: str, directory: str, upload, *, request=None) -> None:
    """The file browser's upload: one file into ``directory``, as a one-entry tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(os.path.basename(upload.name))
        info.size = upload.size
        info.mode = 0o644
        info.mtime = int(time.time())
        tar.addfile(info, upload)
    buffer.seek(0)
    copy_in(container_id, directory, buffer, request=request)


def exec_create(container_id: str, body: dict, *, user=None) -> str:
    """``POST /containers/{id}/exec``: record the exec; it runs when started."""
    exec_id = secrets.token_hex(32)
    container = Container.objects.get(container_id=container_id)
    ExecSession.objects.create(exec_id=exec_id, container=container, cmd=list(body["Cmd"]),
                               tty=bool(body.get("Tty")), user=user if user and user.is_authenticated else None,
                               spec={k: body.get(k) for k in ("Cmd", "Env", "User", "WorkingDir", "Tty",
                                                              "AttachStdin", "Privileged")})
    return exec_id


def do_exec_detached(exec_id: str) -> None:
    session = ExecSession.objects.select_related("container").get(exec_id=exec_id)
    spec = session.spec
    runtime_id = engine_containers().exec(session.container.container_id, spec["Cmd"], env=spec.get("Env") or (),
                                          user=spec.get("User") or "", workdir=spec.get("WorkingDir") or "",
                                          tty=bool(spec.get("Tty")), detach=True)
    session.spec = {**spec, "runtime_id": runtime_id}
    session.started = True
    session.save(update_fields=("spec", "started"))


def exec_start_detached(exec_id: str) -> None:
    """``POST /exec/{id}/start`` with Detach: the process runs on, nobody attached (``docker exec -d``)."""
    from . import tasks

    if not ExecSession.objects.filter(exec_id=exec_id).exists():
        raise NotFound(f"No such exec instance: {exec_id}")
    nodes.call(tasks.exec_detached, exec_id)


def exec_inspect(exec_id: str) -> dict:
    """``GET /exec/{id}/json`` in Docker's shape; running and exit code from the engine's session."""
    session = ExecSession.objects.select_related("container").filter(exec_id=exec_id).first()
    if session is None:
        raise NotFound(f"No such exec instance: {exec_id}")
    spec = session.spec or {}
    running, exit_code, pid = False, session.exit_code, 0
    if spec.get("runtime_id"):
        state = engine_containers().exec_inspect(spec["runtime_id"])
        running, exit_code, pid = state["running"], state["exit_code"], state.get("pid", 0)
        if exit_code is not None and session.exit_code is None:
            ExecSession.objects.filter(pk=session.pk).update(exit_code=exit_code, finished_at=timezone.now())
    cmd = spec.get("Cmd") or [""]
    return {
        "ID": session.exec_id, "Running": bool(running), "ExitCode": exit_code,
        "ProcessConfig": {"entrypoint": cmd[0], "arguments": cmd[1:], "tty": session.tty, "privileged": False,
                          "user": spec.get("User") or ""},
        "OpenStdin": False, "OpenStderr": True, "OpenStdout": True, "CanRemove": False,
        "ContainerID": session.container.container_id, "DetachKeys": "", "Pid": pid,
    }


def do_exec_run(container_id: str, cmd: list[str], user: str, workdir: str, env: list[str],
                user_id: int | None) -> dict:
    container = Container.objects.get(container_id=container_id)
    session = ExecSession.objects.create(exec_id=secrets.token_hex(32), container=container, cmd=cmd,
                                         spec={"Cmd": cmd, "User": user, "WorkingDir": workdir, "Env": env},
                                         started=True, user_id=user_id)
    code, out, err = engine_containers().exec(container_id, cmd, env=env, user=user, workdir=workdir, timeout=EXEC_TIMEOUT)
    ExecSession.objects.filter(pk=session.pk).update(exit_code=code, finished_at=timezone.now())
    return {"exit_code": code, "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")}


EXEC_TIMEOUT = 120


def exec_run(container: Container, cmd: list[str], *, user: str = "", workdir: str = "", env=(), request=None) -> dict:
    """``docker exec CTR cmd`` without a TTY: wait for it; its output and exit code."""
    from . import tasks

    requester = request.user.pk if request is not None and request.user.is_authenticated else None
    answer = nodes.call(tasks.exec_run, container.container_id, cmd, user, workdir, list(env), requester,
                        timeout=EXEC_TIMEOUT + 30)
    audit.record(request, "container.exec", container, cmd=cmd, exit_code=answer["exit_code"])
    return answer


def do_commit(container_id: str, reference: str, changes: list[str], message: str, author: str, pause: bool) -> str:
    from images.services import sync_image

    record = containerfs.commit(engine_containers(), get_engine().store, container_id, reference=reference or None,
                                changes=changes, message=message, author=author, pause=pause)
    sync_image(record)
    return record.id


def commit(container_id: str, *, reference: str = "", changes=(), message: str = "", author: str = "",
           pause: bool = True, request=None) -> str:
    """``docker commit``: the read-write layer becomes a new image; returns its id."""
    from runtime.reference import parse_reference

    from . import tasks

    if reference:
        reference = parse_reference(reference).familiar
    image_id = nodes.call(tasks.commit, container_id, reference, list(changes), message, author, pause)
    audit.record(request, "container.commit", Container.objects.filter(container_id=container_id).first(),
                 image=image_id, reference=reference)
    return image_id


def do_prune() -> dict:
    engine = engine_containers()
    deleted, reclaimed = [], 0
    for record in engine.list(all=True):
        if _state_of(record) in ("exited", "configured", "created", "dead"):
            engine.remove(record.id)
            forget_container(record.id)
            deleted.append(record.id)
    return {"ContainersDeleted": deleted, "SpaceReclaimed": reclaimed}


def prune(*, request=None) -> dict:
    """``docker container prune``: every stopped container goes."""
    from . import tasks

    answer = nodes.call(tasks.prune)
    audit.record(request, "container.prune", None, deleted=len(answer["ContainersDeleted"]))
    return answer


#
# Volumes (docker volume create / ls / inspect / rm / prune)
#

def volume_store():
    return engine_containers().volumes


def _sync_volume(doc: dict) -> None:
    from .models import Volume

    Volume.objects.update_or_create(node=settings.NODE_NAME, name=doc["Name"],
                                    defaults={"driver": doc.get("Driver", "local"), "mountpoint": doc["Mountpoint"],
                                              "labels": doc.get("Labels") or {}})


def do_volume_create(name: str | None, labels: dict | None) -> dict:
    doc = volume_store().create(name or None, labels or {})
    _sync_volume(doc)
    return doc


def do_volume_remove(name: str, force: bool) -> None:
    from .models import Volume

    volume_store().remove(name, force=force, in_use=engine_containers().volume_users)
    Volume.objects.filter(node=settings.NODE_NAME, name=name).delete()


def do_volume_prune(filters: dict | None) -> dict:
    from .models import Volume

    answer = volume_store().prune(engine_containers().volume_users, filters)
    Volume.objects.filter(node=settings.NODE_NAME, name__in=answer.get("VolumesDeleted") or []).delete()
    return answer


def volume_create(name: str | None = None, labels: dict | None = None, *, request=None) -> dict:
    from . import tasks

    doc = nodes.call(tasks.volume_create, name, labels)
    audit.record(request, "volume.create", None, name=doc["Name"])
    return doc


def volume_remove(name: str, *, force: bool = False, request=None) -> None:
    from . import tasks

    nodes.call(tasks.volume_remove, name, force)
    audit.record(request, "volume.remove", None, name=name)


def volume_prune(filters: dict | None = None, *, request=None) -> dict:
    from . import tasks

    answer = nodes.call(tasks.volume_prune, filters)
    audit.record(request, "volume.prune", None, deleted=len(answer.get("VolumesDeleted") or []))
    return answer


#
# Terminal sessions (the browser terminal)
#

def do_exec_session(container_id: str, cmd: list[str], user: str, workdir: str, rows: int, cols: int) -> dict:
    return engine_containers().exec_session(container_id, cmd, user=user, workdir=workdir, tty=True, stdin=True,
                                            rows=rows, cols=cols)


def exec_session_create(container_id: str, cmd: list[str], *, user=None, user_name: str = "", workdir: str = "",
                        rows: int = 24, cols: int = 80) -> dict:
    """Start an interactive exec session in the worker (it waits for a viewer to attach); record it."""
    from . import tasks

    record = engine_containers().get(container_id)
    info = nodes.call(tasks.exec_session, record.id, cmd, user_name, workdir, rows, cols)
    container = Container.objects.filter(container_id=record.id).first() or sync_container(record)
    ExecSession.objects.create(exec_id=info["exec_id"], container=container, cmd=cmd, tty=True, started=True,
                               user=user if user is not None and user.is_authenticated else None,
                               spec={"Cmd": cmd, "User": user_name, "WorkingDir": workdir, "Tty": True,
                                     "runtime_id": info["exec_id"], "terminal": True})
    audit_terminal(user, record.id, "exec", cmd)
    return info


def audit_terminal(user, container_id: str, kind: str, cmd: list[str]) -> None:
    """Every terminal session is in the audit log: who, which container, what command, when."""
    from project.models import AuditEvent

    AuditEvent.objects.create(user=user if user is not None and user.is_authenticated else None,
                              action=f"terminal.{kind}", object_type="container", object_id=container_id,
                              detail={"cmd": cmd})


def terminal_exit_code(session) -> int | None:
    """The exit code of a browser terminal's exec session, once its output has ended."""
    if session.kind != "exec":
        return None
    return _exec_exit_code(session.key)


def _exec_exit_code(exec_id: str) -> int | None:
    """An ended exec session's exit code: conmon writes its exit file just after the last output,
    so wait for it a little (up to a second); None if it never comes."""
    for _ in range(20):
        try:
            code = engine_containers().exec_session_inspect(exec_id).get("exit_code")
        except Exception:
            return None
        if code is not None:
            return code
        time.sleep(0.05)
    return None


async def exec_session_ended(session) -> None:
    """Record the end of an exec session (exit code, time) and close its audit trail."""
    from asgiref.sync import sync_to_async

    await sync_to_async(_record_exec_end)(session.key)


def _record_exec_end(exec_id: str) -> None:
    from project.models import AuditEvent

    code = _exec_exit_code(exec_id)
    ExecSession.objects.filter(exec_id=exec_id).update(exit_code=code, finished_at=timezone.now())
    session = ExecSession.objects.select_related("container").filter(exec_id=exec_id).first()
    if session is not None:
        AuditEvent.objects.create(user=session.user, action="terminal.exec.end", object_type="container",
                                  object_id=session.container.container_id, detail={"exit_code": code})


#
# Networks: every change in the worker
#

NETWORK_ACTIONS = ("create", "remove", "connect", "disconnect", "prune")


def do_network_action(action: str, *args):
    if action not in NETWORK_ACTIONS:
        raise ValueError(f"unknown network action {action!r}")
    answer = getattr(get_engine().networks, action)(*args)
    reconcile_networks()
    realtime.publish(realtime.EVENTS_GROUP, {"type": "network.changed", "action": action})
    return answer


def reconcile_networks() -> dict:
    """The Network rows follow the engine's networks (run at worker start and after each change)."""
    from .models import Network

    seen = []
    for doc in get_engine().networks.list():
        config = ((doc.get("IPAM") or {}).get("Config") or [{}])[0] or {}
        Network.objects.update_or_create(node=settings.NODE_NAME, name=doc["Name"], defaults={
            "network_id": doc.get("Id", ""), "driver": doc.get("Driver", "bridge"),
            "subnet": config.get("Subnet", ""), "gateway": config.get("Gateway", ""),
            "internal": bool(doc.get("Internal")), "labels": doc.get("Labels") or {},
        })
        seen.append(doc["Name"])
    Network.objects.filter(node=settings.NODE_NAME).exclude(name__in=seen).delete()
    return {"networks": len(seen)}


def network_action(action: str, *args, request=None):
    """``docker network create/rm/connect/disconnect/prune`` through the worker."""
    from . import tasks

    answer = nodes.call(tasks.network_action, action, *args)
    audit.record(request, f"network.{action}", None, args=[a for a in args if isinstance(a, (str, bool))])
    return answer
