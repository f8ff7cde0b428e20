"""Celery tasks of the images app: thin shells that call services (Baserow's run_async_job).

The tasks of jobs (pull, push, import, load, save, build) keep no Celery result and have no result
backend: their outcome is the Job row, and nobody waits on their AsyncResult. With the app's Redis
backend, sending one cost the sender that backend's construction (Celery keeps one per thread, and
Daphne runs each request in a new thread) and a subscription to the result's channel: about 3 ms
of every ``docker build``.
"""

from celery import shared_task
from celery.backends.base import DisabledBackend

from project import nodes
from project.celery import app as celery_app
from project.engine import get_engine

from . import services

JOB_TASK = {"ignore_result": True, "backend": DisabledBackend(celery_app)}


@shared_task(**JOB_TASK)
def pull_image(job_id: int, credentials: list[str] | None = None) -> None:
    services.pull_image(job_id, credentials)


@shared_task(**JOB_TASK)
def push_image(job_id: int, credentials: list[str] | None = None) -> None:
    services.push_image(job_id, credentials)


@shared_task(**JOB_TASK)
def import_image(job_id: int) -> None:
    services.import_image(job_id)


@shared_task(**JOB_TASK)
def load_images(job_id: int) -> None:
    services.load_images(job_id)


@shared_task(**JOB_TASK)
def save_images(job_id: int) -> None:
    services.save_images(job_id)


@shared_task
def tag_image(source: str, target: str) -> dict:
    def run():
        record = get_engine().images.tag(source, target)
        services.sync_image(record)
        return {"image": record.id, "tag": target}

    return nodes.wrap_result(run)


@shared_task
def remove_image(name: str, force: bool) -> dict:
    def run():
        engine = get_engine()
        answer = engine.images.remove(name, force=force, in_use=services.image_in_use,
                                      layer_in_use=services.layer_in_use)
        deleted = [entry["Deleted"] for entry in answer if "Deleted" in entry]
        services.forget_images(deleted)
        # Untagged only: the image stays, with fewer tags.
        services.reconcile_images()
        return answer

    return nodes.wrap_result(run)


@shared_task
def prune_images(all: bool) -> dict:
    def run():
        answer = get_engine().images.prune(all=all, in_use=services.image_in_use)
        services.reconcile_images()
        return answer

    return nodes.wrap_result(run)


@shared_task
def reconcile_images() -> dict:
    return services.reconcile_images()


@shared_task(**JOB_TASK)
def build_image(job_id: int) -> None:
    services.build_image(job_id)


@shared_task
def prune_build_cache() -> dict:
    def run():
        from runtime.build import prune_cache

        answer = prune_cache(get_engine())
        services.reconcile_images()
        return answer

    return nodes.wrap_result(run)
