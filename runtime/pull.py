"""Pull an image: registry -> blob store -> unpacked layers -> image record (no database here).

The flow follows containerd's content-flow: resolve the reference to a manifest (choosing this
host's platform from an index), fetch the config, then fetch every layer. Each layer is downloaded
and unpacked at the same time: the bytes from the registry are written to the blob store's ingest
and, through an in-process pipe, to ``LayerStore.apply`` in another thread, so a layer is ready the moment its
last byte arrives. Layers are handled in parallel (``MAX_PARALLEL`` at a time).

Two pulls of the same layer at once (in one process or several) download it once: the first takes
the layer's lock, the second waits ("Waiting") and then finds the layer present.

Progress is reported as Docker's JSON messages (the stream ``POST /images/create`` answers), so
the Docker API streams them as they are and the job log shows what the docker CLI shows.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable

from .digest import Digest, sha256_digest
from .errors import AlreadyExists, Cancelled, DigestMismatch, InvalidArgument, NotFound
from .images import ImageRecord, ImageStore
from .layers import Layer, LayerStore, chain_ids
from .manifest import Descriptor, Index, Manifest, parse_manifest, select_platform
from .reference import Reference
from .registry import RegistryClient
from .store import Store

MAX_PARALLEL = 4
# Downloaded bytes waiting for a layer's unpacking, at most (the download waits beyond that).
PIPE_CAPACITY = 4 << 20
MAX_CONFIG_SIZE = 8 << 20
PROGRESS_INTERVAL = 0.1  # seconds between two "Downloading" messages of one layer

Progress = Callable[[dict], None]


def short_id(digest: str) -> str:
    """The 12 hex characters Docker shows for a layer or image."""
    return Digest(digest).hex[:12]


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}B"


def progress_bar(current: int, total: int) -> str:
    """Docker's progress text, e.g. ``[=====>      ]  1.2MB/2.5MB``."""
    width = 50
    filled = int(width * current / total) if total else width
    arrow = "=" * max(filled - 1, 0) + (">" if filled < width else "=")
    return f"[{arrow.ljust(width)}] {human_size(current):>8}/{human_size(total)}"


class _BytesWriter:
    """A BlobWriter for small blobs (the config) kept in memory."""

    def __init__(self):
        self.chunks: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes):
        self.chunks.append(data)
        self.offset += len(data)

    def value(self) -> bytes:
        return b"".join(self.chunks)


class _ChunkPipe:
    """A bounded pipe of byte chunks between two threads of this process: a download and its unpacking.

    Like os.pipe(), without its two kernel copies, its 64 KiB capacity and its partial writes:
    ``write`` hands the chunk itself over and blocks while ``capacity`` bytes are waiting; ``read(n)``
    returns at most ``n`` bytes of the next chunk, b"" once the writer has closed and all is read.
    Once the reader has closed, ``write`` raises BrokenPipeError, as a pipe's EPIPE.
    """

    def __init__(self, capacity: int = PIPE_CAPACITY):
        self._capacity = capacity
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._rest = b""  # what a read smaller than its chunk left, for the next read
        self._cond = threading.Condition()
        self.closed = False  # the writer's end
        self._error: BaseException | None = None
        self._reader_closed = False

    def write(self, data) -> int:
        data = bytes(data)
        if not data:
            return 0
        with self._cond:
            while self._queued >= self._capacity and not self._reader_closed:
                self._cond.wait()
            if self._reader_closed:
                raise BrokenPipeError("the unpacking stopped reading")
            self._chunks.append(data)
            self._queued += len(data)
            self._cond.notify_all()
        return len(data)

    def close(self) -> None:
        """Close the writer's end: the reader gets b"" after the chunks already written."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def read(self, n: int = -1) -> bytes:
        if self._rest:
            data, self._rest = self._rest, b""
        else:
            with self._cond:
                while not self._chunks and not self.closed:
                    self._cond.wait()
                if self._error is not None:
                    raise self._error
                if not self._chunks:
                    return b""
                data = self._chunks.popleft()
                self._queued -= len(data)
                self._cond.notify_all()
        if n is not None and 0 <= n < len(data):
            data, self._rest = data[:n], data[n:]
        return data

    def abort(self, error: BaseException) -> None:
        """Close the writer's end so that the reader fails with ``error`` instead of seeing an end."""
        with self._cond:
            self._error = error
            self.closed = True
            self._cond.notify_all()

    def close_reader(self) -> None:
        """Close the reader's end: pending chunks are dropped and the writer's next write fails."""
        with self._cond:
            self._reader_closed = True
            self._chunks.clear()
            self._queued = 0
            self._cond.notify_all()


