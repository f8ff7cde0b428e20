"""The rules of images: pull, tag, remove, prune, and keeping the models in step with the disk.

Views and the Docker API call these; these call the engine (in the worker, through tasks) and
write the models from the engine's answers.
"""

from __future__ import annotations

import datetime
import logging
import os
import tempfile

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q

from project import audit, nodes, realtime
from project.choices import JobKindChoices
from project.engine import get_engine
from project.jobs import JobRun, enqueue_job
from runtime.errors import InvalidArgument, NotFound
from runtime.images import ImageRecord
from runtime.reference import parse_reference

from .models import Image, ImageLayer, Layer, Registry, Tag

logger = logging.getLogger(__name__)


#
# Pull
#

def request_pull(reference: str, user=None, request=None, credentials: tuple[str, str] | None = None):
    """Validate ``reference`` and queue its pull; return the Job. Bad references raise InvalidArgument.

    ``credentials`` (from the docker CLI's X-Registry-Auth) travel with the task only, never to the
    database; without them the registry's stored credentials are used.
    """
    from . import tasks

    ref = parse_reference(reference.strip())
    return enqueue_job(tasks.pull_image, JobKindChoices.PULL, ref.familiar, user=user, request=request,
                       audit_action="image.pull", audit_detail={"reference": ref.familiar},
                       task_kwargs={"credentials": list(credentials)} if credentials else None, reference=ref.full)


def registry_credentials(registry: str) -> tuple[str, str] | None:
    entry = Registry.objects.filter(host=registry).first()
    return entry.credentials if entry else None


def pull_image(job_id: int, credentials: tuple[str, str] | None = None) -> None:
    """Run a pull job (in the worker): engine pull with live progress, then record the image."""
    with JobRun(job_id) as run:
        if run.skip:
            return
        reference = run.job.params["reference"]
        ref = parse_reference(reference)
        credentials = tuple(credentials) if credentials else registry_credentials(ref.registry)
        record = get_engine().pull(reference, credentials=credentials,
                                   progress=run.emit, cancelled=run.cancelled)
        image = sync_image(record, job=run.job)
        run.set_result({"image": record.id, "tags": record.repo_tags, "url": image.get_absolute_url()})


#
# Push
#

def request_push(reference: str, user=None, request=None, credentials: tuple[str, str] | None = None):
    """Queue ``docker push`` of a local tag; return the Job. A missing image raises NotFound now."""
    from . import tasks

    ref = parse_reference(reference.strip())
    get_engine().images.resolve(ref.familiar)
    return enqueue_job(tasks.push_image, JobKindChoices.PUSH, ref.familiar, user=user, request=request,
                       audit_action="image.push", audit_detail={"reference": ref.familiar},
                       task_kwargs={"credentials": list(credentials)} if credentials else None, reference=ref.full)


def push_image(job_id: int, credentials: tuple[str, str] | None = None) -> None:
    """Run a push job (in the worker)."""
    with JobRun(job_id) as run:
        if run.skip:
            return
        reference = run.job.params["reference"]
        ref = parse_reference(reference)
        credentials = tuple(credentials) if credentials else registry_credentials(ref.registry)
        digest = get_engine().push(reference, credentials=credentials, progress=run.emit, cancelled=run.cancelled)
        record = get_engine().images.resolve(ref.familiar)
        image = sync_image(record)
        run.set_result({"digest": digest, "image": record.id, "url": image.get_absolute_url()})


def login(registry: str, username: str, password: str, *, save: bool = False, request=None) -> None:
    """``docker login``: check the credentials against the registry (Unauthorized if refused).

    With ``save``, Berth keeps them for its own pulls and pushes of that registry.
    """
    client = get_engine().registry_client(registry, (username, password))
    client.ping()
    if save:
        Registry.objects.update_or_create(host=registry, defaults={"username": username, "password": password})
    audit.record(request, "registry.login", None, registry=registry, username=username, saved=save)


#
# Build
#

