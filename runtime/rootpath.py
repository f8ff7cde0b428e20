"""Resolving a path inside a container's root filesystem, as the container would, from the host.

A container's root is a directory on the host (its overlay ``merged`` dir). Its symlinks mean
what they mean inside the container: ``/etc/passwd -> /srv/passwd`` names ``<root>/srv/passwd``,
and ``..`` never climbs above ``<root>``. Following them with host path functions (``open``,
``os.path.realpath``) would reach host files, and a container that swaps a directory for a
symlink between a check and a use could redirect any path-based write. So we never hand a joined
path to the kernel:

- every step is an ``openat`` relative to the directory fd of the step before, with O_NOFOLLOW;
- a symlink met on the way is read (``readlinkat``) and its target spliced into the components
  still to walk: an absolute target restarts at the root fd, a relative one at the current dir;
- ``..`` pops the stack of directory fds we opened (the logical parent), and stops at the root.

This is what moby's ``symlink.FollowSymlinkInScope`` does with paths and what openat2's
RESOLVE_IN_ROOT does in the kernel; with fds it also holds while the container is running.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass

from runtime.errors import InvalidArgument, NotFound

__all__ = ["MAX_SYMLINKS", "Resolved", "open_dir", "resolve", "split_path"]

# As Linux's MAXSYMLINKS.
MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_path(path: str) -> list[str]:
    """Return the components of ``path`` taken as absolute in the container, cleaned lexically.

    ``"etc/../var//log/"`` -> ``["var", "log"]``; ``"/"`` and ``""`` -> ``[]``. As Docker does
    (``filepath.Join("/", path)``), ``..`` is resolved lexically here, before any symlink.
    """
    cleaned = posixpath.normpath("/" + path.lstrip("/"))
    return [p for p in cleaned.split("/") if p]


@dataclass
class Resolved:
    """Where a path resolved to. Close it (or use it as a context manager) to release the fd.

    ``names`` are the components of the resolved path from the root (``[]`` for the root itself).
    ``parent_fd`` is an open fd of the directory holding the final component (the root's own fd
    when the path is the root), ``leaf`` that component (None for the root), ``stat`` its lstat
    (None when it does not exist; only possible with ``must_exist=False``).
    """

    names: list[str]
    parent_fd: int
    leaf: str | None
    stat: os.stat_result | None

    @property
    def path(self) -> str:
        """The resolved path as the container sees it, e.g. ``/srv/passwd``."""
        return "/" + "/".join(self.names)

    def close(self) -> None:
        if self.parent_fd >= 0:
            os.close(self.parent_fd)
            self.parent_fd = -1

    def __enter__(self) -> "Resolved":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resolve(root_fd: int, parts: list[str], *, follow_final: bool = False, must_exist: bool = True,
            create_dirs: bool = False, lenient: bool = False) -> Resolved:
    """Resolve ``parts`` (from ``split_path``) under the directory ``root_fd``.

    Every directory on the way is entered with symlinks followed in the scope of the root. The
    final component is followed too when ``follow_final``. With ``create_dirs``, missing
    directories on the way (not the final component) are created, mode 0755.

    Raises NotFound when a component is missing (unless ``must_exist`` is False and only the final
    component is missing, or the final symlink dangles: then ``stat`` is None) and InvalidArgument
    for a non-directory in the middle of the path or too many levels of symlinks. With
    ``lenient``, a missing directory on the way is not an error either: the rest of the path is
    appended to ``names`` lexically (as moby's FollowSymlinkInScope does), ``stat`` is None and
    ``parent_fd`` is the deepest directory that exists.
    """
    stack = [os.dup(root_fd)]
    names: list[str] = []
    pending = list(parts)
    links = 0
    try:
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    names.pop()
                continue
            final = not [p for p in pending if p not in ("", ".")]
            current = stack[-1]
            try:
                st = os.stat(part, dir_fd=current, follow_symlinks=False)
            except FileNotFoundError:
                if final and not must_exist:
                    return _finish(stack, names, part, None)
                if not final and create_dirs:
                    _mkdir(current, part)
                    pending.insert(0, part)
                    continue
                if lenient:
                    rest = list(names)
                    for p in [part] + pending:
                        if p == "..":
                            if rest:
                                rest.pop()
                        elif p not in ("", "."):
                            rest.append(p)
                    for fd in stack[:-1]:
                        os.close(fd)
                    leaf = rest[-1] if rest else None
                    return Resolved(names=rest, parent_fd=stack[-1], leaf=leaf, stat=None)
                raise NotFound(f"{_show(names, part)} does not exist") from None
            if stat.S_ISLNK(st.st_mode) and (follow_final or not final):
                links += 1
                if links > MAX_SYMLINKS:
                    raise InvalidArgument(f"{_show(names, part)}: too many levels of symbolic links")
                target = os.readlink(part, dir_fd=current)
                if target.startswith("/"):
                    for fd in stack[1:]:
                        os.close(fd)
                    del stack[1:]
                    names.clear()
                pending[:0] = target.split("/")
                continue
            if final:
                return _finish(stack, names, part, st)
            if not stat.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"{_show(names, part)} is not a directory")
            try:
                fd = os.open(part, _DIR_FLAGS, dir_fd=current)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    # Swapped under us (a running container): look at it again.
                    pending.insert(0, part)
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise InvalidArgument(f"{_show(names, part)} keeps changing") from None
                    continue
                raise
            stack.append(fd)
            names.append(part)
        # The path is the root, or ended in ".." or at a followed symlink to a directory.
        return _finish_dir(stack, names)
    except BaseException:
        for fd in stack:
            os.close(fd)
        raise


def open_dir(root_fd: int, parts: list[str], *, create: bool = False) -> tuple[int, list[str]]:
    """Open the directory ``parts`` under ``root_fd``, every symlink followed in scope.

    Returns (fd, resolved names); the caller closes the fd. With ``create``, missing directories
    are created (mode 0755). NotFound if missing, InvalidArgument if not a directory.
    """
    res = resolve(root_fd, parts, follow_final=True, must_exist=not create, create_dirs=create)
    try:
        if res.leaf is None:
            fd, res.parent_fd = res.parent_fd, -1
            return fd, res.names
        if res.stat is None:
            _mkdir(res.parent_fd, res.leaf)
        try:
            fd = os.open(res.leaf, _DIR_FLAGS, dir_fd=res.parent_fd)
        except FileNotFoundError:
            raise NotFound(f"{res.path} does not exist") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            if res.stat is not None and stat.S_ISLNK(res.stat.st_mode):
                raise NotFound(f"{res.path} does not exist") from None
            raise InvalidArgument(f"{res.path} is not a directory") from None
        return fd, res.names
    finally:
        res.close()


def _finish(stack: list[int], names: list[str], leaf: str, st) -> Resolved:
    """Keep the top of the stack as the parent fd, close the rest."""
    for fd in stack[:-1]:
        os.close(fd)
    return Resolved(names=names + [leaf], parent_fd=stack[-1], leaf=leaf, stat=st)


def _finish_dir(stack: list[int], names: list[str]) -> Resolved:
    """The path resolved to the directory on top of the stack: describe it by its parent."""
    if len(stack) == 1:
        return Resolved(names=[], parent_fd=stack[0], leaf=None, stat=os.fstat(stack[0]))
    leaf = names[-1]
    st = os.fstat(stack[-1])
    for fd in [stack[-1]] + stack[:-2]:
        os.close(fd)
    return Resolved(names=list(names), parent_fd=stack[-2], leaf=leaf, stat=st)


def _mkdir(dir_fd: int, name: str) -> None:
    try:
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    except FileExistsError:
        return
    # Exactly 0755, not masked by the umask (Docker's MkdirAll(path, 0755) in a daemon with umask 022).
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return  # Replaced meanwhile: the caller looks at it again.
    try:
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)


def _show(names: list[str], part: str) -> str:
    return "/" + "/".join(names + [part])