class _TeeWriter:
    """Writes each chunk to the blob ingest and to the pipe that feeds the layer's unpacking.

    The ingest hashes every byte; ``_download_and_apply`` checks that digest before the unpacking
    may finish, so neither fetch_blob nor the unpacking hashes the bytes again.
    """

    verifies_digest = True

    def __init__(self, ingest, pipe):
        self.ingest = ingest
        self.pipe = pipe

    @property
    def offset(self) -> int:
        return self.ingest.offset

    def write(self, data: bytes):
        self.ingest.write(data)
        self.pipe.write(data)


class _ProgressPump:
    """Sends the layers' "Downloading" messages from a thread of its own.

    A download thread only records its count (``update``); the pump sends the latest count of each
    layer at most every PROGRESS_INTERVAL. So a slow progress callback (a database write, a broker
    round trip) never holds up a download. ``finish(sid)`` sends that layer's last count before the
    caller's next message about it, and no "Downloading" of it follows. An error raised by the
    callback in the pump's thread is raised again by the next ``update`` or ``finish``.
    """

    def __init__(self, emit: Progress, interval: float = PROGRESS_INTERVAL):
        self._emit = emit
        self._interval = interval
        self._pending: dict[str, tuple[int, int]] = {}
        self._finished: set[str] = set()
        self._lock = threading.Lock()  # guards _pending and _finished
        self._send_lock = threading.Lock()  # one sender at a time, so finish() waits for the pump
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pull-progress", daemon=True)
        self._thread.start()

    def update(self, sid: str, done: int, total: int) -> None:
        if self._error is not None:
            raise self._error
        with self._lock:
            if sid not in self._finished:
                self._pending[sid] = (done, total)

    def finish(self, sid: str) -> None:
        """Send ``sid``'s last count now; send nothing more for it."""
        with self._send_lock:
            with self._lock:
                self._finished.add(sid)
                pending = self._pending.pop(sid, None)
            if pending is not None:
                self._send(sid, *pending)
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the thread (counts still pending are dropped: their layers failed or were cancelled)."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._send_lock:
                with self._lock:
                    batch, self._pending = self._pending, {}
                try:
                    for sid, (done, total) in batch.items():
                        self._send(sid, done, total)
                except BaseException as exc:  # raised again in a pull thread, which fails the pull
                    self._error = exc

    def _send(self, sid: str, done: int, total: int) -> None:
        self._emit({"status": "Downloading", "progressDetail": {"current": done, "total": total},
                    "progress": progress_bar(done, total), "id": sid})


