"""Named volumes, Docker's ``local`` driver: a directory per volume that outlives containers.

On disk, under the engine root (this module owns ``volumes/``)::

    volumes/<name>/_data        the volume's content: what containers mount
    volumes/<name>/meta.json    {"name", "driver": "local", "labels", "options", "created", "mountpoint"}
    volumes/.tmp-<random>/      a volume being created (renamed to <name> when complete) or
                                being removed (renamed away first, so it disappears at once)
    volumes/lock                flock(2)ed by remove and prune, and by callers that must not
                                race them (``locked()``)

A volume exists once ``volumes/<name>/meta.json`` does. Names are Docker's local-driver names
(``[a-zA-Z0-9][a-zA-Z0-9_.-]+``); a volume created without a name gets 64 random hex digits,
as ``docker volume create`` and anonymous ``-v /data`` volumes do.

Whether a volume is in use is the container side's knowledge: ``remove`` and ``prune`` take an
``in_use(name)`` callback. To close the race between "not in use" and a container being created
with the volume, create the container under ``with volumes.locked():`` too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import tarfile
import threading
from datetime import datetime, timezone
from typing import Callable, Iterator

from runtime import fsops, rootpath
from runtime.errors import AlreadyExists, InvalidArgument, InvalidState, NotFound
from runtime.fsutil import fsync_dir, write_json_synced

__all__ = ["ANONYMOUS_LABEL", "VolumeStore", "populate_from_image", "validate_name"]

DRIVER = "local"
# The label Docker (23+) puts on anonymous volumes (``docker run -v /data``).
ANONYMOUS_LABEL = "com.docker.volume.anonymous"
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_STAGING_PREFIX = ".tmp-"
_LIST_FILTERS = ("dangling", "driver", "label", "name")
_PRUNE_FILTERS = ("label", "label!")

InUse = Callable[[str], "bool | list[str] | str | None"]


def validate_name(name: str) -> None:
    """Raise InvalidArgument, in Docker's words, unless ``name`` is a valid local volume name."""
    if not isinstance(name, str) or len(name) < 2:
        raise InvalidArgument(
            "volume name is too short, names should be at least two alphanumeric characters")
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f'"{name}" includes invalid characters for a local volume name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" '
            "are allowed. If you intended to pass a host directory, use absolute path"
        )


