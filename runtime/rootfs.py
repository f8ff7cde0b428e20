"""A container's root filesystem: an overlay of its image's layers under its own read-write layer.

On disk (the layout of containers/storage's drivers/overlay/overlay.go, written down once here)::

    <root>/layers/<chain-id-hex>/diff/   a read-only layer (runtime.layers owns it)
    <root>/l/<SHORT>                     symlink -> the layer's diff dir; SHORT is 26 base32
                                         characters derived from the diff dir's path
    <root>/containers/<id>/upper/        the container's read-write layer (overlay upperdir)
    <root>/containers/<id>/work/         overlay's scratch space (workdir), same filesystem as upper
    <root>/containers/<id>/merged/       the mount point: what the container sees as /
    <root>/l/.empty/                     an empty lowerdir, for images with no layers (FROM scratch)

Why the short links. mount(2) copies at most one page (4096 bytes) of options, and a lowerdir
option of full layer paths (``/var/lib/berth/layers/<64 hex>/diff``, ~90 bytes each) overflows it
at about 40 layers. Each layer gets a symlink with a 26-character name under ``l/``; when even the
absolute link paths do not fit, the mount is done from a child process whose working directory is
``l/``, with the lowerdir entries relative to it (27 bytes a layer: 120 layers take 3.2 KiB). This
is what containers/storage does (its ``mountfrom`` re-exec). The common case (a few dozen layers)
mounts in-process, with no fork: the container start path is benchmarked against ``docker run``.

Overlay options: ``index=off`` (a lower layer is shared by many containers; the inode index would
tie it to one upper), ``redirect_dir=off`` and ``metacopy=off`` (a renamed directory or a
metadata-only copy-up would be recorded in ``trusted.overlay.*`` xattrs, which a committed or
exported layer cannot carry; with these off, the kernel copies up for real, as Docker's overlay2
effectively does on stock kernels).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import errno
import hashlib
import os
import secrets

from runtime.errors import EngineError, InvalidArgument

__all__ = [
    "EMPTY_DIR", "LINK_LENGTH", "clean_links", "is_mounted", "layer_link", "mount_rootfs", "unmount_rootfs",
]

# Length of a link name under l/, as in containers/storage (idLength 26 base32 characters).
LINK_LENGTH = 26
# The empty lower dir of an image with no layers, under l/.
EMPTY_DIR = ".empty"
# mount(2) copies one page of options, NUL terminator included.
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_OPTIONS = "index=off,redirect_dir=off,metacopy=off"
# Characters that overlay's option parser treats specially.
_UNSAFE_PATH_CHARS = (",", ":", "\\")

_MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.umount2.restype = ctypes.c_int


#
# Mounting
#


def mount_rootfs(container_dir: str, lower_dirs: list[str], *, links_dir: str) -> str:
    """Mount the container's root filesystem at ``<container_dir>/merged`` and return that path.

    ``lower_dirs`` are the image's layer diff directories BOTTOM FIRST, in the order of the image's
    ``chain_ids`` (``[layers.get(c).path for c in image.chain_ids]``); overlay wants the top layer
    first, so they are reversed here. An empty list (an image ``FROM scratch``) mounts an empty
    lower directory. ``upper/``, ``work/`` and ``merged/`` are created if missing (upper with mode
    0755: its root is the container's ``/``). ``links_dir`` (``<root>/l``) holds the short links.

    1. Make (or reuse) a short link under ``links_dir`` for each layer.
    2. If ``merged`` is already a mount point, return it: mounting is idempotent.
    3. Build the options with absolute link paths; if they fit one page, mount in-process.
    4. Otherwise mount from a child process whose cwd is ``links_dir``, with relative link names.

    Raises InvalidArgument for a missing layer directory or a path overlay cannot take (one
    containing ``,``, ``:`` or ``\\``), EngineError when the kernel refuses the mount or the
    chain is too long even for short links.
    """
    container_dir = os.path.abspath(container_dir)
    links_dir = os.path.abspath(links_dir)
    upper = os.path.join(container_dir, "upper")
    work = os.path.join(container_dir, "work")
    merged = os.path.join(container_dir, "merged")
    for path in (upper, work, merged, links_dir):
        _check_path(path)
    os.makedirs(container_dir, mode=0o700, exist_ok=True)
    _mkdir(upper, 0o755)
    _mkdir(work, 0o700)
    _mkdir(merged, 0o700)
    os.makedirs(links_dir, mode=0o700, exist_ok=True)

    if lower_dirs:
        names = [layer_link(links_dir, lower) for lower in lower_dirs]
    else:
        # Overlay needs a lower dir: one shared empty directory, by its own (short) name.
        _mkdir(os.path.join(links_dir, EMPTY_DIR), 0o755)
        names = [EMPTY_DIR]
    names.reverse()  # Overlay lists the top layer first.

    if is_mounted(merged):
        return merged

    tail = f",upperdir={upper},workdir={work},{_OPTIONS}"
    absolute = "lowerdir=" + ":".join(os.path.join(links_dir, n) for n in names) + tail
    if len(absolute) + 1 <= _PAGE:
        _mount_overlay(merged, absolute)
        return merged
    relative = "lowerdir=" + ":".join(names) + tail
    if len(relative) + 1 > _PAGE:
        raise EngineError(
            f"cannot mount {merged}: {len(lower_dirs)} layers do not fit the mount options "
            f"({len(relative) + 1} bytes, at most {_PAGE})"
        )
    _mount_overlay_from(links_dir, merged, relative)
    return merged


def unmount_rootfs(container_dir: str) -> None:
    """Unmount ``<container_dir>/merged`` (lazily, MNT_DETACH); nothing happens if it is not mounted.

    Mounts stacked on the same point are all removed. The directories are left in place.
    """
    merged = os.fsencode(os.path.join(os.path.abspath(container_dir), "merged"))
    for _ in range(64):
        if _libc.umount2(merged, _MNT_DETACH) == 0:
            continue
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
            return  # Not (or no longer) a mount point.
        raise EngineError(f"cannot unmount {merged.decode(errors='replace')}: {os.strerror(err)}")
    raise EngineError(f"cannot unmount {merged.decode(errors='replace')}: still mounted after 64 unmounts")


def is_mounted(path: str) -> bool:
    """Return True if ``path`` is a mount point in this process's mount namespace."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split(b" ", 5)
                if len(fields) > 4 and _unescape(fields[4]) == os.fsencode(target):
                    return True
    except FileNotFoundError:
        return os.path.ismount(target)
    return False


def _mount_overlay(merged: str, options: str) -> None:
    """mount(2) an overlay at ``merged`` with ``options``, in this process."""
    if _libc.mount(b"overlay", os.fsencode(merged), b"overlay", 0, options.encode()) != 0:
        err = ctypes.get_errno()
        raise EngineError(f"cannot mount overlay at {merged}: {os.strerror(err)}")


def _mount_overlay_from(cwd: str, merged: str, options: str) -> None:
    """mount(2) an overlay from a forked child whose working directory is ``cwd``.

    The child only calls chdir and mount (everything is encoded before the fork) and reports the
    errno as its exit status, so forking from a threaded worker is safe.
    """
    cwd_b, merged_b, options_b = os.fsencode(cwd), os.fsencode(merged), options.encode()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.chdir(cwd_b)
            if _libc.mount(b"overlay", merged_b, b"overlay", 0, options_b) != 0:
                code = ctypes.get_errno() or 255
        except BaseException:
            code = 254
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return
    reason = os.strerror(code) if 0 < code < 254 else "mount helper failed"
    raise EngineError(f"cannot mount overlay at {merged}: {reason}")


#
# Short links
#


def layer_link(links_dir: str, target: str) -> str:
    """Return the name of the short link under ``links_dir`` to the directory ``target``.

    The name is derived from ``target``'s absolute path, so every container stacking the same layer
    reuses one link. A missing link is created atomically (a symlink under a temporary name,
    renamed into place), so concurrent mounts never see a half-made link.
    """
    target = os.path.abspath(target)
    if not os.path.isdir(target):
        raise InvalidArgument(f"layer directory {target} does not exist")
    digest = hashlib.sha256(os.fsencode(target)).digest()
    name = base64.b32encode(digest).decode()[:LINK_LENGTH]
    path = os.path.join(links_dir, name)
    try:
        if os.readlink(path) == target:
            return name
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: something that is not a symlink; replace it.
            raise
    tmp = os.path.join(links_dir, f".tmp-{secrets.token_hex(8)}")
    os.symlink(target, tmp)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return name


def clean_links(links_dir: str) -> int:
    """Remove links whose layer is gone and leftover temporary links; return how many were removed.

    Safe while containers run: a link is only removed when its target no longer exists.
    """
    removed = 0
    try:
        entries = list(os.scandir(links_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name == EMPTY_DIR:
            continue
        if entry.name.startswith(".tmp-") or not os.path.exists(entry.path):
            try:
                os.unlink(entry.path)
                removed += 1
            except (FileNotFoundError, IsADirectoryError):
                pass
    return removed


#
# Helpers
#


def _check_path(path: str) -> None:
    for char in _UNSAFE_PATH_CHARS:
        if char in path:
            raise InvalidArgument(f"overlay cannot use the path {path!r} (it contains {char!r})")


def _mkdir(path: str, mode: int) -> None:
    """Create ``path`` with exactly ``mode`` (not masked by the umask) unless it exists."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    os.chmod(path, mode)


def _unescape(field: bytes) -> bytes:
    """Undo the octal escapes (``\\040`` for a space) of a /proc/self/mountinfo path."""
    if b"\\" not in field:
        return field
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)