def request_build(path: str, *, tags=(), dockerfile: str = "Dockerfile", build_args: dict | None = None,
                  target: str = "", no_cache: bool = False, pull: bool = False, labels: dict | None = None,
                  network_mode: str = "", user=None, request=None):
    """Queue ``docker build`` of a staged context tar; return the Job."""
    from . import tasks

    tags = [parse_reference(t).familiar for t in tags]
    return enqueue_job(tasks.build_image, JobKindChoices.BUILD, ", ".join(tags) or "<untagged>", user=user,
                       request=request, audit_action="image.build", audit_detail={"tags": tags}, path=path,
                       tags=tags, dockerfile=dockerfile or "Dockerfile", build_args=build_args or {}, stage=target,
                       no_cache=no_cache, pull=pull, labels=labels or {}, network_mode=network_mode or "")


def build_image(job_id: int) -> None:
    """Run a build job: every step's output goes to the job's log, the result is a recorded image."""
    from runtime.build import build

    with JobRun(job_id) as run:
        if run.skip:
            return
        params = run.job.params
        touched: dict[str, None] = {}  # the images the build added or tagged, in order
        try:
            with open(params["path"], "rb") as context:
                record = build(get_engine(), context, dockerfile=params["dockerfile"], tags=params["tags"],
                               build_args=params["build_args"], target=params["stage"] or None,
                               no_cache=params["no_cache"], pull=params["pull"], labels=params["labels"],
                               progress=run.emit, cancelled=run.cancelled,
                               network_mode=_build_network(params.get("network_mode")),
                               on_image=lambda image_id: touched.setdefault(image_id))
        except BaseException:
            # The steps that succeeded left images (reused by the next build's cache): record them.
            try:
                sync_images(touched)
            except Exception:
                logger.exception("recording the images of a failed build")
            raise
        finally:
            _unlink(params["path"])
        touched.pop(str(record.id), None)
        sync_images(touched)
        image = sync_image(record, job=run.job)
        run.set_result({"image": record.id, "tags": record.repo_tags, "url": image.get_absolute_url()})


def _build_network(mode: str | None) -> str:
    """``docker build --network``: Docker's "default" (or nothing) is the default bridge."""
    return "bridge" if not mode or mode == "default" else mode


def prune_build_cache(*, request=None) -> dict:
    from . import tasks

    answer = nodes.call(tasks.prune_build_cache)
    audit.record(request, "build.prune", None, deleted=len(answer.get("CachesDeleted") or []))
    return answer


#
# Import, load, save: the bytes travel as files under DATA_DIR, the worker does the work
#

UPLOAD_CHUNK = 1 << 20


def staging_dir(kind: str):
    path = settings.DATA_DIR / kind
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def stage_upload(stream, max_size: int | None = None) -> str:
    """Copy an uploaded archive (a request body or an uploaded file) to a staging file; return its path."""
    max_size = max_size or settings.MAX_UPLOAD_SIZE
    fd, path = tempfile.mkstemp(prefix="upload-", suffix=".tar", dir=staging_dir("uploads"))
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(UPLOAD_CHUNK):
                size += len(chunk)
                if size > max_size:
                    raise InvalidArgument(f"upload larger than the limit of {max_size} bytes")
                out.write(chunk)
    except BaseException:
        os.unlink(path)
        raise
    if size == 0:
        os.unlink(path)
        raise InvalidArgument("the archive is empty")
    return path


def request_import(path: str, *, reference: str = "", changes: list[str] = (), message: str = "",
                   user=None, request=None):
    """Queue ``docker import`` of a staged rootfs tar; return the Job."""
    from . import tasks

    if reference:
        reference = parse_reference(reference).familiar
    return enqueue_job(tasks.import_image, JobKindChoices.IMPORT, reference or "<none>", user=user, request=request,
                       audit_action="image.import", audit_detail={"reference": reference}, path=path,
                       reference=reference, changes=list(changes), message=message)


def import_image(job_id: int) -> None:
    """Run an import job: the staged tar becomes a one-layer image."""
    with JobRun(job_id) as run:
        if run.skip:
            return
        params = run.job.params
        try:
            with open(params["path"], "rb") as f:
                record = get_engine().images.import_tar(f, changes=params.get("changes") or (),
                                                        message=params.get("message", ""),
                                                        reference=params.get("reference") or None)
        finally:
            _unlink(params["path"])
        image = sync_image(record, job=run.job)
        run.emit({"status": record.id})
        run.set_result({"image": record.id, "tags": record.repo_tags, "url": image.get_absolute_url()})


