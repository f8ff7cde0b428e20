"""Push an image: image record -> layer blobs (stored, or made from the layer) -> registry -> manifest.

The flow is containerd's Pusher turned around: every layer blob goes first (in parallel,
``MAX_PARALLEL`` at a time, bottom layer first), then the config blob, and only then the manifest,
so a registry never holds a manifest whose blobs are missing. A failed or cancelled push puts no
manifest; blobs it already uploaded stay in the registry (as with Docker) and count next time.

For each layer, as moby's push_v2 does, the cheapest way wins:

1. The registry already has the blob in the target repository: "Layer already exists".
2. It has it in another repository this image was pulled from or pushed to on the same registry:
   a cross-repository mount, "Mounted from library/busybox".
3. Otherwise the blob is uploaded from the blob store, read a chunk at a time ("Pushing", "Pushed").

A layer with no compressed blob in the store (an image made by import, commit or build keeps only an
uncompressed tar, or only its directory) is first gzip-compressed into the store: from the
uncompressed tar when the store has it, else by packing the layer directory (``archive.pack_dir``).
The uncompressed bytes must hash to the layer's diff_id, or the layer cannot be pushed faithfully
(InvalidState). The image record then remembers the new blob (``ImageStore.set_layer_blob``).

Progress is reported as Docker's JSON messages (what ``POST /images/{name}/push`` streams). As in
moby, a layer's ``id`` is the short form of its *diff_id* (``pushDescriptor.ID()``): the compressed
digest of a locally made layer is not known until it has been compressed.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from . import manifest as m
from .archive import pack_dir
from .digest import Digest
from .errors import Cancelled, InvalidArgument, InvalidState, NotFound, RegistryError
from .images import ImageRecord, ImageStore
from .layers import LayerStore
from .pull import PROGRESS_INTERVAL, Progress, progress_bar, short_id
from .reference import Reference, parse_reference
from .registry import RegistryClient
from .store import Store

__all__ = ["Pusher"]

# moby's default max-concurrent-uploads.
MAX_PARALLEL = 5
# A blob is sent in requests of at most this many bytes (one PUT, or PATCHes): all of a blob that is
# ever in memory at once.
PUSH_CHUNK = 4 << 20
# Read from the store this much at a time: the grain of "Pushing" progress and of cancellation.
READ_CHUNK = 256 << 10
# moby tries at most this many other repositories for a cross-repository mount.
MAX_MOUNT_CANDIDATES = 3
# Go's gzip.DefaultCompression; mtime 0 and no file name, so the same layer gives the same blob.
GZIP_LEVEL = 6

_DOCKER_LAYER_TYPES = {"gzip": m.MEDIA_TYPE_DOCKER_LAYER_GZIP, "zstd": m.MEDIA_TYPE_DOCKER_LAYER_ZSTD}
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


@dataclass
class _LayerJob:
    """One distinct layer content (diff_id) of the image, and every position it holds in it."""

    diff_id: Digest
    # The chain_ids of the layers with this diff_id (usually one), bottom first.
    chain_ids: list[Digest] = field(default_factory=list)
    # The image record's layer entries, in the same order.
    entries: list[dict] = field(default_factory=list)

    @property
    def sid(self) -> str:
        return short_id(self.diff_id)


class Pusher:
    """Pushes images from one engine's store. Holds no state between pushes."""

    def __init__(self, store: Store, layers: LayerStore, images: ImageStore):
        self.store = store
        self.layers = layers
        self.images = images

    def push(self, client: RegistryClient, ref: Reference, *, progress: Progress | None = None,
             cancelled: Callable[[], bool] | None = None) -> Digest:
        """Push the local image tagged ``ref`` to ``client``'s registry; return the manifest digest.

        1. Resolve the image by its tag (NotFound, worded as Docker words it, when there is none;
           InvalidArgument for a digest reference, which Docker does not push either).
        2. Say "The push refers to repository [<name>]".
        3. Push the layers in parallel, bottom first, each as cheaply as it goes: already there,
           mounted from another repository of the image on the same registry, or uploaded from the
           store (compressed into the store first when it has no compressed blob).
        4. Upload the config blob unless the registry has it.
        5. Put a Docker schema 2 manifest under the tag; report "<tag>: digest: <digest> size: <n>"
           and the aux message the docker CLI reads.
        6. Record ``<name>@<digest>`` as a repo digest of the image.

        ``cancelled()`` is checked between chunks; when true the push stops with Cancelled and no
        manifest is put. Raises NotFound, InvalidArgument, InvalidState (a layer that cannot be
        reproduced), RegistryError, Unauthorized, DigestMismatch or Cancelled.
        """
        emit = progress or (lambda event: None)
        is_cancelled = cancelled or (lambda: False)

        # 1. The image.
        if ref.digest is not None:
            raise InvalidArgument(f"cannot push a digest reference: {ref.familiar}")
        record = self._resolve(ref)

        # 2. Where it goes.
        emit({"status": f"The push refers to repository [{ref.name}]"})

        # 3. Layers, in parallel. The first failure stops the others at their next chunk.
        jobs = _layer_jobs(record)
        candidates = _mount_candidates(record, ref)
        for job in jobs:
            emit({"status": "Preparing", "progressDetail": {}, "id": job.sid})
        for job in jobs[MAX_PARALLEL:]:
            emit({"status": "Waiting", "progressDetail": {}, "id": job.sid})
        failed = threading.Event()

        def stop() -> bool:
            return failed.is_set() or is_cancelled()

        def push_one(job: _LayerJob) -> m.Descriptor:
            try:
                return self._push_layer(client, ref, record, job, candidates, emit, stop)
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(max_workers=MAX_PARALLEL, thread_name_prefix="push") as pool:
            futures = [pool.submit(push_one, job) for job in jobs]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            # Report the cause, not the Cancelled of the layers it stopped.
            raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
        by_diff_id = {job.diff_id: future.result() for job, future in zip(jobs, futures)}
        descriptors = tuple(by_diff_id[Digest(d)] for d in record.diff_ids)

        # 4. Config.
        _check(stop, ref)
        config_size = self.store.blob_size(record.id)
        if not client.blob_exists(ref.repository, record.id):
            with self.store.open_blob(record.id) as blob:
                client.upload_blob(ref.repository, record.id, config_size, _Reader(blob, stop, ref),
                                   chunk_size=PUSH_CHUNK)

        # 5. Manifest: the last step, so the registry never names a blob it lacks.
        _check(stop, ref)
        config = m.Descriptor(m.MEDIA_TYPE_DOCKER_CONFIG, record.id, config_size)
        manifest = m.Manifest(config=config, layers=descriptors, media_type=m.MEDIA_TYPE_DOCKER_MANIFEST)
        data = manifest.to_json()
        digest = client.put_manifest(ref.repository, ref.tag, data, m.MEDIA_TYPE_DOCKER_MANIFEST)
        emit({"status": f"{ref.tag}: digest: {digest} size: {len(data)}"})
        emit({"progressDetail": {}, "aux": {"Tag": ref.tag, "Digest": digest, "Size": len(data)}})

        # 6. Repo digest.
        self.images.add_repo_digest(record.id, f"{ref.name}@{digest}")
        return digest

    def _resolve(self, ref: Reference) -> ImageRecord:
        """The image ``ref``'s tag points at, with moby's two error messages when there is none."""
        try:
            return self.images.resolve(ref.full)
        except NotFound:
            pass
        prefix = ref.familiar_name + ":"
        if any(tag.startswith(prefix) for record in self.images.list() for tag in record.repo_tags):
            raise NotFound(f"tag does not exist: {ref.familiar}")
        raise NotFound(f"An image does not exist locally with the tag: {ref.familiar_name}")

    #
    # One layer
    #

    def _push_layer(self, client: RegistryClient, ref: Reference, record: ImageRecord, job: _LayerJob,
                    candidates: list[str], emit: Progress, stop: Callable[[], bool]) -> m.Descriptor:
        """Make sure the registry has one layer's blob in ``ref.repository``; return its descriptor."""
        _check(stop, ref)
        recorded = self._recorded_blob(job)
        if recorded is not None and self._found_remotely(client, ref, recorded, candidates, job, emit):
            return recorded
        if recorded is not None and self.store.has_blob(recorded.digest):
            descriptor = recorded
        else:
            # No compressed blob in the store: make one, which the registry may have already.
            descriptor = self._reproduce(record, job, ref, stop)
            if self._found_remotely(client, ref, descriptor, candidates, job, emit):
                return descriptor
        self._upload(client, ref, descriptor, job, emit, stop)
        return descriptor

    def _recorded_blob(self, job: _LayerJob) -> m.Descriptor | None:
        """The compressed blob the record names for this layer, with its Docker media type; None if none."""
        entry = job.entries[0]
        digest, media_type, size = entry.get("digest"), entry.get("media_type"), entry.get("size")
        if not digest:
            return None
        digest = Digest(digest)
        stored = self.store.has_blob(digest)
        if media_type in m.LAYER_COMPRESSION:
            compression = m.LAYER_COMPRESSION[media_type]
        elif stored:
            compression = _sniff_compression(self.store, digest)
        else:
            return None
        if compression not in _DOCKER_LAYER_TYPES:
            return None  # An uncompressed tar: pushed gzip-compressed, as Docker does.
        if stored:
            size = self.store.blob_size(digest)
        if size is None:
            return None
        return m.Descriptor(_DOCKER_LAYER_TYPES[compression], digest, int(size))

    def _found_remotely(self, client: RegistryClient, ref: Reference, descriptor: m.Descriptor,
                        candidates: list[str], job: _LayerJob, emit: Progress) -> bool:
        """Return True if the blob is in the target repository already, or could be mounted there."""
        if client.blob_exists(ref.repository, descriptor.digest):
            emit({"status": "Layer already exists", "progressDetail": {}, "id": job.sid})
            return True
        for source in candidates:
            try:
                mounted = client.mount_blob(ref.repository, descriptor.digest, source)
            except RegistryError:
                # moby too falls back to an upload when a mount is refused.
                continue
            if mounted:
                emit({"status": f"Mounted from {source}", "progressDetail": {}, "id": job.sid})
                return True
        return False

    def _upload(self, client: RegistryClient, ref: Reference, descriptor: m.Descriptor, job: _LayerJob,
                emit: Progress, stop: Callable[[], bool]) -> None:
        """Upload a stored blob with "Pushing" progress, then say "Pushed"."""
        total = descriptor.size
        last = [0.0]

        def on_read(done: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL or done == total:
                last[0] = now
                emit({"status": "Pushing", "progressDetail": {"current": done, "total": total},
                      "progress": progress_bar(done, total), "id": job.sid})

        with self.store.open_blob(descriptor.digest) as blob:
            client.upload_blob(ref.repository, descriptor.digest, total, _Reader(blob, stop, ref, on_read),
                               chunk_size=PUSH_CHUNK)
        emit({"status": "Pushed", "progressDetail": {}, "id": job.sid})

    def _reproduce(self, record: ImageRecord, job: _LayerJob, ref: Reference,
                   stop: Callable[[], bool]) -> m.Descriptor:
        """Gzip the layer into the store and record it on the image; return the new blob's descriptor.

        1. Take the uncompressed tar from the store when it has it, else pack the layer directory.
        2. Stream it through gzip into an ingest, hashing the uncompressed bytes on the way.
        3. Refuse (InvalidState) when they do not hash to the diff_id; else commit the blob.
        4. ``ImageStore.set_layer_blob`` for each position of the layer in the image.
        """
        source = self._uncompressed_blob(job)
        writer = self.store.ingest()
        with writer:
            sink = _GzipSink(writer, stop, ref)
            if source is not None:
                with self.store.open_blob(source) as blob:
                    while chunk := blob.read(READ_CHUNK):
                        sink.write(chunk)
            else:
                try:
                    layer = self.layers.get(job.chain_ids[0])
                except NotFound:
                    raise InvalidState(f"cannot push image {record.short_id}: layer {job.diff_id} "
                                       "has neither a blob nor a directory") from None
                pack_dir(layer.path, sink)
            sink.close()
            got = sink.diff_id()
            if got != job.diff_id:
                raise InvalidState(
                    f"cannot push image {record.short_id}: layer {job.diff_id} cannot be reproduced "
                    f"byte for byte (its compressed blob is gone and packing its directory gives {got})"
                )
            size = writer.offset
            digest = writer.commit()
        for chain_id in job.chain_ids:
            self.images.set_layer_blob(record.id, chain_id, digest, m.MEDIA_TYPE_DOCKER_LAYER_GZIP, size)
        return m.Descriptor(m.MEDIA_TYPE_DOCKER_LAYER_GZIP, digest, size)

    def _uncompressed_blob(self, job: _LayerJob) -> Digest | None:
        """A stored plain tar of the layer (what import keeps, named by its diff_id), or None."""
        entry = job.entries[0]
        for digest in (entry.get("digest"), job.diff_id):
            if digest and self.store.has_blob(digest) and _sniff_compression(self.store, digest) is None:
                return Digest(digest)
        return None


#
# Helpers
#


def _layer_jobs(record: ImageRecord) -> list[_LayerJob]:
    """One job per distinct diff_id, bottom first: the same content twice is pushed once."""
    jobs: dict[Digest, _LayerJob] = {}
    for index, (diff_id, chain_id) in enumerate(zip(record.diff_ids, record.chain_ids)):
        job = jobs.setdefault(Digest(diff_id), _LayerJob(Digest(diff_id)))
        job.chain_ids.append(Digest(chain_id))
        job.entries.append(record.layers[index] if index < len(record.layers) else {})
    return list(jobs.values())


def _mount_candidates(record: ImageRecord, ref: Reference) -> list[str]:
    """Other repositories of the same registry the image is tagged or pulled in: where to mount from."""
    found: list[str] = []
    for text in record.repo_tags + record.repo_digests:
        try:
            other = parse_reference(text)
        except InvalidArgument:
            continue
        if other.registry != ref.registry or other.repository == ref.repository:
            continue
        if other.repository not in found:
            found.append(other.repository)
    return found[:MAX_MOUNT_CANDIDATES]


def _sniff_compression(store: Store, digest: str) -> str | None:
    """"gzip", "zstd" or None (a plain tar, or anything else) from a stored blob's first bytes."""
    with store.open_blob(digest) as f:
        head = f.read(4)
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)