class VolumeStore:
    """The volumes under ``<root>/volumes``. Safe to use from several threads and processes."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.volumes_dir = os.path.join(self.root, "volumes")
        self._lock_path = os.path.join(self.volumes_dir, "lock")
        os.makedirs(self.volumes_dir, mode=0o701, exist_ok=True)
        self._thread_lock = threading.local()

    #
    # Locking
    #

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the volumes lock (reentrant within a thread): remove and prune wait for it."""
        depth = getattr(self._thread_lock, "depth", 0)
        if depth:
            self._thread_lock.depth = depth + 1
            try:
                yield
            finally:
                self._thread_lock.depth -= 1
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._thread_lock.depth = 1
            try:
                yield
            finally:
                self._thread_lock.depth = 0
        finally:
            os.close(fd)

    #
    # Reading
    #

    def _dir(self, name: str) -> str:
        return os.path.join(self.volumes_dir, name)

    def data_path(self, name: str) -> str:
        """Where the volume's content lives (its ``Mountpoint``), whether or not it exists."""
        validate_name(name)
        return os.path.join(self._dir(name), "_data")

    def exists(self, name: str) -> bool:
        try:
            validate_name(name)
        except InvalidArgument:
            return False
        return os.path.isfile(os.path.join(self._dir(name), "meta.json"))

    def _meta(self, name: str) -> dict | None:
        try:
            with open(os.path.join(self._dir(name), "meta.json")) as f:
                return json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def get(self, name: str) -> dict:
        """Return the volume ``name`` in Docker's Volume shape; NotFound ("get x: no such volume")."""
        try:
            validate_name(name)
        except InvalidArgument:
            raise NotFound(f"get {name}: no such volume") from None
        meta = self._meta(name)
        if meta is None:
            raise NotFound(f"get {name}: no such volume")
        return _volume(meta)

    def names(self) -> list[str]:
        """Every volume's name, sorted."""
        found = []
        for entry in sorted(os.listdir(self.volumes_dir)):
            if entry.startswith(_STAGING_PREFIX) or not _NAME_RE.fullmatch(entry):
                continue
            if os.path.isfile(os.path.join(self.volumes_dir, entry, "meta.json")):
                found.append(entry)
        return found

    def list(self, filters: dict | None = None, in_use: InUse | None = None) -> list[dict]:
        """Return the volumes (``GET /volumes``'s ``Volumes``) that match Docker's ``filters``.

        ``filters`` is the API's map of lists (``{"label": ["a=b"], "dangling": ["true"]}``; the
        old ``{"label": {"a=b": true}}`` form too): ``name`` (a regular expression searched in the
        name, as Docker matches it), ``label`` (``key`` or ``key=value``, all must match),
        ``driver`` and ``dangling`` (``true``: in use by no container; needs ``in_use``).
        """
        filters = _normalise_filters(filters, _LIST_FILTERS)
        answer = []
        for name in self.names():
            meta = self._meta(name)
            if meta is None:
                continue
            volume = _volume(meta)
            if not _matches(volume, filters, in_use):
                continue
            answer.append(volume)
        return answer

    #
    # Creating
    #

    def create(self, name: str | None = None, labels: dict | None = None, *, driver: str = DRIVER,
               options: dict | None = None) -> dict:
        """Create a volume and return it (``POST /volumes/create``).

        Without a name it gets 64 random hex digits. Creating a volume that exists returns it as
        it is, as Docker does (its labels are not changed). Only the ``local`` driver exists, and
        it takes no options here (``type``/``device``/``o`` mounts are not supported).
        """
        if driver not in ("", DRIVER):
            raise InvalidArgument(f"error looking up volume plugin {driver}: plugin \"{driver}\" not found")
        if options:
            raise InvalidArgument(
                f"volume options are not supported by this driver: {', '.join(sorted(options))}")
        if name is None or name == "":
            name = secrets.token_hex(32)
        validate_name(name)
        labels = {str(k): str(v) for k, v in (labels or {}).items()}
        existing = self._meta(name)
        if existing is not None:
            return _volume(existing)

        staging = os.path.join(self.volumes_dir, _STAGING_PREFIX + secrets.token_hex(8))
        os.mkdir(staging, 0o701)
        try:
            data = os.path.join(staging, "_data")
            os.mkdir(data, 0o755)
            os.chmod(data, 0o755)  # not masked by the umask: containers' non-root users use it
            meta = {
                "name": name,
                "driver": DRIVER,
                "labels": labels,
                "options": None,
                "created": _now(),
                "mountpoint": os.path.join(self._dir(name), "_data"),
            }
            write_json_synced(os.path.join(staging, "meta.json"), meta)
            try:
                os.rename(staging, self._dir(name))
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # Created by someone else meanwhile: theirs is the volume.
                shutil.rmtree(staging, ignore_errors=True)
                existing = self._meta(name)
                if existing is None:
                    raise AlreadyExists(f"volume {name} is being created or removed, try again") from None
                return _volume(existing)
            fsync_dir(self.volumes_dir)
            return _volume(meta)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def ensure(self, name: str, labels: dict | None = None) -> str:
        """Return the ``_data`` path of the volume ``name``, creating it first if it does not exist.

        What ``docker run -v name:/path`` does. Holds the volumes lock so a concurrent prune
        cannot remove it between the check and the creation.
        """
        with self.locked():
            self.create(name, labels)
            return self.data_path(name)

    def mountpoint(self, name: str) -> str:
        """The host path to mount for the volume ``name``, created on first use (for runtime.containers)."""
        return self.ensure(name)

    #
    # Removing
    #

    def remove(self, name: str, force: bool = False, in_use: InUse | None = None) -> None:
        """Remove the volume ``name`` and its content (``DELETE /volumes/{name}``).

        NotFound if it does not exist (unless ``force``); InvalidState ("remove x: volume is in
        use - [ids]") if ``in_use(name)`` says a container uses it: even with ``force``, as
        Docker refuses it too.
        """
        with self.locked():
            if not self.exists(name):
                if force:
                    return
                raise NotFound(f"get {name}: no such volume")
            users = in_use(name) if in_use is not None else None
            if users:
                raise InvalidState(f"remove {name}: volume is in use - {_users(users)}")
            self._delete(name)

    def prune(self, in_use: InUse, filters: dict | None = None) -> dict:
        """Remove every volume no container uses (``POST /volumes/prune``, API 1.41: named ones too).

        ``filters``: ``label`` / ``label!`` (``key`` or ``key=value``). Returns
        ``{"VolumesDeleted": [names], "SpaceReclaimed": bytes}``.
        """
        filters = _normalise_filters(filters, _PRUNE_FILTERS)
        deleted, reclaimed = [], 0
        with self.locked():
            for name in self.names():
                meta = self._meta(name)
                if meta is None or in_use(name):
                    continue
                labels = meta.get("labels") or {}
                if not all(_label_match(labels, f) for f in filters.get("label", [])):
                    continue
                if any(_label_match(labels, f) for f in filters.get("label!", [])):
                    continue
                reclaimed += _tree_size(os.path.join(self._dir(name), "_data"))
                self._delete(name)
                deleted.append(name)
        return {"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed}

    def _delete(self, name: str) -> None:
        """Rename the volume aside (so it is gone at once), then delete it."""
        doomed = os.path.join(self.volumes_dir, f"{_STAGING_PREFIX}rm-{secrets.token_hex(8)}")
        try:
            os.rename(self._dir(name), doomed)
        except FileNotFoundError:
            raise NotFound(f"get {name}: no such volume") from None
        fsync_dir(self.volumes_dir)
        shutil.rmtree(doomed, ignore_errors=True)

    def clean_staging(self) -> None:
        """Remove half-created and half-removed volumes. Call at engine start only."""
        for entry in os.listdir(self.volumes_dir):
            if entry.startswith(_STAGING_PREFIX):
                shutil.rmtree(os.path.join(self.volumes_dir, entry), ignore_errors=True)

    def populate_from_image(self, volume_path: str, rootfs: str, target: str) -> bool:
        """See the module function ``populate_from_image``."""
        return populate_from_image(volume_path, rootfs, target)


#
# Copying the image's content into a new volume
#


def populate_from_image(volume_path: str, rootfs: str, target: str) -> bool:
    """Copy what the container's image has at ``target`` into an empty volume; return True if it did.

    What Docker does when a volume is mounted on a path that has content in the image (unless
    ``nocopy``): if the volume directory is empty and ``target`` (resolved inside ``rootfs``,
    symlinks followed in scope) is a directory, its whole content is copied with owners,
    modes, times, xattrs and hardlinks, and the volume's root takes the owner and mode of the
    image's directory. A volume that is not empty, or a target that is missing or not a
    directory, is left alone (False). Call it before the container starts, with its rootfs
    mounted.
    """
    volume_fd = os.open(volume_path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.listdir(volume_fd):
            return False
        root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                source_fd, _ = rootpath.open_dir(root_fd, rootpath.split_path(target))
            except (NotFound, InvalidArgument):
                return False
            try:
                _copy_tree(source_fd, volume_fd)
                st = os.fstat(source_fd)
                os.fchown(volume_fd, st.st_uid, st.st_gid)
                os.fchmod(volume_fd, stat.S_IMODE(st.st_mode))
                os.utime(volume_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(source_fd)
        finally:
            os.close(root_fd)
        return True
    finally:
        os.close(volume_fd)


def _copy_tree(source_fd: int, dest_fd: int) -> None:
    """Copy the content of directory ``source_fd`` into ``dest_fd`` through a tar stream.

    The same packer as ``docker cp`` reads (fds, no symlink followed) and the same extractor
    writes (``dest_fd`` as the root: nothing lands outside it), in two threads over a pipe.
    """
    read_end, write_end = os.pipe()
    errors: list[BaseException] = []

    def pack() -> None:
        try:
            with os.fdopen(write_end, "wb") as out, \
                    tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                fsops._TreePacker(tf).walk(source_fd, "")
        except BaseException as exc:  # reported by the reader below
            errors.append(exc)

    writer = threading.Thread(target=pack, name="volume-populate", daemon=True)
    writer.start()
    try:
        with os.fdopen(read_end, "rb") as stream:
            try:
                fsops._Extractor(dest_fd, [], no_overwrite_dir_non_dir=False).extract(stream)
            finally:
                stream.read()  # let the writer finish even if extraction failed
    finally:
        writer.join()
    if errors:
        raise errors[0]


#
# Helpers
#


def _volume(meta: dict) -> dict:
    """Docker's Volume object from our meta.json."""
    return {
        "CreatedAt": meta.get("created", ""),
        "Driver": meta.get("driver", DRIVER),
        "Labels": dict(meta.get("labels") or {}),
        "Mountpoint": meta.get("mountpoint", ""),
        "Name": meta["name"],
        "Options": meta.get("options"),
        "Scope": "local",
    }


def _normalise_filters(filters: dict | None, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    """``{"k": ["v"]}`` or ``{"k": {"v": true}}`` -> ``{"k": ["v"]}``; InvalidArgument for unknown keys."""
    out: dict[str, list[str]] = {}
    for key, values in (filters or {}).items():
        if key not in allowed:
            raise InvalidArgument(f"invalid filter '{key}'")
        if isinstance(values, dict):
            values = [k for k, v in values.items() if v]
        elif isinstance(values, str):
            values = [values]
        out[key] = [str(v) for v in values]
    return out


def _matches(volume: dict, filters: dict[str, list[str]], in_use: InUse | None) -> bool:
    for pattern in filters.get("name", []):
        try:
            if not re.search(pattern, volume["Name"]):
                return False
        except re.error:
            if pattern not in volume["Name"]:
                return False
    if filters.get("driver") and volume["Driver"] not in filters["driver"]:
        return False
    if not all(_label_match(volume["Labels"], f) for f in filters.get("label", [])):
        return False
    for value in filters.get("dangling", []):
        if value.lower() in ("true", "1"):
            want_dangling = True
        elif value.lower() in ("false", "0"):
            want_dangling = False
        else:
            raise InvalidArgument(f"invalid filter 'dangling={value}'")
        if in_use is None:
            raise InvalidArgument("the dangling filter needs to know which volumes are in use")
        if bool(in_use(volume["Name"])) == want_dangling:
            return False
    return True


def _label_match(labels: dict, spec: str) -> bool:
    key, eq, value = spec.partition("=")
    if key not in labels:
        return False
    return not eq or labels[key] == value


def _users(users) -> str:
    if isinstance(users, str):
        return f"[{users}]"
    if isinstance(users, (list, tuple, set)):
        return "[" + ", ".join(str(u) for u in users) + "]"
    return "[]"


def _tree_size(path: str) -> int:
    """Bytes of regular file content under ``path``, each inode counted once; symlinks not followed."""
    total, seen = 0, set()
    for top, dirs, files, dir_fd in os.fwalk(path):
        for name in files:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