def request_load(path: str, *, user=None, request=None):
    """Queue ``docker load`` of a staged archive; return the Job."""
    from . import tasks

    return enqueue_job(tasks.load_images, JobKindChoices.LOAD, os.path.basename(path), user=user, request=request,
                       audit_action="image.load", path=path)


def load_images(job_id: int) -> None:
    """Run a load job: every image of the archive is verified, then recorded."""
    with JobRun(job_id) as run:
        if run.skip:
            return
        path = run.job.params["path"]
        try:
            with open(path, "rb") as f:
                lines = get_engine().images.load(f)
        finally:
            _unlink(path)
        for line in lines:
            run.emit({"stream": line + "\n"})
        reconcile_images()
        images = [line.split(": ", 1)[1] for line in lines if ": " in line]
        run.set_result({"loaded": images, "tags": [i for i in images if not i.startswith("sha256:")],
                        "url": "/images/"})


def request_save(names: list[str], *, user=None, request=None):
    """Queue ``docker save`` of ``names`` into a file; the job's result says where."""
    from . import tasks

    if not names:
        raise InvalidArgument("no image names given")
    for name in names:
        get_engine().images.resolve(name)  # NotFound now, not in the worker
    return enqueue_job(tasks.save_images, JobKindChoices.SAVE, " ".join(names), user=user, request=request,
                       audit_action="image.save", audit_detail={"names": names}, names=names)


def save_images(job_id: int) -> None:
    """Run a save job: write the archive under DATA_DIR/exports."""
    with JobRun(job_id) as run:
        if run.skip:
            return
        names = run.job.params["names"]
        fd, path = tempfile.mkstemp(prefix=f"save-{run.job.pk}-", suffix=".tar", dir=staging_dir("exports"))
        try:
            with os.fdopen(fd, "wb") as out:
                run.emit({"status": f"Saving {' '.join(names)}"})
                get_engine().images.save(names, out)
        except BaseException:
            _unlink(path)
            raise
        size = os.path.getsize(path)
        run.emit({"status": f"Saved {size} bytes"})
        run.set_result({"path": path, "size": size, "url": f"/jobs/{run.job.pk}/download"})


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


#
# Models <- disk
#

def _parse_time(text: str) -> datetime.datetime | None:
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def sync_image(record: ImageRecord, job=None) -> Image:
    """Create or update the rows of one image (its layers and tags) from the engine's record.

    The rows are read first, outside a transaction: when they already say what the record says (a
    cached rebuild: the same image and tags, its job link set), nothing is written and no write
    lock is taken (SQLite's IMMEDIATE transactions take it when they begin).
    """
    values = dict(node=settings.NODE_NAME, size=record.size, created=_parse_time(record.created),
                  architecture=record.architecture, os=record.os, config=record.config,
                  repo_digests=record.repo_digests)
    image = Image.objects.filter(digest=record.id).annotate(layer_count=Count("image_layers")).first()
    if image is not None and _rows_match(image, values, record, job):
        return image
    return _sync_image(record, values, job)


def _rows_match(image: Image, values: dict, record: ImageRecord, job) -> bool:
    if job is not None and image.job_id is None:
        return False
    if any(getattr(image, name) != value for name, value in values.items()):
        return False
    if image.layer_count != len(record.layers):
        return False
    rows = Tag.objects.filter(node=settings.NODE_NAME).filter(Q(image=image) | Q(name__in=record.repo_tags))
    return set(rows.values_list("name", "image_id")) == {(name, image.pk) for name in record.repo_tags}


