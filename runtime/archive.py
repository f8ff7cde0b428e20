"""Safe application of layer tars, and packing of overlay upper directories back into layer tars.

Layer tars are untrusted. ``tarfile`` is used only to parse the stream; every write is made here,
relative to an open directory file descriptor, with O_NOFOLLOW on each path component, so no entry
can write outside the destination, whatever symlinks earlier entries planted. We do not use
``tarfile``'s extraction filters: the Python 3.11.7 on our hosts has published bypasses of them
(CVE-2025-4517, path-length overflow in ``realpath``) and a parser hang on a negative member size
(CVE-2025-8194), which ``_SafeTarInfo`` refuses.

Whiteouts. An OCI layer marks a deletion with an empty file ``.wh.NAME`` and an opaque directory
(hide everything below from lower layers) with ``DIR/.wh..wh..opq``. overlayfs marks them with a
character device 0:0 named NAME and the xattr ``trusted.overlay.opaque=y`` on DIR. ``apply_tar``
converts the first into the second; ``pack_dir`` converts back (as moby's overlay whiteout
converter in pkg/archive does).
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from runtime.errors import UnsafeArchive

__all__ = [
    "OPAQUE_XATTR",
    "WHITEOUT_OPAQUE",
    "WHITEOUT_PREFIX",
    "ApplyStats",
    "apply_tar",
    "pack_dir",
]

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
# overlayfs's own bookkeeping; a layer must not set these (redirect, metacopy, origin could make
# the kernel look outside the layer), and we never export them.
OVERLAY_XATTR_PREFIX = "trusted.overlay."
PAX_XATTR_PREFIX = "SCHILY.xattr."
# Host-specific labels that do not belong in a layer we export.
_UNEXPORTED_XATTRS = ("security.selinux",)

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Directory fds kept open between entries (the parents of recent entries); trimmed between entries.
_DIR_CACHE = 64


@dataclass
class ApplyStats:
    """What ``apply_tar`` wrote. ``size`` is the total bytes of regular file content."""

    entries: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    devices: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    size: int = 0
    # xattrs the filesystem refused (ENOTSUP, EPERM), as "entry: name"; Docker ignores these too.
    xattr_errors: list[str] = field(default_factory=list)


class _SafeTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses negative sizes (CVE-2025-8194) and corrupt headers mid-stream.

    Stock ``tarfile`` treats a bad header after the first one as the end of the archive, which
    would silently truncate a layer; we raise instead.
    """

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        obj = super().frombuf(buf, encoding, errors)
        if obj.size < 0:
            raise UnsafeArchive(f"tar entry {obj.name!r} has a negative size")
        return obj

    @classmethod
    def fromtarfile(cls, tarfile_):
        try:
            obj = super().fromtarfile(tarfile_)
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):
            raise
        except tarfile.HeaderError as exc:
            raise UnsafeArchive(f"invalid tar header at offset {tarfile_.offset}: {exc}") from None
        # A pax "size" record is applied after frombuf, so check again.
        if obj.size < 0:
            raise UnsafeArchive(f"tar entry {obj.name!r} has a negative size")
        return obj


