"""Content-addressed blob store: compressed layers, manifests and configs, named by their digest.

On disk, under the store root (the engine's ``RUNTIME_ROOT``)::

    blobs/sha256/<hex>          committed blobs; a file here always matches its name
    ingest/<name>/data          bytes of a blob being written
    ingest/<name>/lock          flock(2)ed by the one writer of this ingest
    tmp/                        staging directories handed out by tmp_dir(); emptied by clean_tmp()

``<name>`` is ``k-<sha256 of key>`` for a keyed (resumable) ingest and ``a-<random>`` otherwise.

Lifecycle of a blob (containerd's content store works the same way): ``ingest()`` opens a writer,
``write()`` appends, ``commit()`` checks size and digest and renames the data into ``blobs/``; only
then is it visible to ``has_blob()``. A blob is never written in place.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import tempfile
from typing import BinaryIO, Iterator

from runtime.digest import Digest, sha256_digest
from runtime.errors import AlreadyExists, DigestMismatch, InvalidArgument, NotFound
from runtime.fsutil import fsync_dir

__all__ = ["IngestWriter", "Store"]

_CHUNK = 1 << 20


class Store:
    """A content-addressed blob store rooted at ``root``. Safe to share between threads and processes."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.blobs_dir = os.path.join(self.root, "blobs", "sha256")
        self.ingest_dir = os.path.join(self.root, "ingest")
        self.tmp_root = os.path.join(self.root, "tmp")
        for path in (self.blobs_dir, self.ingest_dir, self.tmp_root):
            os.makedirs(path, mode=0o700, exist_ok=True)

    #
    # Reading
    #

    def blob_path(self, digest: str) -> str:
        """Return where the blob ``digest`` lives (or would live). Validates the digest."""
        return os.path.join(self.blobs_dir, Digest(digest).hex)

    def has_blob(self, digest: str) -> bool:
        """Return True if the blob ``digest`` is committed."""
        return os.path.isfile(self.blob_path(digest))

    def blob_size(self, digest: str) -> int:
        """Return the size in bytes of the blob ``digest``; NotFound if it is not committed."""
        try:
            return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def open_blob(self, digest: str) -> BinaryIO:
        """Open the blob ``digest`` for reading; NotFound if it is not committed."""
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def read_blob(self, digest: str, max_size: int) -> bytes:
        """Return the content of the blob ``digest``, checked against its digest.

        Raises NotFound if missing, InvalidArgument if larger than ``max_size`` bytes (manifests and
        configs are small; a huge one is refused before it is read), DigestMismatch if corrupt on disk.
        """
        with self.open_blob(digest) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_size:
                raise InvalidArgument(f"blob {digest} is {size} bytes, more than the {max_size} allowed")
            data = f.read(max_size + 1)
        if len(data) > max_size:
            raise InvalidArgument(f"blob {digest} is more than the {max_size} bytes allowed")
        if sha256_digest(data) != digest:
            raise DigestMismatch(f"blob {digest} is corrupt on disk")
        return data

    def blobs(self) -> Iterator[Digest]:
        """Yield the digest of every committed blob, in no particular order."""
        for entry in os.scandir(self.blobs_dir):
            try:
                digest = Digest.from_hex(entry.name)
            except InvalidArgument:
                continue
            if entry.is_file(follow_symlinks=False):
                yield digest

    #
    # Writing
    #

    def delete_blob(self, digest: str, missing_ok: bool = False) -> None:
        """Remove the blob ``digest``. NotFound if it is not there, unless ``missing_ok``."""
        try:
            os.unlink(self.blob_path(digest))
        except FileNotFoundError:
            if not missing_ok:
                raise NotFound(f"blob {digest} not found") from None
            return
        fsync_dir(self.blobs_dir)

    def write_blob(self, data: bytes, expected: str | None = None) -> Digest:
        """Store ``data`` as a blob and return its digest.

        If ``expected`` is given and ``data`` does not hash to it, raise DigestMismatch and store nothing.
        Writing a blob that is already present is a no-op.
        """
        digest = sha256_digest(data)
        if expected is not None and digest != Digest(expected):
            raise DigestMismatch(f"unexpected content digest {digest}, expected {expected}")
        if self.has_blob(digest):
            return digest
        with self.ingest(digest, len(data)) as writer:
            writer.write(data)
            return writer.commit()

    def ingest(
        self, expected: str | None = None, expected_size: int | None = None, key: str | None = None
    ) -> "IngestWriter":
        """Open a writer for a new blob.

        ``expected`` and ``expected_size`` are checked by ``commit()`` (and the size on every write).
        With a ``key`` (usually the expected digest) the partial bytes survive the writer, so a later
        ingest with the same key resumes at ``.offset``. Only one writer per key exists at a time:
        a second one waits for the first, and raises AlreadyExists if the first committed the blob.
        Raises AlreadyExists at once if the ``expected`` blob is already committed.
        """
        if expected is not None:
            expected = Digest(expected)
            if self.has_blob(expected):
                raise AlreadyExists(f"blob {expected} already exists")
        if expected_size is not None and expected_size < 0:
            raise InvalidArgument(f"invalid blob size {expected_size}")
        return IngestWriter(self, expected, expected_size, key)

    #
    # Staging
    #

    def tmp_dir(self, prefix: str = "") -> str:
        """Create and return a new empty staging directory under ``tmp/``; the caller removes it."""
        return tempfile.mkdtemp(prefix=prefix, dir=self.tmp_root)

    def clean_tmp(self) -> None:
        """Empty ``tmp/`` and drop abandoned anonymous ingests. Call at engine start.

        Keyed ingests are kept so that their downloads can resume; ingests whose writer is alive
        (their lock is held) are left alone.
        """
        for entry in os.scandir(self.tmp_root):
            _remove_path(entry.path)
        for entry in os.scandir(self.ingest_dir):
            if not entry.name.startswith("a-"):
                continue
            lock_path = os.path.join(entry.path, "lock")
            try:
                fd = os.open(lock_path, os.O_RDWR)
            except FileNotFoundError:
                _remove_path(entry.path)
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # A live writer owns it.
                _remove_path(entry.path)
            finally:
                os.close(fd)