@transaction.atomic
def _sync_image(record: ImageRecord, values: dict, job) -> Image:
    image = Image.objects.filter(digest=record.id).first()
    created = changed = image is None
    if image is None:
        image = Image.objects.create(digest=record.id, job=job, **values)
    else:
        fields = [name for name, value in values.items() if getattr(image, name) != value]
        if job is not None and image.job_id is None:
            image.job = job
            fields.append("job")
        if fields:
            for name in fields:
                setattr(image, name, values.get(name, job))
            image.save(update_fields=fields)
            changed = True
    if created or image.image_layers.count() != len(record.layers):
        image.image_layers.all().delete()
        for position, info in enumerate(record.layers):
            layer, _ = Layer.objects.update_or_create(
                chain_id=info["chain_id"],
                defaults=dict(diff_id=info["diff_id"], digest=info.get("digest") or "", size=info.get("size") or 0),
            )
            ImageLayer.objects.create(image=image, layer=layer, position=position)
        changed = True
    if _sync_tags(image, record.repo_tags) or changed:
        realtime.publish_on_commit(realtime.EVENTS_GROUP, {"type": "image.changed", "image": record.id})
    return image


def _sync_tags(image: Image, names: list[str]) -> bool:
    """Point the tag rows ``names`` at ``image``, drop its other tags; True if any row changed."""
    node = settings.NODE_NAME
    rows = {tag.name: tag for tag in Tag.objects.filter(node=node).filter(Q(image=image) | Q(name__in=names))}
    changed = False
    for name, tag in rows.items():
        if tag.image_id == image.pk and name not in names:
            tag.delete()
            changed = True
    for name in names:
        tag = rows.get(name)
        if tag is None:
            Tag.objects.create(node=node, name=name, image=image)
        elif tag.image_id != image.pk:
            # A tag moves: the name pointed at another image until now.
            tag.image = image
            tag.save(update_fields=("image",))
        else:
            continue
        changed = True
    return changed


def sync_images(image_ids) -> None:
    """Sync the images with these ids that still exist (those a build added or tagged)."""
    image_ids = list(image_ids)
    if not image_ids:
        return  # no transaction (a write lock) for nothing
    images = get_engine().images
    with transaction.atomic():
        for image_id in image_ids:
            try:
                record = images.get(image_id)
            except NotFound:
                continue
            sync_image(record)


@transaction.atomic
def reconcile_images() -> dict:
    """Make the models match the disk: add missing images, drop vanished ones, fix tags."""
    records = get_engine().images.list()
    seen = set()
    for record in records:
        sync_image(record)
        seen.add(record.id)
    stale = Image.objects.filter(node=settings.NODE_NAME).exclude(digest__in=seen)
    removed = list(stale.values_list("digest", flat=True))
    stale.delete()
    Layer.objects.filter(image_layers__isnull=True).delete()
    return {"images": len(seen), "removed": removed}


def forget_images(image_ids: list[str]) -> None:
    """Drop the rows of images the engine deleted."""
    Image.objects.filter(node=settings.NODE_NAME, digest__in=image_ids).delete()
    Layer.objects.filter(image_layers__isnull=True).delete()
    realtime.publish_on_commit(realtime.EVENTS_GROUP, {"type": "image.removed", "images": image_ids})


#
# Tag, remove, prune (quick: the caller waits for the worker's answer)
#

def tag_image(source: str, target: str, user=None, request=None) -> dict:
    from . import tasks

    parse_reference(target)  # refuse a bad name here, before the worker is asked
    result = nodes.call(tasks.tag_image, source, target)
    audit.record(request, "image.tag", None, source=source, target=target)
    return result


def remove_image(name: str, *, force: bool = False, user=None, request=None) -> list[dict]:
    from . import tasks

    result = nodes.call(tasks.remove_image, name, force)
    audit.record(request, "image.remove", None, name=name, force=force)
    return result


def prune_images(*, all: bool = False, request=None) -> dict:
    from . import tasks

    result = nodes.call(tasks.prune_images, all)
    audit.record(request, "image.prune", None, all=all)
    return result


def image_in_use(image_id: str):
    """The id of a container that uses the image (rmi refuses it unless forced), or False."""
    from containers.services import image_in_use as used_by_container

    return used_by_container(image_id)


def layer_in_use(chain_id: str) -> bool:
    return False


def docker_info_counts() -> dict:
    """The image count of ``docker info``."""
    return {"Images": Image.objects.filter(node=settings.NODE_NAME).count()}