def _check(stop: Callable[[], bool], ref: Reference) -> None:
    if stop():
        raise Cancelled(f"push of {ref.familiar} cancelled")


class _Reader:
    """Reads a stored blob for upload_blob, at most READ_CHUNK at a time, checking for cancellation
    before each read and reporting the bytes read so far."""

    def __init__(self, raw: BinaryIO, stop: Callable[[], bool], ref: Reference,
                 on_read: Callable[[int], None] | None = None):
        self.raw = raw
        self.stop = stop
        self.ref = ref
        self.on_read = on_read
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        _check(self.stop, self.ref)
        data = self.raw.read(READ_CHUNK if n is None or n < 0 else min(n, READ_CHUNK))
        self.done += len(data)
        if data and self.on_read is not None:
            self.on_read(self.done)
        return data


class _GzipSink:
    """A write-only file: hashes what it is given (the diff_id) and gzips it into an ingest writer."""

    def __init__(self, writer, stop: Callable[[], bool], ref: Reference):
        self._stop = stop
        self._ref = ref
        self._hash = hashlib.sha256()
        self._gzip = gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=writer, mtime=0)

    def write(self, data) -> int:
        _check(self._stop, self._ref)
        self._hash.update(data)
        self._gzip.write(data)
        return len(data)

    def close(self) -> None:
        """Write the gzip trailer (the ingest writer itself stays open)."""
        self._gzip.close()

    def diff_id(self) -> Digest:
        return Digest.from_hex(self._hash.hexdigest())