class Puller:
    """Pulls images into one engine's store. Holds no state between pulls."""

    def __init__(self, root: str, store: Store, layers: LayerStore, images: ImageStore):
        self.root = root
        self.store = store
        self.layers = layers
        self.images = images
        self.locks_dir = os.path.join(root, "locks")
        os.makedirs(self.locks_dir, mode=0o700, exist_ok=True)

    @contextmanager
    def _layer_lock(self, chain_id: str, on_wait: Callable[[], None]):
        """Hold the lock of one layer (across processes); call ``on_wait`` if someone else has it."""
        fd = os.open(os.path.join(self.locks_dir, f"layer-{Digest(chain_id).hex}"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def pull(self, client: RegistryClient, ref: Reference, *, progress: Progress | None = None,
             cancelled: Callable[[], bool] | None = None) -> ImageRecord:
        """Pull ``ref`` from ``client``'s registry; return the image record.

        1. Fetch the manifest by tag or digest; from an index, choose this host's platform.
        2. Fetch and verify the config; compute each layer's chain id from its diff_ids.
        3. Fetch and unpack the layers in parallel, skipping those already present.
        4. Record the image and tag it (``ImageStore.add``).
        Raises NotFound, RegistryError, Unauthorized, DigestMismatch, UnsafeArchive or Cancelled;
        a failed pull leaves no image record and no half-applied layer.
        """
        emit = progress or (lambda event: None)
        is_cancelled = cancelled or (lambda: False)
        tag_or_digest = ref.digest or ref.tag
        emit({"status": f"Pulling from {ref.repository}", "id": tag_or_digest})

        # 1. Manifest.
        data, media_type, top_digest = client.get_manifest(ref.repository, ref.digest or ref.tag)
        parsed = parse_manifest(data, media_type)
        if isinstance(parsed, Index):
            chosen = select_platform(parsed)
            data, media_type, _ = client.get_manifest(ref.repository, chosen.digest)
            parsed = parse_manifest(data, media_type)
            if not isinstance(parsed, Manifest):
                raise InvalidArgument(f"{ref.familiar}: the index points at another index")
        manifest: Manifest = parsed

        # 2. Config.
        config_bytes = self._fetch_config(client, ref, manifest.config)
        config = json.loads(config_bytes)
        diff_ids = [Digest.parse(d) for d in (config.get("rootfs") or {}).get("diff_ids") or []]
        descriptors = [d for d in manifest.layers if not d.is_foreign]
        if len(diff_ids) != len(descriptors):
            raise InvalidArgument(
                f"{ref.familiar}: the config lists {len(diff_ids)} layers, the manifest {len(descriptors)}"
            )
        chains = chain_ids(diff_ids)
        existing = self._existing_image(manifest.config.digest)
        if existing is not None and all(self.layers.exists(c) for c in chains):
            # Docker's words: "up to date" when the tag already named this image, else "newer".
            was_tagged = ref.familiar in existing.repo_tags
            record = self.images.add(config_bytes, [self.layers.get(c) for c in chains],
                                     layer_descriptors=[d.to_dict() for d in descriptors],
                                     manifest_digest=top_digest, reference=ref)
            emit({"status": f"Digest: {top_digest}"})
            word = "Image is up to date" if was_tagged else "Downloaded newer image"
            emit({"status": f"Status: {word} for {ref.familiar}"})
            return record

        # 3. Layers, in parallel. The first failure stops the other downloads at their next chunk.
        for d in descriptors:
            emit({"status": "Pulling fs layer", "progressDetail": {}, "id": short_id(d.digest)})
        parents = [None, *chains[:-1]]
        failed = threading.Event()

        def stop() -> bool:
            return failed.is_set() or is_cancelled()

        pump = _ProgressPump(emit)

        def pull_one(d, chain, parent, diff_id):
            try:
                return self._pull_layer(client, ref, d, chain, parent, diff_id, emit, stop, pump)
            except BaseException:
                failed.set()
                raise

        try:
            with ThreadPoolExecutor(max_workers=MAX_PARALLEL, thread_name_prefix="pull") as pool:
                futures = [pool.submit(pull_one, *args)
                           for args in zip(descriptors, chains, parents, diff_ids)]
        finally:
            pump.close()
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            # Report the cause, not the Cancelled of the layers it stopped.
            raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
        layers = [f.result() for f in futures]

        # 4. Record.
        record = self.images.add(config_bytes, layers, layer_descriptors=[d.to_dict() for d in descriptors],
                                 manifest_digest=top_digest, reference=ref)
        emit({"status": f"Digest: {top_digest}"})
        emit({"status": f"Status: Downloaded newer image for {ref.familiar}"})
        return record

    def _existing_image(self, config_digest: str) -> ImageRecord | None:
        try:
            return self.images.get(config_digest)
        except NotFound:
            return None

    def _fetch_config(self, client: RegistryClient, ref: Reference, descriptor: Descriptor) -> bytes:
        """Return the verified config blob (from the store when we have it)."""
        if descriptor.size > MAX_CONFIG_SIZE:
            raise InvalidArgument(f"{ref.familiar}: config of {descriptor.size} bytes is too large")
        if self.store.has_blob(descriptor.digest):
            return self.store.read_blob(descriptor.digest, MAX_CONFIG_SIZE)
        writer = _BytesWriter()
        client.fetch_blob(ref.repository, descriptor, writer)
        data = writer.value()
        if sha256_digest(data) != descriptor.digest:
            raise DigestMismatch(f"config {descriptor.digest} of {ref.familiar}: content does not match")
        try:
            self.store.write_blob(data, descriptor.digest)
        except AlreadyExists:
            pass
        return data

    def _pull_layer(self, client, ref, descriptor: Descriptor, chain_id, parent, diff_id, emit, is_cancelled,
                    pump: _ProgressPump) -> Layer:
        """Make sure one layer is unpacked: already there, from a stored blob, or downloaded."""
        sid = short_id(descriptor.digest)
        if self.layers.exists(chain_id):
            emit({"status": "Already exists", "progressDetail": {}, "id": sid})
            return self.layers.get(chain_id)
        with self._layer_lock(chain_id, lambda: emit({"status": "Waiting", "progressDetail": {}, "id": sid})):
            if self.layers.exists(chain_id):
                emit({"status": "Already exists", "progressDetail": {}, "id": sid})
                return self.layers.get(chain_id)
            if is_cancelled():
                raise Cancelled(f"pull of {ref.familiar} cancelled")
            if not self.store.has_blob(descriptor.digest):
                self._download_and_apply(client, ref, descriptor, chain_id, parent, diff_id, emit,
                                         is_cancelled, pump)
            if not self.layers.exists(chain_id):
                emit({"status": "Extracting", "progressDetail": {}, "id": sid})
                with self.store.open_blob(descriptor.digest) as blob:
                    self.layers.apply(blob, chain_id=chain_id, parent=parent, expected_diff_id=diff_id,
                                      digest=descriptor.digest)
            emit({"status": "Pull complete", "progressDetail": {}, "id": sid})
            return self.layers.get(chain_id)

    def _download_and_apply(self, client, ref, descriptor, chain_id, parent, diff_id, emit, is_cancelled,
                            pump: _ProgressPump):
        """Download a layer blob into the store while unpacking it, in a second thread, through a pipe."""
        sid = short_id(descriptor.digest)
        try:
            ingest = self.store.ingest(descriptor.digest, descriptor.size, key=descriptor.digest)
        except AlreadyExists:
            return
        pipe = _ChunkPipe()
        outcome: dict = {}

        def unpack():
            try:
                # The compressed digest is checked here, from the ingest's hash, before the pipe ends.
                outcome["layer"] = self.layers.apply(pipe, chain_id=chain_id, parent=parent,
                                                     expected_diff_id=diff_id, digest=descriptor.digest,
                                                     check_digest=False)
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                # Closing our end makes the downloader's next write fail (EPIPE) instead of blocking.
                pipe.close_reader()

        thread = threading.Thread(target=unpack, name=f"unpack-{sid}", daemon=True)
        thread.start()

        def on_progress(done: int, total: int):
            if is_cancelled():
                raise Cancelled(f"pull of {ref.familiar} cancelled")
            pump.update(sid, done, total)

        try:
            with ingest:
                # Bytes kept from an interrupted download go to the unpacker first.
                if ingest.offset:
                    with open(ingest.data_path, "rb") as partial:
                        remaining = ingest.offset
                        while remaining and (chunk := partial.read(min(1 << 20, remaining))):
                            pipe.write(chunk)
                            remaining -= len(chunk)
                try:
                    client.fetch_blob(ref.repository, descriptor, _TeeWriter(ingest, pipe), on_progress)
                except BrokenPipeError:
                    pass  # the unpacker stopped: its error is the one to report, unless the bytes were wrong
                if ingest.offset == descriptor.size and ingest.digest() != descriptor.digest:
                    # Said as fetch_blob says it; the unpacking fails rather than see the end.
                    raise DigestMismatch(f"blob {ref.repository}@{descriptor.digest}: downloaded content "
                                         f"has digest {ingest.digest()}")
                pipe.close()
                thread.join()
                if "error" in outcome:
                    raise outcome["error"]
                pump.finish(sid)
                emit({"status": "Download complete", "progressDetail": {}, "id": sid})
                try:
                    ingest.commit()
                except AlreadyExists:
                    pass
        finally:
            if not pipe.closed:
                pipe.abort(Cancelled(f"download of {descriptor.digest} stopped"))
            thread.join()