class IngestWriter:
    """Writes one blob into the ingest area; ``commit()`` makes it visible, ``abort()`` discards it.

    As a context manager it aborts when the block raises. A keyed ingest keeps its partial bytes
    for a later resume when the error is not a DigestMismatch; everything else is discarded.
    """

    def __init__(self, store: Store, expected: Digest | None, expected_size: int | None, key: str | None):
        self.store = store
        self.expected = expected
        self.expected_size = expected_size
        self.key = key
        if key is not None:
            name = "k-" + hashlib.sha256(key.encode()).hexdigest()
        else:
            name = "a-" + secrets.token_hex(16)
        self.path = os.path.join(store.ingest_dir, name)
        self.data_path = os.path.join(self.path, "data")
        self._lock_path = os.path.join(self.path, "lock")
        self._lock_fd = self._acquire_lock()
        self._done = False
        self._file = None
        try:
            if expected is not None and store.has_blob(expected):
                # Another writer with our key committed while we waited for the lock.
                raise AlreadyExists(f"blob {expected} already exists")
            self._file = open(self.data_path, "a+b")
            self._hash = hashlib.sha256()
            self._offset = self._rehash()
        except BaseException:
            if self._file is not None:
                self._file.close()
            # Partial bytes of a blob that is now committed are of no further use.
            self._release(discard=True)
            raise

    def _acquire_lock(self) -> int:
        """Take the exclusive lock of this ingest, waiting for any other writer of the same key."""
        while True:
            try:
                os.mkdir(self.path, mode=0o700)
            except FileExistsError:
                pass
            try:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                continue  # The previous writer removed the directory between makedirs and open.
            fcntl.flock(fd, fcntl.LOCK_EX)
            # The previous holder may have unlinked the lock file before releasing it: our lock is
            # then on a dead inode, and someone else may already hold the new one. Start again.
            try:
                current = os.stat(self._lock_path)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
                return fd
            os.close(fd)

    def _rehash(self) -> int:
        """Hash the partial bytes left by an earlier writer; return how many there are."""
        self._file.seek(0)
        size = 0
        while chunk := self._file.read(_CHUNK):
            self._hash.update(chunk)
            size += len(chunk)
        if self.expected_size is not None and size > self.expected_size:
            # Garbage from an earlier attempt: start over.
            self._file.truncate(0)
            self._hash = hashlib.sha256()
            size = 0
        self._file.seek(0, os.SEEK_END)
        return size

    @property
    def offset(self) -> int:
        """How many bytes the blob has so far: where a resumed download must start."""
        return self._offset

    def digest(self) -> Digest:
        """Return the digest of the bytes written so far."""
        return Digest.from_hex(self._hash.hexdigest())

    def write(self, data: bytes) -> int:
        """Append ``data``. Raises DigestMismatch (and discards the ingest) past the expected size."""
        self._check_open()
        if self.expected_size is not None and self._offset + len(data) > self.expected_size:
            size = self._offset + len(data)
            self.abort()
            raise DigestMismatch(
                f"{self._label()} is larger than its declared size of {self.expected_size} bytes "
                f"(got at least {size})"
            )
        self._file.write(data)
        self._hash.update(data)
        self._offset += len(data)
        return len(data)

    def commit(self) -> Digest:
        """Make the blob visible and return its digest.

        1. Check the size and the digest against what was expected; on a mismatch discard
           everything and raise DigestMismatch.
        2. Flush and fsync the data.
        3. Rename it to ``blobs/sha256/<hex>`` and fsync that directory.
        4. Remove the ingest directory and release the lock.
        """
        self._check_open()
        digest = self.digest()
        if self.expected_size is not None and self._offset != self.expected_size:
            self.abort()
            raise DigestMismatch(
                f"unexpected commit size {self._offset}, expected {self.expected_size} "
                f"for {self._label()}"
            )
        if self.expected is not None and digest != self.expected:
            self.abort()
            raise DigestMismatch(f"unexpected commit digest {digest}, expected {self.expected}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target = self.store.blob_path(digest)
        # If the same content was committed meanwhile by an ingest with another key, the rename
        # replaces identical bytes, which readers cannot tell apart.
        os.rename(self.data_path, target)
        fsync_dir(self.store.blobs_dir)
        self._release(discard=True)
        return digest

    def abort(self, discard: bool = True) -> None:
        """Give up this ingest. Its bytes are deleted unless ``discard`` is False and it is keyed."""
        if self._done:
            return
        self._file.close()
        self._release(discard=discard or self.key is None)

    def close(self) -> None:
        """Release the writer without committing; a keyed ingest keeps its bytes for a resume."""
        self.abort(discard=False)

    def _release(self, discard: bool) -> None:
        """Drop the lock, first removing the ingest directory when ``discard``."""
        self._done = True
        if discard:
            for path in (self.data_path, self._lock_path):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            try:
                os.rmdir(self.path)
            except OSError as exc:
                # A waiting writer may already have created its new lock file here.
                if exc.errno not in (errno.ENOTEMPTY, errno.ENOENT):
                    raise
        os.close(self._lock_fd)

    def _label(self) -> str:
        """Name this ingest in error messages."""
        if self.expected is not None:
            return f"blob {self.expected}"
        if self.key is not None:
            return f"ingest {self.key}"
        return "blob"

    def _check_open(self) -> None:
        if self._done:
            raise InvalidArgument(f"{self._label()}: ingest is already committed or aborted")

    def __enter__(self) -> "IngestWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._done:
            return
        keep = self.key is not None and not isinstance(exc, DigestMismatch)
        self.abort(discard=not keep)


def _remove_path(path: str) -> None:
    """Remove a file, symlink or directory tree without following symlinks."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
