"""Celery tasks of the containers app: thin shells over services (the worker owns engine state)."""

from celery import shared_task

from project import nodes

from . import services


@shared_task
def create_container(config: dict, user_id: int | None = None, start: bool = False) -> dict:
    return nodes.wrap_result(services.do_create, config, user_id, start)


@shared_task
def container_action(container_id: str, action: str, kwargs: dict) -> dict:
    return nodes.wrap_result(services.do_action, container_id, action, **kwargs)


@shared_task
def reconcile_containers() -> dict:
    return services.reconcile_containers()


@shared_task
def copy_in(container_id: str, path: str, staged: str, no_overwrite_dir_non_dir: bool = False) -> dict:
    return nodes.wrap_result(services.do_copy_in, container_id, path, staged, no_overwrite_dir_non_dir)


@shared_task
def exec_detached(exec_id: str) -> dict:
    return nodes.wrap_result(services.do_exec_detached, exec_id)


@shared_task
def commit(container_id: str, reference: str, changes: list, message: str, author: str, pause: bool) -> dict:
    return nodes.wrap_result(services.do_commit, container_id, reference, changes, message, author, pause)


@shared_task
def prune() -> dict:
    return nodes.wrap_result(services.do_prune)


@shared_task
def volume_create(name: str | None, labels: dict | None) -> dict:
    return nodes.wrap_result(services.do_volume_create, name, labels)


@shared_task
def volume_remove(name: str, force: bool) -> dict:
    return nodes.wrap_result(services.do_volume_remove, name, force)


@shared_task
def volume_prune(filters: dict | None) -> dict:
    return nodes.wrap_result(services.do_volume_prune, filters)


@shared_task
def restart_by_policy(container_id: str, finished_at: str | None = None) -> dict:
    return nodes.wrap_result(services.do_restart_by_policy, container_id, finished_at)


@shared_task
def exec_run(container_id: str, cmd: list, user: str, workdir: str, env: list, user_id: int | None) -> dict:
    return nodes.wrap_result(services.do_exec_run, container_id, cmd, user, workdir, env, user_id)


HIJACK_ACTIONS = ("init", "exec_session")


@shared_task
def hijack(action: str, *args) -> dict:
    """The worker's side of the Docker API's hijacked streams (project/dockerapi/hijack.py do_*)."""
    from project.dockerapi import hijack as views

    if action not in HIJACK_ACTIONS:
        raise ValueError(f"unknown hijack action {action!r}")
    return nodes.wrap_result(getattr(views, f"do_{action}"), *args)


@shared_task
def exec_session(container_id: str, cmd: list, user: str, workdir: str, rows: int, cols: int) -> dict:
    return nodes.wrap_result(services.do_exec_session, container_id, cmd, user, workdir, rows, cols)


@shared_task
def network_action(action: str, *args) -> dict:
    return nodes.wrap_result(services.do_network_action, action, *args)
