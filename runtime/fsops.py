"""Reading and writing a container's filesystem: diff, cp, commit and export.

Two views of a container's files are used here (see runtime.rootfs for the layout):

- the *upper dir* (``<container>/upper``): the container's own read-write layer, with overlay
  whiteouts (char devices 0:0) and opaque directories (``trusted.overlay.opaque=y``). ``diff``
  and the commit read it, against the image's layer diff dirs (the *lower dirs*);
- the *rootfs* (``<container>/merged``, mounted): what the container sees as ``/``. ``cp`` and
  ``export`` read and write it.

Every path given by a caller is a path *inside the container*, resolved as the container would
resolve it (runtime.rootpath): symlinks are followed inside the root, never to a host path, and
every read and write goes through directory fds with O_NOFOLLOW, so a running container that
swaps a directory for a symlink cannot redirect us. Lower dirs passed to this module are
BOTTOM FIRST, in the order of the image's chain_ids (as for ``rootfs.mount_rootfs``).

Mount points. Docker keeps the files it bind-mounts into every container (``/etc/hosts``,
``/etc/hostname``, ``/etc/resolv.conf``, ``/.dockerenv``) and the ``/proc``, ``/sys`` and
``/dev`` mount points in a hidden "init" layer between the image and the container's layer, so
``docker diff`` and ``docker commit`` never see them. We have no init layer: runc creates the
missing mount points in the upper dir (an empty file, an empty directory, and ``/etc`` when the
image has none). ``diff`` and ``commit_layer`` leave out exactly those, see
``mount_point_leftovers``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tarfile
from datetime import datetime, timezone
from typing import BinaryIO, Callable, Iterable

from runtime import archive, rootpath
from runtime.archive import OPAQUE_XATTR, OVERLAY_XATTR_PREFIX, WHITEOUT_META_PREFIX, WHITEOUT_OPAQUE
from runtime.digest import Digest
from runtime.errors import AlreadyExists, EngineError, InvalidArgument, NotFound, UnsafeArchive
from runtime.images import ImageRecord, ImageStore, apply_changes
from runtime.layers import LayerStore, chain_id_of
from runtime.manifest import MEDIA_TYPE_OCI_LAYER
from runtime.reference import parse_reference
from runtime.store import Store

__all__ = [
    "CHANGE_ADDED",
    "CHANGE_DELETED",
    "CHANGE_MODIFIED",
    "MOUNT_POINTS",
    "commit_image",
    "commit_layer",
    "copy_in",
    "copy_out",
    "diff",
    "export_rootfs",
    "go_file_mode",
    "mount_point_leftovers",
    "stat_path",
]

# Kinds of GET /containers/{id}/changes.
CHANGE_MODIFIED = 0
CHANGE_ADDED = 1
CHANGE_DELETED = 2

# What Docker's init layer holds (moby daemon/initlayer) and runc creates in our upper dir when
# the image lacks it: path inside the container -> "file" or "dir".
MOUNT_POINTS = {
    ".dockerenv": "file",
    "etc/hostname": "file",
    "etc/hosts": "file",
    "etc/resolv.conf": "file",
    "dev": "dir",
    "proc": "dir",
    "sys": "dir",
}
# Directories whose content ``export_rootfs`` leaves out: kernel filesystems' mount points.
EXPORT_SKIP_CONTENT = ("proc", "sys")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20

# Go's os.FileMode bits, as Docker's X-Docker-Container-Path-Stat carries them.
_GO_MODE_DIR = 1 << 31
_GO_MODE_SYMLINK = 1 << 27
_GO_MODE_DEVICE = 1 << 26
_GO_MODE_NAMED_PIPE = 1 << 25
_GO_MODE_SOCKET = 1 << 24
_GO_MODE_SETUID = 1 << 23
_GO_MODE_SETGID = 1 << 22
_GO_MODE_CHAR_DEVICE = 1 << 21
_GO_MODE_STICKY = 1 << 20


#
# Lower layers as overlay sees them
#


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return False
        raise


def _lower_lookup(lower_fds: list[int], leaf: str,
                  open_dirs: bool) -> tuple[os.stat_result | None, list[int]]:
    """Look ``leaf`` up in one merged directory of the lower layers, as overlayfs does.

    ``lower_fds`` are that directory's fds in each layer where it is a directory, TOP FIRST.
    Returns the stat of the entry the merged view shows (None if absent or whited out) and, when
    it is a directory and ``open_dirs``, new fds of it in each layer that contributes to it
    (stopping below an opaque one); the caller closes them.
    """
    visible = None
    dirs: list[int] = []
    try:
        for fd in lower_fds:
            try:
                st = os.stat(leaf, dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if _is_whiteout(st):
                break
            if visible is None:
                visible = st
            if not stat.S_ISDIR(st.st_mode) or not stat.S_ISDIR(visible.st_mode):
                break  # A non-directory hides everything below it.
            if not open_dirs:
                break
            child = os.open(leaf, _DIR_FLAGS, dir_fd=fd)
            dirs.append(child)
            if _is_opaque(child):
                break
    except BaseException:
        for fd in dirs:
            os.close(fd)
        raise
    return visible, dirs


def _lower_stat(lower_dirs_top_first: list[str], parts: list[str]) -> os.stat_result | None:
    """The stat of ``parts`` in the merged view of the lower layers, None if it is not there."""
    fds = [os.open(d, _DIR_FLAGS) for d in lower_dirs_top_first]
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            visible, children = _lower_lookup(fds, part, open_dirs=not last)
            for fd in fds:
                os.close(fd)
            fds = children
            if visible is None or last:
                return visible
            if not stat.S_ISDIR(visible.st_mode):
                return None
        return None
    finally:
        for fd in fds:
            os.close(fd)


def _open_in(base_fd: int, parts: list[str]) -> int | None:
    """Open the directory ``parts`` under ``base_fd`` without following symlinks; None if it is not one."""
    fd = os.dup(base_fd)
    for part in parts:
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd


def _lstat_in(base_fd: int, parts: list[str]) -> os.stat_result | None:
    parent = _open_in(base_fd, parts[:-1])
    if parent is None:
        return None
    try:
        return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(parent)


def mount_point_leftovers(upper_dir: str, lower_dirs: list[str] | None) -> set[str]:
    """Return the paths (relative, e.g. ``etc/hosts``) in ``upper_dir`` that only runc put there.

    1. A MOUNT_POINTS file that is an empty regular file, or directory that is empty and not
       opaque, and that the lower layers do not have: a mount point runc created.
    2. A parent of those (``etc``) that holds nothing else, is not opaque, and that the lower
       layers do not have or have with the same mode and owner (only its mtime moved, when runc
       created the mount point in it).

    With ``lower_dirs`` None (unknown), the lower layers are taken as lacking the mount points
    (step 1) and parents are always kept (step 2 is skipped).
    """
    lowers = list(reversed(lower_dirs)) if lower_dirs is not None else None
    upper_fd = os.open(upper_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        found: set[str] = set()
        for path, kind in MOUNT_POINTS.items():
            parts = path.split("/")
            st = _lstat_in(upper_fd, parts)
            if st is None:
                continue
            if kind == "file" and not (stat.S_ISREG(st.st_mode) and st.st_size == 0):
                continue
            if kind == "dir":
                fd = _open_in(upper_fd, parts)
                if fd is None:
                    continue
                try:
                    if os.listdir(fd) or _is_opaque(fd):
                        continue
                finally:
                    os.close(fd)
            if lowers is not None and _lower_stat(lowers, parts) is not None:
                continue
            found.add(path)
        if lowers is None:
            return found
        parents = {p.rpartition("/")[0] for p in found if "/" in p}
        for parent in sorted(parents, key=lambda p: -p.count("/")):
            parts = parent.split("/")
            fd = _open_in(upper_fd, parts)
            if fd is None:
                continue
            try:
                children = os.listdir(fd)
                if _is_opaque(fd) or any(f"{parent}/{c}" not in found for c in children):
                    continue
                st = os.fstat(fd)
            finally:
                os.close(fd)
            below = _lower_stat(lowers, parts)
            owner_and_mode = (st.st_mode, st.st_uid, st.st_gid)
            if below is not None and (below.st_mode, below.st_uid, below.st_gid) != owner_and_mode:
                continue
            found.add(parent)
        return found
    finally:
        os.close(upper_fd)


#
# docker diff
#


def diff(upper_dir: str, lower_dirs: list[str]) -> list[dict]:
    """Return ``GET /containers/{id}/changes``: ``[{"Path": "/etc/x", "Kind": 0|1|2}]``.

    ``lower_dirs`` are the image's layer diff dirs, BOTTOM FIRST. As moby's OverlayChanges:

    - a whiteout in the upper dir is Deleted (2);
    - an opaque directory whose path the lower layers have is Deleted (it was removed and made
      again); its entries are then Added, since nothing below shows through it;
    - any other entry is Modified (0) if the lower layers (merged as overlay merges them, with
      their own whiteouts and opaque dirs) have the path, else Added (1). A directory whose
      size, mode and mtime equal the lower one's is not listed for itself (it was only copied up
      to hold a change), but the parents of every Added or Deleted entry are listed as Modified.

    Mount points only runc created are left out (``mount_point_leftovers``). The answer is
    sorted by path, component by component (the order of ``docker diff``).
    """
    lowers = list(reversed(lower_dirs))
    leftovers = mount_point_leftovers(upper_dir, lower_dirs)
    changes: list[tuple[tuple[str, ...], int]] = []
    changed_dirs: set[tuple[str, ...]] = set()
    upper_fd = os.open(upper_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    lower_fds = [os.open(d, _DIR_FLAGS) for d in lowers]
    try:
        _diff_dir(upper_fd, lower_fds, (), changes, changed_dirs, leftovers)
    finally:
        os.close(upper_fd)
        for fd in lower_fds:
            os.close(fd)
    changes.sort(key=lambda c: c[0])
    return [{"Path": "/" + "/".join(parts), "Kind": kind} for parts, kind in changes]


def _diff_dir(upper_fd: int, lower_fds: list[int], prefix: tuple[str, ...], changes: list,
              changed_dirs: set, leftovers: set[str]) -> None:
    """Walk one directory of the upper dir; ``lower_fds`` is the same directory in the lower layers."""
    for leaf in sorted(os.listdir(upper_fd)):
        path = prefix + (leaf,)
        if "/".join(path) in leftovers:
            continue
        try:
            st = os.stat(leaf, dir_fd=upper_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # Removed while we walk (a running container).
        is_dir = stat.S_ISDIR(st.st_mode)
        child_fd = None
        if is_dir:
            try:
                child_fd = os.open(leaf, _DIR_FLAGS, dir_fd=upper_fd)
            except OSError:
                continue
        try:
            opaque = child_fd is not None and _is_opaque(child_fd)
            below, child_lowers = _lower_lookup(lower_fds, leaf, open_dirs=is_dir and not opaque)
            try:
                record = True
                if _is_whiteout(st):
                    kind = CHANGE_DELETED
                elif opaque and below is not None:
                    kind = CHANGE_DELETED
                elif below is None:
                    kind = CHANGE_ADDED
                else:
                    kind = CHANGE_MODIFIED
                    if is_dir and stat.S_ISDIR(below.st_mode) and _same_dir(st, below):
                        record = False  # Only copied up to hold a change below it.
                if record:
                    if kind in (CHANGE_ADDED, CHANGE_DELETED):
                        for i in range(1, len(path)):
                            parent = path[:i]
                            if parent not in changed_dirs:
                                changed_dirs.add(parent)
                                changes.append((parent, CHANGE_MODIFIED))
                    if is_dir:
                        changed_dirs.add(path)
                    changes.append((path, kind))
                if child_fd is not None:
                    _diff_dir(child_fd, child_lowers, path, changes, changed_dirs, leftovers)
            finally:
                for fd in child_lowers:
                    os.close(fd)
        finally:
            if child_fd is not None:
                os.close(child_fd)


def _same_dir(a: os.stat_result, b: os.stat_result) -> bool:
    """moby's test for an unchanged directory: same size, mode and mtime (nanoseconds may be lost)."""
    if a.st_size != b.st_size or a.st_mode != b.st_mode:
        return False
    a_s, a_ns = divmod(a.st_mtime_ns, 1_000_000_000)
    b_s, b_ns = divmod(b.st_mtime_ns, 1_000_000_000)
    return a_s == b_s and (a_ns == b_ns or a_ns == 0 or b_ns == 0)


