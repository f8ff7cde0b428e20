"""The build context: an untrusted tar stream, unpacked into the build's own staging directory.

- ``extract_context`` spools the stream (plain, gzip, bzip2, xz or zstd, bounded in size), refuses
  an archive with an absolute or ``..`` entry before writing anything, then unpacks it with
  ``runtime.archive.apply_tar`` (every write relative to a directory fd, never through a symlink,
  so an entry under a planted ``link -> /etc`` is refused).
- ``.dockerignore`` is read as Docker's patternmatcher reads it (``**``, ``!`` exceptions, Go's
  filepath.Match for the rest; a path is excluded when it or one of its parents matches the last
  pattern that matches), and the ignored files are removed from the staging copy.
- ``BuildContext.resolve`` finds a COPY source inside the context: ``..`` that climbs out, and a
  symlink that points out (an absolute target or one climbing above the root), are refused.
- ``ContextCache`` keeps a few unpacked contexts by the sha256 of their tar, so that a rebuild of
  an unchanged context (the usual cached rebuild) neither unpacks it again nor removes it after.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import posixpath
import re
import secrets
import shutil
import stat
import tarfile
import time
from dataclasses import dataclass
from typing import BinaryIO

from runtime import archive
from runtime.errors import InvalidArgument, UnsafeArchive
from runtime.images import _decompress_into

__all__ = ["BuildContext", "ContextCache", "ContextError", "IgnoreMatcher", "extract_context", "plain_tar_digest",
           "read_dockerignore"]

# Contexts larger than this (decompressed) are refused.
MAX_CONTEXT_SIZE = 8 * 1024 * 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40


class ContextError(InvalidArgument):
    """A COPY/ADD source that is outside the context, missing, or otherwise unusable."""


#
# Extraction
#


def extract_context(stream: BinaryIO, staging: str) -> "BuildContext":
    """Unpack the context tar ``stream`` into ``<staging>/context`` and return it.

    UnsafeArchive for a hostile archive; nothing is written outside ``staging`` in any case.
    """
    spool = os.path.join(staging, "context.tar")
    with open(spool, "wb") as out:
        _decompress_into(stream, out, MAX_CONTEXT_SIZE)
    _check_names(spool)
    root = os.path.join(staging, "context")
    os.mkdir(root, 0o755)
    with open(spool, "rb") as f:
        if os.fstat(f.fileno()).st_size:
            archive.apply_tar(f, root)
    os.unlink(spool)
    return BuildContext(root)


def _check_names(path: str) -> None:
    """Refuse absolute and ``..`` entry names (and hardlinks to them) before anything is written."""
    if not os.path.getsize(path):
        return
    try:
        with tarfile.open(path, mode="r:", tarinfo=archive._SafeTarInfo) as tf:
            while True:
                member = tf.next()
                if member is None:
                    break
                tf.members.clear()
                names = [("entry", member.name)]
                if member.islnk():
                    names.append(("hardlink target", member.linkname))
                for what, name in names:
                    if name.startswith("/"):
                        raise UnsafeArchive(f"build context: {what} {name!r} is an absolute path")
                    if ".." in name.split("/"):
                        raise UnsafeArchive(f"build context: {what} {name!r} has a '..' path component")
    except tarfile.TarError as exc:
        raise UnsafeArchive(f"build context: invalid tar stream: {exc}") from None


#
# Unpacked contexts kept for rebuilds
#

# A context tar larger than this is never kept; at most this many are.
CONTEXT_CACHE_MAX_TAR = 16 * 1024 * 1024
CONTEXT_CACHE_ENTRIES = 4
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\x00", b"BZh")


def plain_tar_digest(stream: BinaryIO, limit: int = CONTEXT_CACHE_MAX_TAR) -> str | None:
    """The sha256 (hex) of the rest of ``stream`` when it is a regular file of at most ``limit``
    bytes that is not compressed (what the docker CLI sends), read with ``pread`` (the stream's
    position does not move); None otherwise: such a context is unpacked and never kept."""
    try:
        fd = stream.fileno()
        start = stream.tell()
    except (AttributeError, OSError, ValueError):
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size - start <= limit:
        return None
    data = os.pread(fd, st.st_size - start, start)
    if len(data) != st.st_size - start or data.startswith(_COMPRESSED_MAGIC):
        return None
    return hashlib.sha256(data).hexdigest()


class ContextCache:
    """``<dir>/<sha256 of the context tar>/context``: unpacked contexts kept for the next build.

    An entry is only ever read: a build uses it as its context (``use``) under a shared flock of
    the entry's ``.lock``, and it is only kept (``keep``) when ``.dockerignore`` removed nothing from
    it, so a build of the same tar would have unpacked exactly these files. Entries come in by a
    rename of a complete directory; the least recently used go (renamed away under an exclusive
    flock, so never one in use) beyond ``CONTEXT_CACHE_ENTRIES``.
    """

    def __init__(self, directory: str, entries: int = CONTEXT_CACHE_ENTRIES):
        self.dir = directory
        self.entries = entries
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def _entry(self, digest: str) -> str:
        if not _DIGEST_RE.fullmatch(digest):
            raise ValueError(f"not a sha256: {digest!r}")
        return os.path.join(self.dir, digest)

    @contextlib.contextmanager
    def use(self, digest: str):
        """Yield the kept context of the tar with this sha256 (a BuildContext), or None."""
        entry = self._entry(digest)
        try:
            fd = os.open(os.path.join(entry, ".lock"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:  # still the entry, not one renamed away for removal while we waited
                same = os.stat(os.path.join(entry, ".lock")).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                yield None
                return
            with contextlib.suppress(OSError):
                os.utime(entry)  # recently used
            yield BuildContext(os.path.join(entry, "context"))
        finally:
            os.close(fd)

    def keep(self, digest: str, context_dir: str) -> bool:
        """Move the unpacked ``context_dir`` in as the entry of ``digest``; False if there is one."""
        entry = self._entry(digest)
        if os.path.exists(entry):
            return False
        new = os.path.join(self.dir, f".new-{secrets.token_hex(8)}")
        os.mkdir(new, 0o700)
        try:
            os.rename(context_dir, os.path.join(new, "context"))
            os.close(os.open(os.path.join(new, ".lock"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            os.rename(new, entry)
        except OSError:  # another build kept the same context first
            shutil.rmtree(new, ignore_errors=True)
            return False
        self._evict(keep=digest)
        return True

    def _evict(self, keep: str) -> None:
        entries = []
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if not _DIGEST_RE.fullmatch(name):
                with contextlib.suppress(OSError):  # left by a crash (renamed away, or never renamed in)
                    if os.stat(path).st_mtime < time.time() - 3600:
                        shutil.rmtree(path, ignore_errors=True)
                continue
            with contextlib.suppress(OSError):
                entries.append((os.stat(path).st_mtime, name))
        entries.sort(reverse=True)
        for _, name in entries[self.entries:]:
            if name != keep:
                self.remove(name)

    def remove(self, digest: str) -> bool:
        """Remove one entry unless a build uses it; True if it went."""
        entry = self._entry(digest)
        try:
            fd = os.open(os.path.join(entry, ".lock"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            old = os.path.join(self.dir, f".old-{secrets.token_hex(8)}")
            try:
                os.rename(entry, old)
            except OSError:
                return False
            shutil.rmtree(old, ignore_errors=True)
            return True
        finally:
            os.close(fd)

    def clear(self) -> list[str]:
        """Remove every entry no build uses (``docker builder prune``); return their digests."""
        return [name for name in sorted(os.listdir(self.dir)) if _DIGEST_RE.fullmatch(name) and self.remove(name)]


#
# .dockerignore
#


@dataclass
class _Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern


def _pattern_regex(pattern: str) -> re.Pattern:
    """moby/patternmatcher's Pattern.compile: Go filepath.Match plus ``**``."""
    out = "^"
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                out += ".*" if i >= n else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\":
            if i < n:
                out += re.escape(pattern[i])
                i += 1
            else:
                out += "\\\\"
        elif ch == "[":
            end = pattern.find("]", i + 1 if i < n and pattern[i] in "!^" else i)
            if end < 0:
                raise InvalidArgument(f".dockerignore: syntax error in pattern {pattern!r}")
            body = pattern[i:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out += "[" + body.replace("\\", "\\\\") + "]"
            i = end + 1
        else:
            out += re.escape(ch)
    return re.compile(out + "$", re.S)


class IgnoreMatcher:
    """The patterns of a .dockerignore; ``excluded(path)`` answers for a context-relative path."""

    def __init__(self, lines: list[str]):
        self.patterns: list[_Pattern] = []
        for raw in lines:
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            exclusion = text.startswith("!")
            if exclusion:
                text = text[1:].strip()
                if not text:
                    raise InvalidArgument('.dockerignore: illegal exclusion pattern: "!"')
            text = posixpath.normpath(text)
            if len(text) > 1 and text.startswith("/"):
                text = text.lstrip("/") or "."
            self.patterns.append(_Pattern(text, exclusion, _pattern_regex(text)))

    @property
    def has_exclusions(self) -> bool:
        return any(p.exclusion for p in self.patterns)

    def excluded(self, path: str) -> bool:
        path = posixpath.normpath(path)
        parents = path.split("/")[:-1]
        matched = False
        for pattern in self.patterns:
            hit = bool(pattern.regex.match(path))
            if not hit and parents:
                hit = any(pattern.regex.match("/".join(parents[:k + 1])) for k in range(len(parents)))
            if hit:
                matched = not pattern.exclusion
        return matched


def read_dockerignore(context_root: str) -> IgnoreMatcher:
    """The context's .dockerignore (a regular file at its root), or an empty matcher."""
    fd = os.open(context_root, _DIR_FLAGS)
    try:
        try:
            f = os.open(".dockerignore", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except (FileNotFoundError, OSError):
            return IgnoreMatcher([])
        with os.fdopen(f, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return IgnoreMatcher([])
            data = fh.read(1 << 20)
    finally:
        os.close(fd)
    return IgnoreMatcher(data.decode("utf-8", "replace").splitlines())


#
# The context
#


class BuildContext:
    """An unpacked context directory (owned by the build)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def apply_ignore(self, matcher: IgnoreMatcher) -> list[str]:
        """Remove what ``matcher`` excludes; return the removed paths (relative, sorted)."""
        removed: list[str] = []
        if not matcher.patterns:
            return removed
        for dirpath, dirnames, filenames in os.walk(self.root, topdown=False, followlinks=False):
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames + dirnames:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                full = os.path.join(dirpath, name)
                if not matcher.excluded(rel):
                    continue
                st = os.lstat(full)
                if stat.S_ISDIR(st.st_mode):
                    try:
                        os.rmdir(full)  # Kept when an exception left something in it.
                    except OSError as exc:
                        if exc.errno != errno.ENOTEMPTY:
                            raise
                        continue
                else:
                    os.unlink(full)
                removed.append(rel)
        return sorted(removed)

    def read_file(self, name: str, limit: int) -> bytes:
        """Read a regular file of the context (the Dockerfile), never leaving the context."""
        parent_fd, leaf, st = self.resolve(name)
        try:
            if leaf is None or not stat.S_ISREG(st.st_mode):
                raise ContextError(f"{name} is not a regular file in the build context")
            fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        finally:
            os.close(parent_fd)
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ContextError(f"{name} is over {limit} bytes")
        return data

    def resolve(self, path: str) -> tuple[int, str | None, os.stat_result]:
        """Find ``path`` (relative to the context root) without leaving the context.

        Returns (parent dir fd, leaf name or None for the root, lstat of the target); the caller
        closes the fd. The final symlink is followed too. ContextError for a path outside the
        context (``../x``, or through a symlink whose target is absolute or climbs out) and for a
        missing one.
        """
        shown = path
        if path.startswith("/"):
            path = path.lstrip("/")  # As Docker does: a source is relative to the context root.
        clean = posixpath.normpath(path) if path else "."
        if clean == ".." or clean.startswith("../"):
            raise ContextError(f"forbidden path outside the build context: {shown} ()")
        pending = [p for p in clean.split("/") if p not in ("", ".")]
        stack = [os.open(self.root, _DIR_FLAGS)]
        names: list[str] = []
        links = 0
        try:
            while pending:
                part = pending.pop(0)
                if part == "..":
                    if len(stack) == 1:
                        raise ContextError(f"forbidden path outside the build context: {shown} ()")
                    os.close(stack.pop())
                    names.pop()
                    continue
                try:
                    st = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
                except FileNotFoundError:
                    raise ContextError(f"file not found in build context or excluded by .dockerignore: "
                                       f"stat {shown}: file does not exist") from None
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > _MAX_LINKS:
                        raise ContextError(f"{shown}: too many levels of symbolic links")
                    target = os.readlink(part, dir_fd=stack[-1])
                    joined = posixpath.normpath(posixpath.join("/".join(names), target)) if not target.startswith("/") else None
                    if joined is None or joined == ".." or joined.startswith("../"):
                        raise ContextError(
                            f"forbidden path outside the build context: {shown} "
                            f"(symlink {'/'.join(names + [part])} -> {target})")
                    pending = [p for p in target.split("/") if p not in ("", ".")] + pending
                    continue
                if not pending:
                    parent = stack.pop()
                    for fd in stack:
                        os.close(fd)
                    stack = []
                    return parent, part, st
                if not stat.S_ISDIR(st.st_mode):
                    raise ContextError(f"{shown}: {'/'.join(names + [part])} is not a directory")
                stack.append(os.open(part, _DIR_FLAGS, dir_fd=stack[-1]))
                names.append(part)
            # The path is a directory we are in: describe it by itself, leaf None.
            top = stack.pop()
            for fd in stack:
                os.close(fd)
            stack = []
            return top, None, os.fstat(top)
        finally:
            for fd in stack:
                os.close(fd)

    def glob(self, pattern: str) -> list[str]:
        """Context paths matching ``pattern`` (Go filepath.Match per component), sorted."""
        clean = posixpath.normpath(pattern.lstrip("/")) if pattern.strip("/") else "."
        if clean == ".." or clean.startswith("../"):
            raise ContextError(f"forbidden path outside the build context: {pattern} ()")
        parts = clean.split("/")
        found: list[str] = []

        def walk(fd: int, prefix: list[str], index: int) -> None:
            if index == len(parts):
                found.append("/".join(prefix))
                return
            part = parts[index]
            try:
                names = sorted(os.listdir(fd))
            except OSError:
                return
            for name in names:
                if not _match_component(part, name):
                    continue
                if index + 1 == len(parts):
                    found.append("/".join(prefix + [name]))
                    continue
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                try:
                    walk(child, prefix + [name], index + 1)
                finally:
                    os.close(child)

        root = os.open(self.root, _DIR_FLAGS)
        try:
            walk(root, [], 0)
        finally:
            os.close(root)
        return found


def has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _match_component(pattern: str, name: str) -> bool:
    """Go's filepath.Match for one component (``*`` and ``?`` never match "/")."""
    return bool(_pattern_regex(pattern).match(name)) if has_glob(pattern) or "\\" in pattern else pattern == name


def tree_digest(parent_fd: int, leaf: str | None, st: os.stat_result, h: "hashlib._Hash", name: str) -> None:
    """Hash what COPY reads at one source: names, types, modes, link targets and contents
    (not owners or times, as Docker's source hash leaves them out)."""
    kind = stat.S_IFMT(st.st_mode)
    h.update(f"{name}\0{kind:o}\0{stat.S_IMODE(st.st_mode):o}\0".encode("utf-8", "surrogateescape"))
    if stat.S_ISLNK(st.st_mode):
        h.update(os.readlink(leaf, dir_fd=parent_fd).encode("utf-8", "surrogateescape") + b"\0")
    elif stat.S_ISREG(st.st_mode):
        fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            h.update(f"{st.st_size}\0".encode())
            while chunk := os.read(fd, 1 << 20):
                h.update(chunk)
        finally:
            os.close(fd)
    elif stat.S_ISDIR(st.st_mode):
        fd = os.open(leaf, _DIR_FLAGS, dir_fd=parent_fd) if leaf is not None else os.dup(parent_fd)
        try:
            for child in sorted(os.listdir(fd)):
                child_st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                tree_digest(fd, child, child_st, h, f"{name}/{child}")
        finally:
            os.close(fd)