def _split_name(name: str, what: str = "entry") -> list[str]:
    """Return the path components of an entry name, made relative; refuse ``..``."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{what} {name!r} has a '..' path component")
    return parts


def _xattrs_of(member: tarfile.TarInfo) -> dict[str, bytes]:
    """Return the xattrs a member carries in its PAX ``SCHILY.xattr.*`` records."""
    found = {}
    for key, value in member.pax_headers.items():
        if key.startswith(PAX_XATTR_PREFIX):
            found[key[len(PAX_XATTR_PREFIX) :]] = value.encode("utf-8", "surrogateescape")
    return found


class _Applier:
    """Applies the members of one tar stream under one destination directory."""

    def __init__(self, dest_dir: str, source: "_TarSource | None" = None):
        self.root_fd = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.source = source
        self.stats = ApplyStats()
        # Non-directory entries written so far, the only valid hardlink targets.
        self.linkable: set[tuple[str, ...]] = set()
        # Directory mtimes, set at the end: writing into a directory changes its mtime.
        self.dir_times: dict[tuple[str, ...], float] = {}
        # Open fds of directories reached before (by the same no-symlink walk), most recent last.
        # A directory removed by a later entry is dropped from here with everything below it.
        self.dirs: OrderedDict[tuple[str, ...], int] = OrderedDict()

    def close(self) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()
        os.close(self.root_fd)

    #
    # Walking
    #

    def _dir(self, parts: list[str] | tuple[str, ...], name: str, create: bool) -> int:
        """Return an fd of the directory ``parts`` under the root, reached without following a symlink.

        The fd is the cache's: the caller must not close it. Missing directories are created (mode
        0755, root-owned, as Docker does) when ``create``.
        """
        key = tuple(parts)
        if not key:
            return self.root_fd
        fd = self.dirs.get(key)
        if fd is not None:
            self.dirs.move_to_end(key)
            return fd
        start, base = 0, self.root_fd
        for i in range(len(key) - 1, 0, -1):
            cached = self.dirs.get(key[:i])
            if cached is not None:
                start, base = i, cached
                break
        fd = self._walk(base, key, start, name, create)
        self.dirs[key] = fd
        return fd

    @staticmethod
    def _walk(base_fd: int, parts: tuple[str, ...], start: int, name: str, create: bool) -> int:
        """Open ``parts[start:]`` from ``base_fd`` (the directory ``parts[:start]``) one component at a
        time with O_NOFOLLOW; return a new fd of the last one."""
        fd = None  # ours to close
        current = base_fd
        try:
            for i in range(start, len(parts)):
                part = parts[i]
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=current)
                except FileNotFoundError:
                    if not create:
                        raise UnsafeArchive(f"entry {name!r}: {'/'.join(parts[: i + 1])} does not exist")
                    os.mkdir(part, 0o755, dir_fd=current)
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=current)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    prefix = "/".join(parts[: i + 1])
                    if stat.S_ISLNK(os.stat(part, dir_fd=current, follow_symlinks=False).st_mode):
                        raise UnsafeArchive(
                            f"entry {name!r}: {prefix} is a symlink, refusing to write through it"
                        ) from None
                    raise UnsafeArchive(f"entry {name!r}: {prefix} is not a directory") from None
                if fd is not None:
                    os.close(fd)
                fd = current = next_fd
            return fd if fd is not None else os.dup(base_fd)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise

    def _trim_dirs(self) -> None:
        """Close the least recently used directory fds (between entries, never while one is in use)."""
        if len(self.dirs) > _DIR_CACHE:
            while len(self.dirs) > _DIR_CACHE // 2:
                os.close(self.dirs.popitem(last=False)[1])

    def _forget_dirs(self, parts: tuple[str, ...]) -> None:
        """Drop the cached fds of the directory ``parts`` and of everything below it."""
        for key in [k for k in self.dirs if k[: len(parts)] == parts]:
            os.close(self.dirs.pop(key))

    def _remove(self, parent_fd: int, leaf: str, parts: tuple[str, ...]) -> None:
        """Remove whatever is at ``leaf`` (a tree if a directory), without following symlinks."""
        try:
            st = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self._forget_dirs(parts)
            shutil.rmtree(leaf, dir_fd=parent_fd)
            self.linkable = {p for p in self.linkable if p[: len(parts)] != parts}
            self.dir_times = {p: t for p, t in self.dir_times.items() if p[: len(parts)] != parts}
        else:
            os.unlink(leaf, dir_fd=parent_fd)
            self.linkable.discard(parts)

    def _create(self, make, parent_fd: int, leaf: str, key: tuple[str, ...]):
        """Call ``make()`` to create ``leaf``; if something is in its way, remove it and call it again.

        (Trying first saves a stat per entry: most entries are new.)
        """
        try:
            return make()
        except FileExistsError:
            self._remove(parent_fd, leaf, key)
            return make()

    #
    # Metadata
    #

    def _set_xattrs(self, member, target, name: str, follow_symlinks: bool = True) -> None:
        """Set the member's xattrs on ``target`` (an fd, or a /proc/self/fd path)."""
        for key, value in _xattrs_of(member).items():
            if key.startswith(OVERLAY_XATTR_PREFIX):
                self.stats.xattr_errors.append(f"{name}: {key} (overlay xattr, not applied)")
                continue
            try:
                os.setxattr(target, key, value, follow_symlinks=follow_symlinks)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                self.stats.xattr_errors.append(f"{name}: {key}")

    #
    # Entries
    #

    def apply(self, member: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        """Write one member."""
        name = member.name
        parts = _split_name(name)
        self.stats.entries += 1
        if not parts:
            if member.isdir():
                self._apply_metadata_to_root(member)
                return
            raise UnsafeArchive(f"entry {name!r} names the layer root but is not a directory")
        if parts[0].startswith(WHITEOUT_META_PREFIX) and parts != [WHITEOUT_OPAQUE]:
            return  # AUFS bookkeeping (/.wh..wh.plnk and the like): Docker skips it too.
        leaf = parts[-1]
        key = tuple(parts)
        self._trim_dirs()
        parent_fd = self._dir(parts[:-1], name, create=True)
        if leaf.startswith(WHITEOUT_PREFIX):
            self._apply_whiteout(member, parent_fd, parts)
            return
        # An entry replaces an existing one of another kind (or a file another file); a directory
        # entry over an existing directory only updates its metadata. The _create calls remove
        # what is in the way.
        if member.isreg():
            self._apply_file(member, tf, parent_fd, leaf, name, key)
            self.linkable.add(key)
        elif member.isdir():
            self._apply_dir(member, parent_fd, leaf, name, key)
            self.dir_times[key] = member.mtime
        elif member.issym():
            self._create(lambda: os.symlink(member.linkname, leaf, dir_fd=parent_fd), parent_fd, leaf, key)
            self._apply_node_metadata(member, parent_fd, leaf, name, symlink=True)
            self.stats.symlinks += 1
            self.linkable.add(key)
        elif member.islnk():
            # What is in the way goes first: its removal may take the link's target with it.
            self._remove(parent_fd, leaf, key)
            self._apply_hardlink(member, parent_fd, leaf, key)
            self.linkable.add(key)
        elif member.ischr() or member.isblk() or member.isfifo():
            if member.isfifo():
                self._create(lambda: os.mkfifo(leaf, 0o600, dir_fd=parent_fd), parent_fd, leaf, key)
            else:
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                dev = os.makedev(member.devmajor, member.devminor)
                self._create(lambda: os.mknod(leaf, kind | 0o600, dev, dir_fd=parent_fd),
                             parent_fd, leaf, key)
            self._apply_node_metadata(member, parent_fd, leaf, name, symlink=False)
            self.stats.devices += 1
            self.linkable.add(key)
        else:
            raise UnsafeArchive(f"entry {name!r} has unsupported tar type {member.type!r}")

    def _apply_metadata_to_root(self, member) -> None:
        os.fchown(self.root_fd, member.uid, member.gid)
        os.fchmod(self.root_fd, member.mode & 0o7777)
        self._set_xattrs(member, self.root_fd, member.name)
        self.dir_times[()] = member.mtime

    def _apply_file(self, member, tf, parent_fd: int, leaf: str, name: str, key: tuple[str, ...]) -> None:
        fd = self._create(lambda: os.open(leaf, _FILE_FLAGS, 0o600, dir_fd=parent_fd), parent_fd, leaf, key)
        try:
            if self.source is not None and not member.issparse():
                # The content follows the header: straight from the stream's buffers into the file.
                self.source.seek(member.offset_data)
                if self.source.copy_to_fd(fd, member.size) != member.size:
                    raise UnsafeArchive(f"entry {name!r}: unexpected end of data")
            else:
                copy_member_data(member, tf, fd)
            # chown clears setuid/setgid and security.capability: chown, then chmod, then xattrs.
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)
            self._set_xattrs(member, fd, name)
            os.utime(fd, ns=member_ns(member))
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.size += member.size

    def _apply_dir(self, member, parent_fd: int, leaf: str, name: str, key: tuple[str, ...]) -> None:
        try:
            os.mkdir(leaf, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                self._remove(parent_fd, leaf, key)
                os.mkdir(leaf, 0o700, dir_fd=parent_fd)
        # Keep the fd: the entries that follow are most likely its own.
        fd = self._dir(key, name, create=False)
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        self._set_xattrs(member, fd, name)
        self.stats.dirs += 1

    def _apply_node_metadata(self, member, parent_fd: int, leaf: str, name: str, symlink: bool) -> None:
        """Owner, mode, xattrs and times of a symlink, device or fifo we have just created."""
        os.chown(leaf, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        if not symlink:
            # The node was created by us an instant ago in a directory only we write to.
            os.chmod(leaf, member.mode & 0o7777, dir_fd=parent_fd)
        # The magic link pins the parent directory; the leaf itself is not followed.
        self._set_xattrs(member, f"/proc/self/fd/{parent_fd}/{leaf}", name, follow_symlinks=False)
        os.utime(leaf, ns=member_ns(member), dir_fd=parent_fd, follow_symlinks=False)

    def _apply_hardlink(self, member, parent_fd: int, leaf: str, key: tuple[str, ...]) -> None:
        name = member.name
        target = tuple(_split_name(member.linkname, what=f"entry {name!r} links to"))
        if not target or target == key or target not in self.linkable:
            raise UnsafeArchive(
                f"entry {name!r} is a hardlink to {member.linkname!r}, "
                "which is not an earlier entry of this layer"
            )
        target_fd = self._dir(target[:-1], name, create=False)
        try:
            os.link(target[-1], leaf, src_dir_fd=target_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise UnsafeArchive(
                f"entry {name!r}: hardlink target {member.linkname!r} does not exist"
            ) from None
        self.stats.hardlinks += 1

    def _apply_whiteout(self, member, parent_fd: int, parts: list[str]) -> None:
        leaf = parts[-1]
        if leaf == WHITEOUT_OPAQUE:
            os.setxattr(parent_fd, OPAQUE_XATTR, b"y")
            self.stats.opaque_dirs += 1
            return
        if leaf.startswith(WHITEOUT_META_PREFIX):
            return  # AUFS bookkeeping (.wh..wh.plnk and the like): Docker skips it too.
        hidden = leaf[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise UnsafeArchive(f"entry {member.name!r} is a whiteout of an invalid name")
        self._remove(parent_fd, hidden, tuple(parts[:-1]) + (hidden,))
        # Mode 0, as overlayfs itself and Docker create whiteouts.
        os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent_fd)
        os.chown(hidden, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        os.utime(hidden, ns=member_ns(member), dir_fd=parent_fd, follow_symlinks=False)
        self.stats.whiteouts += 1

    def finish(self) -> None:
        """Set directory mtimes, deepest first, now that nothing more is written into them."""
        for parts in sorted(self.dir_times, key=len, reverse=True):
            ns = int(self.dir_times[parts] * 1_000_000_000)
            self._trim_dirs()
            try:
                fd = self._dir(parts, "/".join(parts), create=False)
            except (UnsafeArchive, OSError):
                continue  # Replaced by a later entry.
            os.utime(fd, ns=(ns, ns))


def copy_member_data(member: tarfile.TarInfo, tf: tarfile.TarFile, fd: int) -> None:
    """Write the content of the regular file ``member`` to ``fd``, read through ``tf.extractfile``
    in chunks; UnsafeArchive if the tar ends before ``member.size`` bytes."""
    src = tf.extractfile(member)
    remaining = member.size
    while remaining > 0:
        chunk = src.read(min(_CHUNK, remaining))
        if not chunk:
            raise UnsafeArchive(f"entry {member.name!r}: unexpected end of data")
        _write_all(fd, chunk)
        remaining -= len(chunk)


def member_ns(member: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in ns for os.utime: both the member's mtime."""
    ns = int(member.mtime * 1_000_000_000)
    return ns, ns


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _TarSource:
    """A forward-only reader over a (non-seekable) stream, read in big chunks.

    It is what tarfile reads headers from: ``read`` returns exactly the bytes asked for unless the
    stream ends, ``tell`` counts from the start, and ``seek`` goes forward (skipping) or back within
    the current chunk only, which is all that tarfile does with it. ``copy_to_fd`` writes file contents
    from the chunks themselves, without another copy.
    """

    def __init__(self, fileobj, chunk_size: int = _CHUNK):
        self._fileobj = fileobj
        self._chunk_size = chunk_size
        self._buf = b""
        self._off = 0  # position in _buf
        self._pos = 0  # position in the stream
        self._eof = False

    def _fill(self) -> bool:
        """Read the next chunk into the (used up) buffer; False at the end of the stream."""
        while not self._eof:
            data = self._fileobj.read(self._chunk_size)
            if not data:
                self._eof = True
                break
            self._buf, self._off = data, 0
            return True
        self._buf, self._off = b"", 0
        return False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [self._buf[self._off:]]
            self._pos += len(parts[0])
            while self._fill():
                parts.append(self._buf)
                self._pos += len(self._buf)
            self._buf, self._off = b"", 0
            return b"".join(parts)
        available = len(self._buf) - self._off
        if n <= available:
            data = self._buf[self._off:self._off + n]
            self._off += n
            self._pos += n
            return data
        parts = []
        while n > 0:
            if self._off >= len(self._buf) and not self._fill():
                break
            take = min(n, len(self._buf) - self._off)
            parts.append(self._buf[self._off:self._off + take])
            self._off += take
            self._pos += take
            n -= take
        return b"".join(parts)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a layer stream can only seek from its start or position")
        if offset < self._pos:
            back = self._pos - offset
            if back > self._off:
                raise io.UnsupportedOperation("cannot seek backwards in a layer stream")
            self._off -= back
            self._pos = offset
            return offset
        skip = offset - self._pos
        while skip > 0:
            if self._off >= len(self._buf) and not self._fill():
                break  # Past the end, as a file allows; the next read returns b"".
            take = min(skip, len(self._buf) - self._off)
            self._off += take
            skip -= take
        self._pos = offset
        return offset

    def copy_to_fd(self, fd: int, n: int) -> int:
        """Write the next ``n`` bytes to ``fd``; return how many there were (fewer at the end)."""
        done = 0
        while done < n:
            if self._off >= len(self._buf) and not self._fill():
                break
            take = min(n - done, len(self._buf) - self._off)
            _write_all(fd, memoryview(self._buf)[self._off:self._off + take])
            self._off += take
            self._pos += take
            done += take
        return done


def apply_tar(fileobj: BinaryIO, dest_dir: str) -> ApplyStats:
    """Apply an uncompressed layer tar stream to ``dest_dir`` and return what was written.

    ``fileobj`` is read once, front to back (it need not be seekable), and only up to the tar's
    end-of-archive marker. Raises UnsafeArchive, naming the entry, for ``..`` components, writes
    through symlinks, hardlinks to anything that is not an earlier entry of this tar, negative
    sizes and corrupt headers. On an error ``dest_dir`` is left half-written: the caller applies
    into a staging directory and removes it.
    """
    source = _TarSource(fileobj)
    applier = _Applier(dest_dir, source)
    try:
        # Not tarfile's stream mode ("r|"): it reads in 10 KiB records and copies each file through
        # them. _TarSource gives tarfile the forward-only seeks it needs, and the applier copies
        # file contents from its buffers.
        apply_members(source, "r:", applier.apply)
        applier.finish()
        return applier.stats
    finally:
        applier.close()


def apply_members(fileobj: BinaryIO, mode: str,
                  apply: Callable[[tarfile.TarInfo, tarfile.TarFile], None]) -> None:
    """Open ``fileobj`` as a tar (tarfile ``mode``, "r:" or "r|") and call ``apply(member, tf)`` for
    each entry, in order.

    Headers are parsed by _SafeTarInfo; a corrupt tar raises UnsafeArchive ("invalid tar
    stream"), a tarfile error while applying an entry raises UnsafeArchive naming the entry.
    tarfile's own list of members is kept empty (a layer may have very many).
    """
    try:
        tf = tarfile.open(fileobj=fileobj, mode=mode, tarinfo=_SafeTarInfo)
    except tarfile.TarError as exc:
        raise UnsafeArchive(f"invalid tar stream: {exc}") from None
    with tf:
        while True:
            try:
                member = tf.next()
            except tarfile.TarError as exc:
                raise UnsafeArchive(f"invalid tar stream: {exc}") from None
            if member is None:
                break
            # tarfile keeps every member in a list; we need none of them.
            tf.members.clear()
            try:
                apply(member, tf)
            except tarfile.TarError as exc:
                raise UnsafeArchive(f"entry {member.name!r}: {exc}") from None


#
# Packing
#


def pack_dir(src_dir: str, out_fileobj: BinaryIO) -> int:
    """Write the tree under ``src_dir`` (an overlay upper directory) to ``out_fileobj`` as an OCI layer tar.

    Entries come in sorted order with numeric owners, modes, mtimes truncated to seconds, xattrs
    (but not overlay's own or SELinux labels), devices, fifos and hardlinks, so the same tree
    always gives the same bytes. Overlay whiteouts become ``.wh.NAME`` files and opaque
    directories get a ``.wh..wh..opq`` file. Sockets are skipped, as Docker does. Returns the number
    of entries written.
    """
    root_fd = os.open(src_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with tarfile.open(fileobj=out_fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            packer = _Packer(tf)
            packer.walk(root_fd, "")
            return packer.count
    finally:
        os.close(root_fd)


class _Packer:
    """Writes the entries of one directory tree, reading everything relative to directory fds."""

    def __init__(self, tf: tarfile.TarFile):
        self.tf = tf
        self.count = 0
        # (st_dev, st_ino) of multiply-linked files already written -> their name in the tar.
        self.links: dict[tuple[int, int], str] = {}

    def walk(self, dir_fd: int, prefix: str) -> None:
        for leaf in sorted(os.listdir(dir_fd)):
            name = prefix + leaf
            st = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                fd = os.open(leaf, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    self._add(self._info(name, st, tarfile.DIRTYPE), xattrs=_fd_xattrs(fd))
                    if _get_xattr(fd, OPAQUE_XATTR) == b"y":
                        opq = self._info(f"{name}/{WHITEOUT_OPAQUE}", st, tarfile.REGTYPE)
                        opq.mode = st.st_mode & 0o777
                        self._add(opq)
                    self.walk(fd, name + "/")
                finally:
                    os.close(fd)
            elif stat.S_ISCHR(mode) and st.st_rdev == 0:
                whiteout = self._info(prefix + WHITEOUT_PREFIX + leaf, st, tarfile.REGTYPE)
                whiteout.mode = 0o600
                self._add(whiteout)
            elif stat.S_ISSOCK(mode):
                continue
            elif st.st_nlink > 1 and not stat.S_ISDIR(mode) and (st.st_dev, st.st_ino) in self.links:
                info = self._info(name, st, tarfile.LNKTYPE)
                info.linkname = self.links[(st.st_dev, st.st_ino)]
                self._add(info)
            else:
                self._add_node(dir_fd, leaf, name, st)
                if st.st_nlink > 1:
                    self.links[(st.st_dev, st.st_ino)] = name

    def _add_node(self, dir_fd: int, leaf: str, name: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                st = os.fstat(fd)
                info = self._info(name, st, tarfile.REGTYPE)
                info.size = st.st_size
                with os.fdopen(os.dup(fd), "rb") as f:
                    self._add(info, f, xattrs=_fd_xattrs(fd))
            finally:
                os.close(fd)
            return
        proc_path = f"/proc/self/fd/{dir_fd}/{leaf}"
        xattrs = _path_xattrs(proc_path)
        if stat.S_ISLNK(mode):
            info = self._info(name, st, tarfile.SYMTYPE)
            info.linkname = os.readlink(leaf, dir_fd=dir_fd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info = self._info(name, st, tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE)
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            info = self._info(name, st, tarfile.FIFOTYPE)
        else:
            return
        self._add(info, xattrs=xattrs)

    @staticmethod
    def _info(name: str, st: os.stat_result, type_: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = type_
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)
        return info

    def _add(self, info: tarfile.TarInfo, fileobj=None, xattrs: dict[str, bytes] | None = None) -> None:
        if xattrs:
            info.pax_headers = {
                PAX_XATTR_PREFIX + key: value.decode("utf-8", "surrogateescape")
                for key, value in sorted(xattrs.items())
            }
        self.tf.addfile(info, fileobj)
        self.count += 1


def _exportable(key: str) -> bool:
    return not key.startswith(OVERLAY_XATTR_PREFIX) and key not in _UNEXPORTED_XATTRS


def _get_xattr(target, key: str) -> bytes | None:
    try:
        return os.getxattr(target, key)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def _fd_xattrs(fd: int) -> dict[str, bytes]:
    """The exportable xattrs of an open file or directory."""
    try:
        keys = os.listxattr(fd)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return {}
        raise
    return {k: v for k in keys if _exportable(k) and (v := _get_xattr(fd, k)) is not None}


def _path_xattrs(path: str) -> dict[str, bytes]:
    """The exportable xattrs of a symlink, device or fifo (``path`` is not followed)."""
    try:
        keys = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return {}
        raise
    found = {}
    for key in keys:
        if not _exportable(key):
            continue
        try:
            found[key] = os.getxattr(path, key, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
    return found