#
# Stat and tar of paths in the rootfs
#


def go_file_mode(st_mode: int) -> int:
    """Return Go's os.FileMode for a stat mode, as Docker puts it in a path stat."""
    mode = st_mode & 0o777
    kind = stat.S_IFMT(st_mode)
    if kind == stat.S_IFDIR:
        mode |= _GO_MODE_DIR
    elif kind == stat.S_IFLNK:
        mode |= _GO_MODE_SYMLINK
    elif kind == stat.S_IFBLK:
        mode |= _GO_MODE_DEVICE
    elif kind == stat.S_IFCHR:
        mode |= _GO_MODE_DEVICE | _GO_MODE_CHAR_DEVICE
    elif kind == stat.S_IFIFO:
        mode |= _GO_MODE_NAMED_PIPE
    elif kind == stat.S_IFSOCK:
        mode |= _GO_MODE_SOCKET
    if st_mode & stat.S_ISUID:
        mode |= _GO_MODE_SETUID
    if st_mode & stat.S_ISGID:
        mode |= _GO_MODE_SETGID
    if st_mode & stat.S_ISVTX:
        mode |= _GO_MODE_STICKY
    return mode


def _rfc3339_nano(ns: int) -> str:
    """A time as Go's RFC3339Nano in UTC: fraction without trailing zeros, none when whole."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


class _Target:
    """A path of a ``docker cp`` request, resolved in the container root.

    ``name`` is the base name Docker gives the entry (in the stat and as the tar's top entry),
    ``resolved`` where it is: the final component is not followed, unless the path ends in ``/``
    or ``/.`` (then it must be a directory) or ``follow_link``.
    """

    def __init__(self, root_fd: int, path: str, *, follow_link: bool, container_id: str):
        self.path = path
        self.container_id = container_id
        raw = path if path.startswith("/") else "/" + path
        trailing_dot = raw == "/." or raw.endswith("/.")
        trailing_sep = len(raw) > 1 and raw.endswith("/")
        parts = rootpath.split_path(raw)
        if not parts:
            self.name = "/"
        elif trailing_dot:
            self.name = "."
        else:
            self.name = parts[-1]
        follow = follow_link or trailing_dot or trailing_sep
        try:
            self.resolved = rootpath.resolve(root_fd, parts, follow_final=follow)
        except (NotFound, InvalidArgument):
            raise self.not_found() from None
        if (trailing_dot or trailing_sep) and not stat.S_ISDIR(self.resolved.stat.st_mode):
            self.resolved.close()
            raise self.not_found()

    def not_found(self) -> NotFound:
        where = f" in container {self.container_id}" if self.container_id else " in container"
        return NotFound(f"Could not find the file {self.path}{where}")

    def close(self) -> None:
        self.resolved.close()


def _open_root(rootfs: str) -> int:
    try:
        return os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"container root filesystem {rootfs} does not exist") from None


def _stat_of(root_fd: int, target: _Target) -> dict:
    st = target.resolved.stat
    link_target = ""
    if stat.S_ISLNK(st.st_mode):
        link_target = _link_target(root_fd, target.resolved.names)
    return {
        "name": target.name,
        "size": st.st_size,
        "mode": go_file_mode(st.st_mode),
        "mtime": _rfc3339_nano(st.st_mtime_ns),
        "linkTarget": link_target,
    }


def _link_target(root_fd: int, names: list[str]) -> str:
    """The path a symlink leads to, fully resolved inside the root (lexically past a dangling part)."""
    try:
        with rootpath.resolve(root_fd, names, follow_final=True, must_exist=False, lenient=True) as res:
            return res.path
    except (NotFound, InvalidArgument):
        return "/" + "/".join(names)


def stat_path(rootfs: str, path: str, *, container_id: str = "") -> dict:
    """Return the stat of ``path`` in the container (``HEAD /containers/{id}/archive``).

    The dict is Docker's ContainerPathStat: ``name``, ``size``, ``mode`` (Go FileMode bits),
    ``mtime`` (RFC 3339) and ``linkTarget`` (for a symlink, where it leads inside the container,
    fully resolved; else ""). The HTTP layer sends it base64-encoded in the
    ``X-Docker-Container-Path-Stat`` header. NotFound ("Could not find the file /x in container
    y") if the path does not exist.
    """
    root_fd = _open_root(rootfs)
    try:
        target = _Target(root_fd, path, follow_link=False, container_id=container_id)
        try:
            return _stat_of(root_fd, target)
        finally:
            target.close()
    finally:
        os.close(root_fd)


def copy_out(rootfs: str, path: str, out: BinaryIO, *, follow_link: bool = False,
             container_id: str = "") -> dict:
    """Write a tar of ``path`` in the container to ``out`` (``docker cp CTR:path -``); return its stat.

    ``rootfs`` is the container's mounted root (``merged``). The tar's top entry is named as
    Docker names it: the path's base name (``etc``, then ``etc/passwd``...), ``.`` for a path
    ending in ``/.`` and ``/`` for the root. Symlinks on the way are followed inside the
    container; a final symlink is archived as a symlink (Docker's default; ``follow_link`` is
    ``docker cp -L``). Directories are archived whole, with owners, modes, mtimes, xattrs,
    hardlinks and devices; sockets are skipped. Returns the same dict as ``stat_path``.
    """
    root_fd = _open_root(rootfs)
    try:
        target = _Target(root_fd, path, follow_link=follow_link, container_id=container_id)
        try:
            answer = _stat_of(root_fd, target)
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                packer = _TreePacker(tf)
                res = target.resolved
                if res.leaf is None:
                    # The root: Docker names its entries "/", "/bin", ...
                    packer.add_dir(res.parent_fd, "/", prefix="/")
                else:
                    packer.entry(res.parent_fd, res.leaf, target.name)
            return answer
        finally:
            target.close()
    finally:
        os.close(root_fd)


class _TreePacker(archive._Packer):
    """archive.pack_dir's packer, with what cp, export and commit need on top.

    - ``exclude``: names (tar names) left out, with everything below them;
    - ``skip_content``: directories archived without their content;
    - ``root_dev``: a directory on another device (a mount point) is archived without its content;
    - entries removed while we walk (a running container) are skipped, not an error.

    Whiteouts and opaque directories become ``.wh.`` entries exactly as in pack_dir (there are
    none in a mounted rootfs, whose overlay hides them).
    """

    def __init__(self, tf: tarfile.TarFile, *, exclude: Iterable[str] = (), skip_content: Iterable[str] = (),
                 root_dev: int | None = None):
        super().__init__(tf)
        self.exclude = frozenset(exclude)
        self.skip_content = frozenset(skip_content)
        self.root_dev = root_dev

    def walk(self, dir_fd: int, prefix: str) -> None:
        for leaf in sorted(os.listdir(dir_fd)):
            name = prefix + leaf
            if name not in self.exclude:
                self.entry(dir_fd, leaf, name)

    def entry(self, dir_fd: int, leaf: str, name: str) -> None:
        """Archive ``leaf`` of ``dir_fd`` as ``name``, and its content if it is a directory."""
        try:
            st = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            try:
                fd = os.open(leaf, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    return  # Gone or replaced since the stat.
                raise
            try:
                self.add_dir(fd, name.rstrip("/") or name, prefix=name.rstrip("/") + "/")
            finally:
                os.close(fd)
        elif _is_whiteout(st):
            head, _, tail = name.rpartition("/")
            whiteout = self._info((head + "/" if head else "") + archive.WHITEOUT_PREFIX + tail, st,
                                  tarfile.REGTYPE)
            whiteout.mode = 0o600
            self._add(whiteout)
        elif stat.S_ISSOCK(mode):
            return
        elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in self.links:
            info = self._info(name, st, tarfile.LNKTYPE)
            info.linkname = self.links[(st.st_dev, st.st_ino)]
            self._add(info)
        else:
            try:
                self._add_node(dir_fd, leaf, name, st)
            except FileNotFoundError:
                return
            if st.st_nlink > 1:
                self.links[(st.st_dev, st.st_ino)] = name

    def add_dir(self, fd: int, name: str, prefix: str) -> None:
        """Archive the open directory ``fd`` as ``name``, then its entries as ``prefix + leaf``."""
        st = os.fstat(fd)
        self._add(self._info(name, st, tarfile.DIRTYPE), xattrs=archive._fd_xattrs(fd))
        if _is_opaque(fd):
            opaque = self._info(prefix + WHITEOUT_OPAQUE, st, tarfile.REGTYPE)
            opaque.mode = st.st_mode & 0o777
            self._add(opaque)
        if name.rstrip("/") in self.skip_content:
            return
        if self.root_dev is not None and st.st_dev != self.root_dev:
            return  # A mount point: Docker does not archive what is mounted there.
        self.walk(fd, prefix)


#
# docker cp into a container
#


def copy_in(rootfs: str, path: str, tar_stream: BinaryIO, *, no_overwrite_dir_non_dir: bool = False,
            container_id: str = "") -> None:
    """Extract ``tar_stream`` into the directory ``path`` of the container (``docker cp - CTR:path``).

    1. Resolve ``path`` inside the container root, its final symlink included (a symlink to
       ``/`` extracts into the container's root, never the host's). NotFound ("Could not find the
       file /x in container y") if it does not exist, InvalidArgument if it is not a directory.
    2. Write each entry relative to directory fds: directories on the way are entered with
       symlinks followed inside the root (as Docker's chrooted untar does), the entry itself is
       replaced, never followed. ``..`` components, hardlinks to anything but an earlier entry of
       the same tar and overlay's own xattrs are refused (UnsafeArchive). Entries keep the
       owners, modes, mtimes and xattrs of the tar; ``.wh.`` files are plain files here.
    3. With ``no_overwrite_dir_non_dir`` (the docker CLI always sets it), an entry that would
       replace a directory with a non-directory or the reverse is refused (InvalidArgument).

    Entries written before an error stay, as with Docker.
    """
    root_fd = _open_root(rootfs)
    try:
        target = _Target(root_fd, path, follow_link=True, container_id=container_id)
        try:
            if not stat.S_ISDIR(target.resolved.stat.st_mode):
                raise InvalidArgument(f"extraction point is not a directory: {path}")
            dest = target.resolved.names
        finally:
            target.close()
        extractor = _Extractor(root_fd, dest, no_overwrite_dir_non_dir)
        extractor.extract(tar_stream)
    finally:
        os.close(root_fd)


class _Extractor:
    """Writes the entries of one tar stream under the directory ``dest`` of a container root."""

    def __init__(self, root_fd: int, dest: list[str], no_overwrite_dir_non_dir: bool):
        self.root_fd = root_fd
        self.dest = list(dest)
        self.no_overwrite = no_overwrite_dir_non_dir
        # Non-directory entries written so far: the only valid hardlink targets.
        self.linkable: set[tuple[str, ...]] = set()
        self.dir_times: dict[tuple[str, ...], float] = {}

    def extract(self, stream: BinaryIO) -> None:
        archive.apply_members(stream, "r|", self.apply)
        self.finish()

    def _dir(self, parts: list[str] | tuple[str, ...], name: str, create: bool) -> int:
        """Open the directory ``parts`` under the destination, symlinks followed inside the root."""
        try:
            return rootpath.open_dir(self.root_fd, self.dest + list(parts), create=create)[0]
        except EngineError as exc:
            raise UnsafeArchive(f"entry {name!r}: {exc}") from None

    def apply(self, member: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        name = member.name
        parts = archive._split_name(name)
        if not parts:
            return  # The destination itself: Docker leaves its metadata alone.
        if parts[0].startswith(WHITEOUT_META_PREFIX):
            return  # AUFS bookkeeping; Docker skips it too.
        leaf, key = parts[-1], tuple(parts)
        parent_fd = self._dir(parts[:-1], name, create=True)
        try:
            try:
                existing = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None:
                is_dir = stat.S_ISDIR(existing.st_mode)
                if self.no_overwrite and is_dir and not member.isdir():
                    raise InvalidArgument(
                        f"cannot overwrite directory {self._show(parts)} with non-directory {name}")
                if self.no_overwrite and not is_dir and member.isdir():
                    raise InvalidArgument(
                        f"cannot overwrite non-directory {self._show(parts)} with directory {name}")
                if not (is_dir and member.isdir()):
                    if is_dir:
                        shutil.rmtree(leaf, dir_fd=parent_fd)
                    else:
                        os.unlink(leaf, dir_fd=parent_fd)
                    self.linkable = {p for p in self.linkable if p[: len(key)] != key}
            if member.isreg():
                self._file(member, tf, parent_fd, leaf)
            elif member.isdir():
                self._directory(member, parent_fd, leaf)
                self.dir_times[key] = member.mtime
                return
            elif member.issym():
                os.symlink(member.linkname, leaf, dir_fd=parent_fd)
                self._node_metadata(member, parent_fd, leaf, symlink=True)
            elif member.islnk():
                self._hardlink(member, parent_fd, leaf, key)
            elif member.ischr() or member.isblk() or member.isfifo():
                if member.isfifo():
                    os.mkfifo(leaf, 0o600, dir_fd=parent_fd)
                else:
                    kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                    dev = os.makedev(member.devmajor, member.devminor)
                    os.mknod(leaf, kind | 0o600, dev, dir_fd=parent_fd)
                self._node_metadata(member, parent_fd, leaf, symlink=False)
            else:
                raise UnsafeArchive(f"entry {name!r} has unsupported tar type {member.type!r}")
            self.linkable.add(key)
        finally:
            os.close(parent_fd)

    def _show(self, parts: list[str]) -> str:
        return "/" + "/".join(self.dest + parts)

    def _file(self, member, tf, parent_fd: int, leaf: str) -> None:
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent_fd)
        try:
            archive.copy_member_data(member, tf, fd)
            # chown clears setuid/setgid and security.capability: chown, then chmod, then xattrs.
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)
            self._xattrs(member, fd)
            os.utime(fd, ns=archive.member_ns(member))
        finally:
            os.close(fd)

    def _directory(self, member, parent_fd: int, leaf: str) -> None:
        try:
            os.mkdir(leaf, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
        fd = os.open(leaf, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)
            self._xattrs(member, fd)
        finally:
            os.close(fd)

    def _node_metadata(self, member, parent_fd: int, leaf: str, symlink: bool) -> None:
        """Owner, mode, xattrs and times of a symlink, device or fifo just made, never following it."""
        os.chown(leaf, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        if not symlink:
            # An O_PATH fd pins the node itself; if the container swapped it for something else
            # since we made it, leave that alone rather than chmod through it.
            fd = os.open(leaf, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            try:
                kind = stat.S_IFMT(os.fstat(fd).st_mode)
                if kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
                    os.chmod(f"/proc/self/fd/{fd}", member.mode & 0o7777)
            finally:
                os.close(fd)
        self._xattrs(member, f"/proc/self/fd/{parent_fd}/{leaf}", follow_symlinks=False)
        os.utime(leaf, ns=archive.member_ns(member), dir_fd=parent_fd, follow_symlinks=False)

    def _hardlink(self, member, parent_fd: int, leaf: str, key: tuple[str, ...]) -> None:
        target = tuple(p for p in member.linkname.split("/") if p not in ("", "."))
        if ".." in target or not target or target == key or target not in self.linkable:
            raise UnsafeArchive(
                f"entry {member.name!r} is a hardlink to {member.linkname!r}, "
                "which is not an earlier entry of this archive"
            )
        target_fd = self._dir(target[:-1], member.name, create=False)
        try:
            os.link(target[-1], leaf, src_dir_fd=target_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise UnsafeArchive(
                f"entry {member.name!r}: hardlink target {member.linkname!r} is gone") from None
        finally:
            os.close(target_fd)

    @staticmethod
    def _xattrs(member, target, follow_symlinks: bool = True) -> None:
        for xattr, value in archive._xattrs_of(member).items():
            if xattr.startswith(OVERLAY_XATTR_PREFIX):
                continue  # Never let an archive steer overlayfs.
            try:
                os.setxattr(target, xattr, value, follow_symlinks=follow_symlinks)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise

    def finish(self) -> None:
        """Set directory mtimes, deepest first, now that nothing more is written into them."""
        for parts in sorted(self.dir_times, key=len, reverse=True):
            try:
                fd = self._dir(parts, "/".join(parts), create=False)
            except (UnsafeArchive, OSError):
                continue
            try:
                ns = int(self.dir_times[parts] * 1_000_000_000)
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)


#
# docker commit
#


def commit_layer(upper_dir: str, out: BinaryIO, *, lower_dirs: list[str] | None = None) -> int:
    """Write the container's read-write layer to ``out`` as an OCI layer tar; return its entry count.

    The tar is ``archive.pack_dir``'s (sorted entries, whiteouts as ``.wh.`` files, opaque dirs
    with ``.wh..wh..opq``), minus the mount points only runc put in the upper dir (the empty
    ``/etc/hosts``, ``/etc/hostname``, ``/etc/resolv.conf``, ``/.dockerenv`` files and empty
    ``/proc``, ``/sys``, ``/dev`` dirs, see ``mount_point_leftovers``): as in Docker, the image
    keeps what it had at those paths, and what was bind-mounted there is not committed.
    ``lower_dirs`` (the image's layer dirs, BOTTOM FIRST) lets a parent made only for them
    (``/etc`` in a scratch image) be left out too.
    """
    exclude = mount_point_leftovers(upper_dir, lower_dirs)
    fd = os.open(upper_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            packer = _TreePacker(tf, exclude=exclude)
            packer.walk(fd, "")
            return packer.count
    finally:
        os.close(fd)


def commit_image(
    images: ImageStore,
    store: Store,
    layers: LayerStore,
    *,
    parent_image_id: str,
    upper_dir: str,
    container_config: dict,
    reference: str | None = None,
    changes: Iterable[str] = (),
    message: str = "",
    author: str = "",
    pause: Callable[[], Callable[[], None] | None] | None = None,
    container_id: str = "",
) -> ImageRecord:
    """Make a new image of the parent image plus the container's read-write layer (``docker commit``).

    1. Check ``reference`` (a tag; a digest is refused) and ``changes`` before anything is written.
    2. Call ``pause()`` if given (a running container's files must not move while we read);
       if it returns a callable, that is called once the layer is read, also on failure.
    3. Pack the upper dir (``commit_layer``) into a staging file, hashing it: its diff_id.
    4. Unless the layer is empty, apply it with ``LayerStore.apply`` on top of the parent's top
       layer and keep the uncompressed tar as a blob, so a push can compress it later (as
       ``import_tar`` does).
    5. Write the config as moby's NewChildImage does: the parent's architecture, os, variant and
       history plus one entry (created_by = the container's Cmd joined, comment = ``message``,
       author, empty_layer when nothing changed); ``config`` = the container's config merged as
       moby's commit merges it (``changes`` applied first, with images.apply_changes); and
       ``container_config`` = the container's config as it was.
    6. ``images.add`` the config with the parent's layers plus the new one, tagged ``reference``.

    On failure the new layer and blob are removed unless another image uses them.
    """
    ref = parse_reference(reference) if reference else None
    if ref is not None and ref.digest is not None:
        raise InvalidArgument(f"refusing to create a tag with a digest reference: {reference}")
    user_config = apply_changes({}, changes)
    parent = images.get(parent_image_id)
    parent_layers = [layers.get(c) for c in parent.chain_ids]
    lower_dirs = [layer.path for layer in parent_layers]

    staging = store.tmp_dir("commit-")
    new_chains: list[str] = []
    new_blobs: set = set()
    try:
        path = os.path.join(staging, "layer.tar")
        resume = pause() if pause is not None else None
        try:
            with open(path, "wb") as raw:
                hashing = _HashingWriter(raw)
                count = commit_layer(upper_dir, hashing, lower_dirs=lower_dirs)
                raw.flush()
                os.fsync(raw.fileno())
        finally:
            if callable(resume):
                resume()
        diff_id = hashing.digest()
        size = os.path.getsize(path)

        new_layers = list(parent_layers)
        descriptors = [dict(d) for d in parent.layers]
        empty = count == 0
        if not empty:
            parent_chain = parent.top_chain_id
            chain = chain_id_of(parent_chain, diff_id)
            if not layers.exists(chain):
                new_chains.append(chain)
            with open(path, "rb") as f:
                layer = layers.apply(f, chain_id=chain, parent=parent_chain, expected_diff_id=diff_id)
            if not store.has_blob(diff_id):
                new_blobs.add(diff_id)
                _ingest_file(store, path, diff_id)
            new_layers.append(layer)
            descriptors.append({"digest": diff_id, "media_type": MEDIA_TYPE_OCI_LAYER, "size": size})

        config = _child_config(parent, container_config, user_config,
                               diff_ids=[x.diff_id for x in new_layers],
                               message=message, author=author, empty=empty, container_id=container_id)
        data = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
        return images.add(data, new_layers, layer_descriptors=descriptors, reference=ref)
    except BaseException:
        if new_chains or new_blobs:
            # ImageStore._discard keeps what another image uses (the same rule as a failed import).
            images._discard(new_chains, new_blobs)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _child_config(parent: ImageRecord, container_config: dict, user_config: dict, *, diff_ids: list,
                  message: str, author: str, empty: bool, container_id: str) -> dict:
    """The new image's config, as moby's image.NewChildImage builds it."""
    created = _now()
    config = _merge_config(user_config, container_config or {})
    history_entry = {"created": created}
    if author:
        history_entry["author"] = author
    created_by = " ".join(container_config.get("Cmd") or [])
    if created_by:
        history_entry["created_by"] = created_by
    if message:
        history_entry["comment"] = message
    if empty:
        history_entry["empty_layer"] = True
    parent_config = parent.config
    history = list(parent_config.get("history") or [])
    answer = {
        "architecture": parent.architecture or parent_config.get("architecture") or "",
        "os": parent.os or parent_config.get("os") or "linux",
        "created": created,
        "config": config,
        "container_config": container_config or {},
        "rootfs": {"type": "layers", "diff_ids": [Digest(d) for d in diff_ids]},
        "history": history + [history_entry],
    }
    if container_id:
        answer["container"] = container_id
    if author:
        answer["author"] = author
    if parent.variant:
        answer["variant"] = parent.variant
    for key in ("os.version", "os.features"):
        if parent_config.get(key):
            answer[key] = parent_config[key]
    return answer


def _merge_config(user: dict, container: dict) -> dict:
    """moby's daemon merge(): fill the user's config (from ``changes``) with the container's."""
    merged = json.loads(json.dumps(user))
    container = json.loads(json.dumps(container))
    if not merged.get("User"):
        merged["User"] = container.get("User") or ""
    if not merged.get("ExposedPorts"):
        if container.get("ExposedPorts"):
            merged["ExposedPorts"] = container["ExposedPorts"]
    else:
        for port, value in (container.get("ExposedPorts") or {}).items():
            merged["ExposedPorts"].setdefault(port, value)
    if not merged.get("Env"):
        merged["Env"] = container.get("Env")
    else:
        keys = {e.split("=", 1)[0] for e in merged["Env"]}
        merged["Env"] += [e for e in container.get("Env") or [] if e.split("=", 1)[0] not in keys]
    labels = dict(merged.get("Labels") or {})
    for key, value in (container.get("Labels") or {}).items():
        labels.setdefault(key, value)
    merged["Labels"] = labels
    if not merged.get("Entrypoint"):
        if not merged.get("Cmd"):
            merged["Cmd"] = container.get("Cmd")
        if merged.get("Entrypoint") is None:
            merged["Entrypoint"] = container.get("Entrypoint")
    if container.get("Healthcheck") and not merged.get("Healthcheck"):
        merged["Healthcheck"] = container["Healthcheck"]
    if not merged.get("WorkingDir"):
        merged["WorkingDir"] = container.get("WorkingDir") or ""
    if not merged.get("Volumes"):
        if container.get("Volumes"):
            merged["Volumes"] = container["Volumes"]
    else:
        merged["Volumes"].update(container.get("Volumes") or {})
    if not merged.get("StopSignal") and container.get("StopSignal"):
        merged["StopSignal"] = container["StopSignal"]
    for key in ("OnBuild", "Shell", "StopTimeout", "ArgsEscaped"):
        if key not in merged and container.get(key) is not None:
            merged[key] = container[key]
    return {k: v for k, v in merged.items() if v is not None}


class _HashingWriter:
    """A write-only file that hashes what goes through it."""

    def __init__(self, out):
        self._out = out
        self._hash = hashlib.sha256()

    def write(self, data) -> int:
        self._hash.update(data)
        return self._out.write(data)

    def digest(self) -> Digest:
        return Digest.from_hex(self._hash.hexdigest())


def _ingest_file(store: Store, path: str, digest: str) -> None:
    """Copy the file at ``path`` into the blob store as ``digest`` (verified on commit)."""
    try:
        writer = store.ingest(digest, os.path.getsize(path))
    except AlreadyExists:
        return
    with writer, open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            writer.write(chunk)
        writer.commit()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


#
# docker export
#


def export_rootfs(rootfs: str, out: BinaryIO) -> None:
    """Write the container's whole filesystem to ``out`` as one flat tar (``docker export``).

    ``rootfs`` is the mounted ``merged`` dir: the overlay already hides deleted files, so there
    are no whiteouts. Entries are relative (``bin/``, ``etc/passwd``), with no entry for the root
    itself, as Docker writes them. The ``/proc`` and ``/sys`` mount points are archived empty, and
    any directory with something mounted on it on the host (a different device) without its
    content: volumes are not exported, as in Docker.
    """
    fd = _open_root(rootfs)
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            packer = _TreePacker(tf, skip_content=EXPORT_SKIP_CONTENT, root_dev=os.fstat(fd).st_dev)
            packer.walk(fd, "")
    finally:
        os.close(fd)
