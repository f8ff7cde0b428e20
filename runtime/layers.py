"""Unpacked image layers, one directory each, ready to be stacked by overlayfs.

Glossary (as in containerd's snapshotter.go and containers/storage):

- ``digest``: the sha256 of a layer blob as a registry serves it, usually compressed (gzip or
  zstd). It names the blob in the store and in the image manifest.
- ``diff_id``: the sha256 of the *uncompressed* layer tar. The image config lists the diff_ids
  (``rootfs.diff_ids``); it is what we verify when unpacking, whatever the compression.
- ``chain_id``: names a layer *together with everything below it*. For layers L0..Ln (L0 at the
  bottom) ``chain_id(L0) = diff_id(L0)`` and ``chain_id(Ln) = sha256(chain_id(Ln-1) + " " +
  diff_id(Ln))``, as the OCI image spec (config.md, "Layer ChainID") defines. The same diff on a
  different parent is a different layer, so layers are stored by chain_id.
- ``parent``: the chain_id of the layer below, None for a bottom layer.

On disk, under the engine root::

    layers/<chain-id-hex>/diff/        the layer's own files, overlay whiteouts included
    layers/<chain-id-hex>/meta.json    {"chain_id", "diff_id", "parent", "digest", "size"}
    layers/.tmp-<random>/              staging of an apply in progress, renamed into place when done

A layer directory holds only its own diff, never its parent's content: so the layers of one image
can be applied in parallel, each in its own thread, and stacked later (rootfs.py).

Importing a layer (what ``LayerStore.apply`` does):

1. Detect the compression from the first bytes: gzip, zstd or plain tar.
2. Decompress as a stream, bounded in size, hashing the uncompressed bytes (the diff_id) while
   ``archive.apply_tar`` writes them into ``layers/.tmp-<random>/diff``.
3. Check the diff_id (and the compressed digest when given, unless the caller checks it), write
   ``meta.json``.
4. Rename the staging directory to ``layers/<chain-id-hex>``. If another apply got there first,
   drop ours and return theirs.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import secrets
import shutil
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable

import zstandard

from runtime.archive import apply_tar
from runtime.digest import Digest, HashingReader
from runtime.errors import DigestMismatch, InvalidArgument, NotFound, UnsafeArchive
from runtime.fsutil import fsync_dir, read_exactly, write_json_synced

__all__ = ["DEFAULT_MAX_UNCOMPRESSED", "Layer", "LayerStore", "chain_id_of", "chain_ids"]

DEFAULT_MAX_UNCOMPRESSED = 64 << 30  # 64 GiB: no real layer comes close, a zip bomb does.
_STAGING_PREFIX = ".tmp-"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_OTHER_MAGICS = {b"\xfd7zXZ\x00": "xz", b"BZh": "bzip2"}
_PROGRESS_EVERY = 1 << 20
# Compressed bytes read, and uncompressed bytes made, at a time: big enough that zlib and sha256 (which
# release the GIL) do the work rather than the Python around them, small enough to keep memory flat.
_CHUNK = 1 << 20


def chain_id_of(parent: str | None, diff_id: str) -> Digest:
    """Return the chain_id of a layer with ``diff_id`` on top of the layer ``parent`` (a chain_id)."""
    diff_id = Digest(diff_id)
    if parent is None:
        return diff_id
    return Digest.from_hex(hashlib.sha256(f"{Digest(parent)} {diff_id}".encode()).hexdigest())


def chain_ids(diff_ids: list[str]) -> list[Digest]:
    """Return the chain_id of each layer of an image, bottom first, from its ``rootfs.diff_ids``."""
    result: list[Digest] = []
    parent = None
    for diff_id in diff_ids:
        parent = chain_id_of(parent, diff_id)
        result.append(parent)
    return result


@dataclass(frozen=True)
class Layer:
    """One unpacked layer. ``path`` is its diff directory, the overlay lowerdir for this layer."""

    chain_id: Digest
    diff_id: Digest
    # chain_id of the layer below; None for a bottom layer.
    parent: Digest | None
    # Digest of the (compressed) blob it came from; None when unknown (a local build or commit).
    digest: Digest | None
    # Bytes of regular file content in this layer alone.
    size: int
    path: str

    def to_json(self) -> dict:
        """Return the record written to meta.json."""
        return {
            "chain_id": self.chain_id,
            "diff_id": self.diff_id,
            "parent": self.parent,
            "digest": self.digest,
            "size": self.size,
        }


class LayerStore:
    """The unpacked layers under ``<root>/layers``. Safe to use from several threads and processes.

    It keeps no reference counts: which layers an image still needs is decided by the caller.
    """

    def __init__(self, root: str, max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED):
        self.root = os.path.abspath(root)
        self.layers_dir = os.path.join(self.root, "layers")
        self.max_uncompressed = max_uncompressed
        os.makedirs(self.layers_dir, mode=0o700, exist_ok=True)

    def _dir(self, chain_id: str) -> str:
        return os.path.join(self.layers_dir, Digest(chain_id).hex)

    def exists(self, chain_id: str) -> bool:
        """Return True if the layer ``chain_id`` is fully applied."""
        return os.path.isfile(os.path.join(self._dir(chain_id), "meta.json"))

    def get(self, chain_id: str) -> Layer:
        """Return the layer ``chain_id``; NotFound if it is not applied."""
        layer_dir = self._dir(chain_id)
        try:
            with open(os.path.join(layer_dir, "meta.json")) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise NotFound(f"layer {chain_id} not found") from None
        return Layer(
            chain_id=Digest(meta["chain_id"]),
            diff_id=Digest(meta["diff_id"]),
            parent=Digest(meta["parent"]) if meta.get("parent") else None,
            digest=Digest(meta["digest"]) if meta.get("digest") else None,
            size=int(meta["size"]),
            path=os.path.join(layer_dir, "diff"),
        )

    def list(self) -> list[Layer]:
        """Return every applied layer, sorted by chain_id."""
        layers = []
        for name in sorted(os.listdir(self.layers_dir)):
            if name.startswith(_STAGING_PREFIX):
                continue
            try:
                layers.append(self.get(Digest.from_hex(name)))
            except (NotFound, InvalidArgument):
                continue
        return layers

    def remove(self, chain_id: str) -> None:
        """Delete the layer ``chain_id``; NotFound if it is not there.

        The directory is first renamed aside, so the layer disappears at once and a crash halfway
        through the delete leaves only staging debris for ``clean_staging()``.
        """
        layer_dir = self._dir(chain_id)
        doomed = os.path.join(self.layers_dir, f"{_STAGING_PREFIX}rm-{secrets.token_hex(8)}")
        try:
            os.rename(layer_dir, doomed)
        except FileNotFoundError:
            raise NotFound(f"layer {chain_id} not found") from None
        shutil.rmtree(doomed)

    def clean_staging(self) -> None:
        """Remove staging directories left by applies that died. Call at engine start only:
        it would also remove the staging directory of an apply in progress."""
        for name in os.listdir(self.layers_dir):
            if name.startswith(_STAGING_PREFIX):
                shutil.rmtree(os.path.join(self.layers_dir, name), ignore_errors=True)

    def apply(
        self,
        stream: BinaryIO,
        *,
        chain_id: str,
        parent: str | None,
        expected_diff_id: str,
        digest: str | None = None,
        progress: Callable[[int], None] | None = None,
        check_digest: bool = True,
    ) -> Layer:
        """Unpack a layer blob read from ``stream`` (gzip, zstd or plain tar) and return the layer.

        ``chain_id`` must be the chain of ``parent`` and ``expected_diff_id`` (InvalidArgument
        otherwise). If the layer already exists it is returned as is and ``stream`` is not read.
        ``progress`` is called with the number of input bytes consumed so far, about every MiB and
        at the end. Raises DigestMismatch if the content does not match ``expected_diff_id`` or
        ``digest``, UnsafeArchive if it is not a valid, safe archive or decompresses to more than
        ``max_uncompressed`` bytes; in every failure nothing is left behind.

        With ``check_digest=False`` the caller vouches for ``digest`` (it hashes the same bytes on
        their way elsewhere, and makes ``stream`` fail rather than end if they do not match): the
        compressed bytes are not hashed here, and ``digest`` is only recorded. The diff_id is
        always checked.
        """
        chain_id = Digest(chain_id)
        expected_diff_id = Digest(expected_diff_id)
        parent = Digest(parent) if parent is not None else None
        digest = Digest(digest) if digest is not None else None
        if chain_id_of(parent, expected_diff_id) != chain_id:
            raise InvalidArgument(
                f"layer {chain_id} is not the chain of parent {parent} and diff_id {expected_diff_id}"
            )
        if self.exists(chain_id):
            return self.get(chain_id)

        staging = os.path.join(self.layers_dir, _STAGING_PREFIX + secrets.token_hex(8))
        diff_dir = os.path.join(staging, "diff")
        os.makedirs(diff_dir, mode=0o700)
        try:
            layer = self._unpack(stream, staging, chain_id, parent, expected_diff_id, digest, progress,
                                 check_digest)
            try:
                os.rename(staging, self._dir(chain_id))
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # Another apply of the same chain_id finished first: theirs is as good as ours.
                shutil.rmtree(staging, ignore_errors=True)
                return self.get(chain_id)
            fsync_dir(self.layers_dir)
            return layer
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _unpack(self, stream, staging, chain_id, parent, expected_diff_id, digest, progress,
                check_digest=True) -> Layer:
        """Steps 1 to 3 of ``apply``: unpack into ``staging/diff``, verify, write meta.json."""
        counted = _ProgressReader(stream, progress)
        hashed = HashingReader(counted, name=f"layer {chain_id}") if check_digest and digest else None
        compressed = hashed or counted
        head = read_exactly(compressed, 6)
        source = PrefixedReader(head, compressed)
        try:
            if head.startswith(_GZIP_MAGIC):
                decompressed = _GzipReader(source)
            elif head.startswith(_ZSTD_MAGIC):
                decompressed = zstandard.ZstdDecompressor().stream_reader(source, read_size=_CHUNK,
                                                                          read_across_frames=True)
            else:
                for magic, kind in _OTHER_MAGICS.items():
                    if head.startswith(magic):
                        raise UnsafeArchive(f"layer {chain_id}: unsupported compression {kind}")
                decompressed = source
            uncompressed = HashingReader(_BoundedReader(decompressed, self.max_uncompressed, chain_id))
            stats = apply_tar(uncompressed, os.path.join(staging, "diff"))
            # The diff_id covers the whole tar, padding after the end-of-archive marker included.
            uncompressed.drain()
            while compressed.read(_CHUNK):
                pass
        except (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError) as exc:
            raise UnsafeArchive(f"layer {chain_id}: invalid compressed data: {exc}") from None
        if progress is not None:
            progress(counted.count)

        if digest is not None and hashed is not None and hashed.digest() != digest:
            raise DigestMismatch(
                f"layer {chain_id}: unexpected digest {hashed.digest()}, expected {digest}"
            )
        diff_id = uncompressed.digest()
        if diff_id != expected_diff_id:
            raise DigestMismatch(
                f"layer {chain_id}: unexpected diff_id {diff_id}, expected {expected_diff_id}"
            )

        layer = Layer(
            chain_id=chain_id,
            diff_id=diff_id,
            parent=parent,
            digest=digest,
            size=stats.size,
            path=os.path.join(self._dir(chain_id), "diff"),
        )
        meta_path = os.path.join(staging, "meta.json")
        write_json_synced(meta_path, layer.to_json())
        return layer


class _GzipReader:
    """Decompresses a gzip stream, one or more members, as gzip.GzipFile does but in big chunks.

    GzipFile reads 8 KiB at a time, through a BufferedReader; this reads ``_CHUNK`` bytes and lets
    zlib (which releases the GIL) make up to ``n`` bytes per call. zlib checks each member's CRC and
    length; zero bytes between and after members are skipped, as GzipFile skips them; anything else
    after a member must be another member. Raises zlib.error on corrupt data and EOFError when the
    stream ends inside a member.
    """

    def __init__(self, reader):
        self._reader = reader
        self._decompressor = None  # None: between members
        self._input = b""  # compressed bytes not given to zlib yet
        self._eof = False

    def _more_input(self) -> bool:
        if self._eof:
            return False
        data = self._reader.read(_CHUNK)
        if not data:
            self._eof = True
            return False
        self._input = data
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = _CHUNK
        while True:
            if self._decompressor is None:
                # Between members: skip zero padding; anything else starts the next member.
                data = self._input.lstrip(b"\0")
                if not data:
                    if not self._more_input():
                        return b""
                    continue
                self._input = data
                self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            # With no input left this still returns what zlib holds back when the last call hit ``n``.
            out = self._decompressor.decompress(self._input, n)
            if self._decompressor.eof:
                # What follows the member (unconsumed_tail may repeat it: ignore that one).
                self._input = self._decompressor.unused_data
                self._decompressor = None
            else:
                self._input = self._decompressor.unconsumed_tail
            if out:
                return out
            if self._decompressor is not None and not self._input and not self._more_input():
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")


class PrefixedReader:
    """Reads ``prefix`` first, then the rest of ``reader``: a peek for non-seekable streams."""

    def __init__(self, prefix: bytes, reader):
        self._prefix = prefix
        self._reader = reader

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            if n is None or n < 0:
                data, self._prefix = self._prefix + self._reader.read(), b""
                return data
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        return self._reader.read(n)

    def readable(self) -> bool:
        return True


class _BoundedReader:
    """Raises UnsafeArchive once more than ``limit`` bytes come out of a decompressor."""

    def __init__(self, reader, limit: int, chain_id: str):
        self._reader = reader
        self._limit = limit
        self._chain_id = chain_id
        self._count = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        data = self._reader.read(n)
        self._count += len(data)
        if self._count > self._limit:
            raise UnsafeArchive(f"layer {self._chain_id} decompresses to more than {self._limit} bytes")
        return data


class _ProgressReader:
    """Calls ``progress(bytes_read)`` about every MiB read from ``reader``."""

    def __init__(self, reader, progress):
        self._reader = reader
        self._progress = progress
        self.count = 0
        self._reported = 0

    def read(self, n: int = -1) -> bytes:
        data = self._reader.read(n)
        self.count += len(data)
        if self._progress is not None and self.count - self._reported >= _PROGRESS_EVERY:
            self._reported = self.count
            self._progress(self.count)
        return data
