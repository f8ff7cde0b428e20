"""A container's files, by container: docker diff, cp, export, commit, and the file browser.

runtime.fsops works on directories (an upper dir, lower dirs, a root); this module finds them for
a container and mounts its root filesystem for the time of the operation when the container is not
running (a running container's root is already mounted at ``<dir>/merged``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from typing import BinaryIO, Callable, Iterator

from . import fsops, rootpath
from .containers import ContainerRecord, ContainerStore
from .errors import InvalidState
from .images import ImageRecord
from .rootfs import is_mounted, mount_rootfs, unmount_rootfs

CHUNK = 256 * 1024


def lower_dirs(containers: ContainerStore, record: ContainerRecord) -> list[str]:
    """The container's image layers' diff dirs, bottom first."""
    image = containers.images.get(record.image_id)
    return [containers.layers.get(c).path for c in image.chain_ids]


def upper_dir(containers: ContainerStore, record: ContainerRecord) -> str:
    return os.path.join(containers.root, record.id, "upper")


@contextlib.contextmanager
def mounted_root(containers: ContainerStore, id_or_name: str):
    """Yield (record, root dir) with the container's root filesystem mounted."""
    record = containers.get(id_or_name)
    container_dir = os.path.join(containers.root, record.id)
    merged = os.path.join(container_dir, "merged")
    if is_mounted(merged):
        yield record, merged
        return
    mount_rootfs(container_dir, lower_dirs(containers, record), links_dir=containers.links_dir)
    try:
        yield record, merged
    finally:
        # A start in the meantime uses the mount: leave it then.
        if not containers.get(record.id).running:
            unmount_rootfs(container_dir)


def diff(containers: ContainerStore, id_or_name: str) -> list[dict]:
    """``docker diff``: [{"Path", "Kind"}] of the container's read-write layer."""
    record = containers.get(id_or_name)
    return fsops.diff(upper_dir(containers, record), lower_dirs(containers, record))


def stat_path(containers: ContainerStore, id_or_name: str, path: str) -> dict:
    with mounted_root(containers, id_or_name) as (record, root):
        return fsops.stat_path(root, path, container_id=record.id)


def stream(produce: Callable[[BinaryIO], None]) -> Iterator[bytes]:
    """Run ``produce(out)`` in a thread and yield what it writes, chunk by chunk, as it writes it.

    A consumer that stops early closes the pipe: the producer's next write fails and it ends.
    The producer's error, if any, is raised after the last chunk.
    """
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def run():
        try:
            with os.fdopen(write_fd, "wb") as out:
                produce(out)
        except BrokenPipeError:
            pass
        except BaseException as exc:  # raised to the consumer below
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="berth-stream")
    thread.start()
    with os.fdopen(read_fd, "rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk
    thread.join()
    if failure:
        raise failure[0]


def copy_out(containers: ContainerStore, id_or_name: str, path: str) -> Iterator[bytes]:
    """``docker cp CTR:path -``: the tar, streamed. Check the path first with ``stat_path``."""

    def produce(out):
        with mounted_root(containers, id_or_name) as (record, root):
            fsops.copy_out(root, path, out, container_id=record.id)

    return stream(produce)


def copy_in(containers: ContainerStore, id_or_name: str, path: str, tar_stream: BinaryIO, *,
            no_overwrite_dir_non_dir: bool = False) -> None:
    """``docker cp - CTR:path``: never on a read-only root filesystem, never outside the root."""
    record = containers.get(id_or_name)
    if record.config.read_only and record.running:
        raise InvalidState(f"container {record.name} has a read-only root filesystem")
    with mounted_root(containers, record.id) as (record, root):
        fsops.copy_in(root, path, tar_stream, no_overwrite_dir_non_dir=no_overwrite_dir_non_dir,
                      container_id=record.id)


def export(containers: ContainerStore, id_or_name: str) -> Iterator[bytes]:
    """``docker export``: the container's whole filesystem as a flat tar, streamed."""

    def produce(out):
        with mounted_root(containers, id_or_name) as (_, root):
            fsops.export_rootfs(root, out)

    return stream(produce)


def list_dir(containers: ContainerStore, id_or_name: str, path: str) -> list[dict]:
    """The entries of a directory of the container, for the file browser (symlinks resolved in scope)."""
    with mounted_root(containers, id_or_name) as (_, root):
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            dir_fd, names = rootpath.open_dir(root_fd, rootpath.split_path(path))
        finally:
            os.close(root_fd)
        try:
            entries = []
            base = "/" + "/".join(names)
            for name in sorted(os.listdir(dir_fd)):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                link = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else ""
                entries.append({
                    "name": name, "path": (base.rstrip("/") + "/" + name), "size": st.st_size,
                    "is_dir": stat.S_ISDIR(st.st_mode), "link_target": link,
                    "mode_text": stat.filemode(st.st_mode),
                })
            return entries
        finally:
            os.close(dir_fd)


def commit(containers: ContainerStore, store, id_or_name: str, *, reference: str | None = None,
           changes=(), message: str = "", author: str = "", pause: bool = True) -> ImageRecord:
    """``docker commit``: the read-write layer on top of the image's layers becomes a new image."""
    record = containers.get(id_or_name)
    pauser = None
    if pause and record.running:
        def pauser():
            containers.pause(record.id)
            return lambda: containers.unpause(record.id)
    return fsops.commit_image(
        containers.images, store, containers.layers, parent_image_id=record.image_id,
        upper_dir=upper_dir(containers, record), container_config=containers.inspect(record.id)["Config"],
        reference=reference, changes=changes, message=message, author=author, pause=pauser,
        container_id=record.id,
    )
