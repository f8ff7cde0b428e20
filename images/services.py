"""The rules of images: pull, tag, remove, prune, and keeping the models in step with the disk.

Views and the Docker API call these; these call the engine (in the worker, through tasks) and
write the models from the engine's answers.
"""

from __future__ import annotations

import datetime
import logging

from django.conf import settings
from django.db import transaction

from project import audit, nodes, realtime
from project.choices import JobKindChoices
from project.engine import get_engine
from project.jobs import JobRun, create_job
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
    job = create_job(JobKindChoices.PULL, ref.familiar, user, reference=ref.full)
    audit.record(request, "image.pull", job, reference=ref.familiar)
    kwargs = {"credentials": list(credentials)} if credentials else {}
    transaction.on_commit(lambda: tasks.pull_image.apply_async((job.pk,), kwargs, queue=nodes.node_queue()))
    return job


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


@transaction.atomic
def sync_image(record: ImageRecord, job=None) -> Image:
    """Create or update the rows of one image (its layers and tags) from the engine's record."""
    image, created = Image.objects.update_or_create(
        digest=record.id,
        defaults=dict(node=settings.NODE_NAME, size=record.size, created=_parse_time(record.created),
                      architecture=record.architecture, os=record.os, config=record.config,
                      repo_digests=record.repo_digests),
    )
    if job is not None and image.job_id is None:
        image.job = job
        image.save(update_fields=("job",))
    if created or image.image_layers.count() != len(record.layers):
        image.image_layers.all().delete()
        for position, info in enumerate(record.layers):
            layer, _ = Layer.objects.update_or_create(
                chain_id=info["chain_id"],
                defaults=dict(diff_id=info["diff_id"], digest=info.get("digest") or "", size=info.get("size") or 0),
            )
            ImageLayer.objects.create(image=image, layer=layer, position=position)
    _sync_tags(image, record.repo_tags)
    realtime.publish_on_commit(realtime.EVENTS_GROUP, {"type": "image.changed", "image": record.id})
    return image


def _sync_tags(image: Image, names: list[str]) -> None:
    node = settings.NODE_NAME
    Tag.objects.filter(node=node, image=image).exclude(name__in=names).delete()
    for name in names:
        # A tag moves: the name may point at another image until now.
        Tag.objects.update_or_create(node=node, name=name, defaults={"image": image})


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


def image_in_use(image_id: str) -> bool:
    """True while a container uses the image (containers arrive with the containers issue)."""
    return False


def layer_in_use(chain_id: str) -> bool:
    return False


def docker_info_counts() -> dict:
    """The image count of ``docker info``."""
    return {"Images": Image.objects.filter(node=settings.NODE_NAME).count()}
