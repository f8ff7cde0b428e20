"""The image store: image records, the names that point at them, and Docker's image operations.

An *image* is a config blob (its sha256 is the image *id*) plus the stack of layers its
``rootfs.diff_ids`` list. This module keeps one record per image and a table of references
(``busybox:latest``, ``busybox@sha256:...``) to image ids, and implements on top of them what
``docker images``, ``tag``, ``rmi``, ``image prune``, ``history``, ``inspect``, ``import``, ``save``
and ``load`` do. Blobs live in runtime.store, unpacked layers in runtime.layers; neither counts
references: this module decides when a layer or a blob is no longer needed.

On disk, under the engine root (this module owns ``images/``)::

    images/<config-hex>.json    one record per image: {"id", "chain_ids", "diff_ids", "layers":
                                [{"digest", "media_type", "size", "diff_id", "chain_id"}],
                                "manifest_digest", "size", "created", "architecture", "os",
                                "variant", "parent", "last_tag_time", "added"}
    images/refs.json            {"tags": {"docker.io/library/busybox:latest": "<image id>"},
                                 "digests": {"docker.io/library/busybox@sha256:<manifest>": "<image id>"}}
    images/lock                 flock(2)ed around every read-modify-write of the files above
    blobs/sha256/<config-hex>   the config itself, kept in the blob store (runtime.store)

Every file is replaced atomically (temp file, fsync, rename, fsync of the directory), so readers
never lock: they see the old or the new version. Writers (add, tag, untag, remove, prune, load)
hold the lock for the whole read-modify-write, so two processes tagging at once lose nothing.
A record exists before any reference to it is written and outlives every reference to it; a crash
in between leaves at worst a dangling image, never a reference to nothing.

Keys in refs.json are fully qualified (``docker.io/library/busybox:latest``); everything this
module answers uses the familiar form Docker shows (``busybox:latest``).
"""

from __future__ import annotations

import bz2
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import posixpath
import re
import secrets
import shlex
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from typing import BinaryIO, Callable, Iterable, Iterator

import zstandard

from runtime import manifest as m
from runtime.archive import pack_dir
from runtime.digest import Digest, sha256_digest
from runtime.fsutil import fsync_dir, read_exactly
from runtime.errors import (
    AlreadyExists,
    DigestMismatch,
    InvalidArgument,
    InvalidState,
    NotFound,
    UnsafeArchive,
)
from runtime.layers import Layer, LayerStore, PrefixedReader, chain_ids
from runtime.reference import Reference, is_image_id_prefix, parse_reference
from runtime.store import Store

__all__ = ["ImageRecord", "ImageStore", "apply_changes"]

# Image configs are a few KiB; Docker itself refuses nothing smaller than this.
MAX_CONFIG_SIZE = 8 * 1024 * 1024
# manifest.json, index.json, repositories and similar metadata files in a saved archive.
MAX_METADATA_SIZE = 4 * 1024 * 1024
# Symlinks followed at most this many times when resolving a path inside a loaded archive.
MAX_LINK_DEPTH = 16
# What `docker image inspect` shows as LastTagTime for an image never tagged.
ZERO_TIME = "0001-01-01T00:00:00Z"
GRAPH_DRIVER = "overlay2"

_CHUNK = 1 << 20
_FULL_ID_RE = re.compile(r"(?:sha256:)?([a-f0-9]{64})")
_RECORD_NAME_RE = re.compile(r"([a-f0-9]{64})\.json")
# Annotations of an OCI index entry that name the image (containerd's, then the OCI spec's).
_ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
_ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

InUse = Callable[[Digest], "bool | str"]


def _never(_: Digest) -> bool:
    return False


#
# Records
#


@dataclass
class ImageRecord:
    """One image as the store knows it. ``repo_tags``/``repo_digests`` are in the familiar form.

    WARNING: ``repo_tags`` and ``repo_digests`` are a snapshot of refs.json taken when the record
    was read; another process may have tagged or untagged since.
    """

    id: Digest
    config: dict
    # RFC 3339 time from the config ("" when the config has none).
    created: str
    # Sum of the unpacked sizes of the layers.
    size: int
    chain_ids: list[Digest]
    diff_ids: list[Digest]
    # One per layer, bottom first: {"digest", "media_type", "size", "diff_id", "chain_id"}.
    # digest/media_type/size describe the blob the layer came from; None when unknown.
    layers: list[dict]
    repo_tags: list[str]
    repo_digests: list[str]
    architecture: str
    os: str
    parent: str = ""
    variant: str = ""
    # Digest of the manifest the image was last pulled or loaded with; None for an import.
    manifest_digest: Digest | None = None
    last_tag_time: str = ""
    added: str = ""
    labels: dict = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        """The first 12 hex characters of the id, as ``docker images`` shows it."""
        return self.id.hex[:12]

    @property
    def top_chain_id(self) -> Digest | None:
        """The chain_id of the top layer: what a container's rootfs stacks on. None with no layers."""
        return self.chain_ids[-1] if self.chain_ids else None


class ImageStore:
    """Image records and references under ``<root>/images``. Safe between threads and processes.

    ``store`` holds config and layer blobs; ``layers`` the unpacked layers. Callers that run
    containers pass ``in_use`` / ``layer_in_use`` callbacks to ``remove`` and ``prune`` so an
    image or layer a container needs is kept.
    """

    def __init__(self, root: str, store: Store, layers: LayerStore):
        self.root = os.path.abspath(root)
        self.store = store
        self.layers = layers
        self.images_dir = os.path.join(self.root, "images")
        self._refs_path = os.path.join(self.images_dir, "refs.json")
        self._lock_path = os.path.join(self.images_dir, "lock")
        os.makedirs(self.images_dir, mode=0o700, exist_ok=True)

    #
    # Files and the lock
    #

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock. Not reentrant: public methods take it once.

        Each call opens its own descriptor, so threads of one process exclude each other too
        (flock locks belong to the open file description).
        """
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _record_path(self, image_id: str) -> str:
        return os.path.join(self.images_dir, f"{Digest(image_id).hex}.json")

    def _read_refs(self) -> dict:
        try:
            with open(self._refs_path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            doc = {}
        return {"tags": dict(doc.get("tags") or {}), "digests": dict(doc.get("digests") or {})}

    def _write_refs(self, refs: dict) -> None:
        _write_json_atomic(self._refs_path, {"tags": dict(sorted(refs["tags"].items())),
                                             "digests": dict(sorted(refs["digests"].items()))})

    def _read_record_doc(self, image_id: str) -> dict | None:
        try:
            with open(self._record_path(image_id)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _ids(self) -> list[Digest]:
        """Every image id with a record, sorted."""
        ids = []
        for name in sorted(os.listdir(self.images_dir)):
            match = _RECORD_NAME_RE.fullmatch(name)
            if match:
                ids.append(Digest.from_hex(match.group(1)))
        return ids

    def _record_from_doc(self, doc: dict, refs: dict) -> ImageRecord:
        image_id = Digest(doc["id"])
        config = json.loads(self.store.read_blob(image_id, MAX_CONFIG_SIZE))
        tags, digests = _repo_refs(refs, image_id)
        inner = config.get("config") or {}
        return ImageRecord(
            id=image_id,
            config=config,
            created=doc.get("created", ""),
            size=int(doc.get("size", 0)),
            chain_ids=[Digest(c) for c in doc["chain_ids"]],
            diff_ids=[Digest(d) for d in doc["diff_ids"]],
            layers=[dict(layer) for layer in doc["layers"]],
            repo_tags=tags,
            repo_digests=digests,
            architecture=doc.get("architecture", ""),
            os=doc.get("os", ""),
            parent=doc.get("parent", ""),
            variant=doc.get("variant", ""),
            manifest_digest=Digest(doc["manifest_digest"]) if doc.get("manifest_digest") else None,
            last_tag_time=doc.get("last_tag_time", ""),
            added=doc.get("added", ""),
            labels=dict(inner.get("Labels") or {}) if isinstance(inner, dict) else {},
        )

    def _load(self, image_id: str, refs: dict | None = None) -> ImageRecord | None:
        doc = self._read_record_doc(image_id)
        if doc is None:
            return None
        return self._record_from_doc(doc, refs if refs is not None else self._read_refs())

    #
    # Adding and finding images
    #

    def add(
        self,
        config_bytes: bytes,
        layers: list[Layer],
        *,
        layer_descriptors: list | None = None,
        manifest_digest: str | None = None,
        reference: Reference | str | None = None,
    ) -> ImageRecord:
        """Record the image whose config is ``config_bytes`` and whose applied layers are ``layers``.

        1. Check the config and that its ``rootfs.diff_ids`` are exactly the layers' diff_ids, in
           order, stacked as the layers' chain_ids say (DigestMismatch otherwise).
        2. Store the config blob; write the record (or update it: adding again is a no-op apart
           from a new manifest digest or reference).
        3. Point ``reference``'s tag at it (moving the tag off another image, which may become
           dangling) and record ``repository@manifest_digest`` (and ``@reference.digest``).

        ``layer_descriptors`` gives, per layer, the blob it came from: a Descriptor or a dict with
        digest, media_type (or mediaType) and size. Raises NotFound if a layer was removed
        meanwhile; nothing is written unless every check passes.
        """
        config = _parse_config(config_bytes)
        diff_ids = _diff_ids_of(config)
        got = [Digest(layer.diff_id) for layer in layers]
        if got != diff_ids:
            raise DigestMismatch(
                f"image config lists diff_ids {_short_list(diff_ids)} but the layers are {_short_list(got)}"
            )
        expected_chains = chain_ids(diff_ids)
        for layer, chain in zip(layers, expected_chains):
            if layer.chain_id != chain:
                raise DigestMismatch(f"layer {layer.chain_id} is not stacked as the config says (expected {chain})")
        descriptors = _normalise_descriptors(layer_descriptors, layers)
        if isinstance(reference, str):
            reference = parse_reference(reference)
        manifest_digest = Digest(manifest_digest) if manifest_digest else None
        image_id = sha256_digest(config_bytes)

        with self._locked():
            for layer in layers:
                if not self.layers.exists(layer.chain_id):
                    raise NotFound(f"layer {layer.chain_id} of image {image_id.short} is not applied (removed meanwhile?)")
            self.store.write_blob(config_bytes)
            doc = self._read_record_doc(image_id)
            now = _now()
            if doc is None:
                doc = {
                    "id": image_id,
                    "chain_ids": list(expected_chains),
                    "diff_ids": list(diff_ids),
                    "layers": descriptors,
                    "manifest_digest": manifest_digest,
                    "size": sum(layer.size for layer in layers),
                    "created": config.get("created") if isinstance(config.get("created"), str) else "",
                    "architecture": _str(config.get("architecture")),
                    "os": _str(config.get("os")),
                    "variant": _str(config.get("variant")),
                    "parent": "",
                    "last_tag_time": "",
                    "added": now,
                }
            else:
                if manifest_digest is not None:
                    doc["manifest_digest"] = manifest_digest
                # Fill in blob descriptors an earlier add did not know (an import, then a pull).
                for old, new in zip(doc["layers"], descriptors):
                    if not old.get("digest") and new.get("digest"):
                        old.update(new)
            refs = self._read_refs()
            if reference is not None:
                if reference.tag is not None:
                    refs["tags"][_tag_key(reference)] = image_id
                    doc["last_tag_time"] = now
                for digest in {reference.digest, manifest_digest} - {None}:
                    refs["digests"][f"{reference.name}@{digest}"] = image_id
            _write_json_atomic(self._record_path(image_id), doc)
            self._write_refs(refs)
            return self._record_from_doc(doc, refs)

    def set_layer_blob(self, image_id: str, chain_id: str, digest: str, media_type: str, size: int) -> ImageRecord:
        """Remember that layer ``chain_id`` of the image is now served by the stored blob ``digest``.

        A push calls this after compressing a layer that had no compressed blob (an import, a
        commit), so the next push finds it. The blob the layer pointed at before is deleted when no
        other image refers to it. NotFound if the image, the layer in it, or the new blob is missing.
        """
        digest = Digest(digest)
        if not self.store.has_blob(digest):
            raise NotFound(f"blob {digest} not found")
        with self._locked():
            doc = self._read_record_doc(image_id)
            if doc is None:
                raise NotFound(f"no such image: {image_id}")
            entries = [layer for layer in doc["layers"] if layer.get("chain_id") == Digest(chain_id)]
            if not entries:
                raise NotFound(f"image {Digest(image_id).short} has no layer {chain_id}")
            replaced = {Digest(e["digest"]) for e in entries if e.get("digest") and e["digest"] != digest}
            for entry in entries:
                entry.update({"digest": digest, "media_type": media_type, "size": int(size)})
            _write_json_atomic(self._record_path(image_id), doc)
            others = [d for d in (self._read_record_doc(i) for i in self._ids()) if d]
            self._collect([], replaced, others, _never)
            return self._record_from_doc(doc, self._read_refs())

    def get(self, image_id: str) -> ImageRecord:
        """Return the image with this id (``sha256:<hex>`` or the 64 hex); NotFound otherwise."""
        match = _FULL_ID_RE.fullmatch(image_id) if isinstance(image_id, str) else None
        record = self._load(Digest.from_hex(match.group(1))) if match else None
        if record is None:
            raise NotFound(f"no such image: {image_id}")
        return record

    def exists(self, image_id: str) -> bool:
        """Return True if an image with this full id exists."""
        try:
            self.get(image_id)
        except NotFound:
            return False
        return True

    def resolve(self, name_or_id: str) -> ImageRecord:
        """Find an image the way ``docker inspect`` does.

        1. A full id (``sha256:<64 hex>`` or the 64 hex alone).
        2. A reference: ``busybox`` (``busybox:latest``), ``team/app:v2``, ``busybox@sha256:...``.
        3. A unique id prefix of 4 or more hex characters, optionally ``sha256:``-prefixed (moby's
           ``truncatedID``). A prefix matching several images raises InvalidArgument.

        Missing: NotFound with Docker's words, ``No such image: busybox:latest``.
        """
        if not isinstance(name_or_id, str) or not name_or_id:
            raise InvalidArgument("invalid reference format: empty image name")
        refs = self._read_refs()
        match = _FULL_ID_RE.fullmatch(name_or_id)
        if match:
            record = self._load(Digest.from_hex(match.group(1)), refs)
            if record is None:
                raise NotFound(f"No such image: {name_or_id}")
            return record

        ref, ref_error = None, None
        try:
            ref = parse_reference(name_or_id)
        except InvalidArgument as exc:
            ref_error = exc
        if ref is not None:
            if ref.digest is not None:
                image_id = refs["digests"].get(f"{ref.name}@{ref.digest}")
            else:
                image_id = refs["tags"].get(_tag_key(ref))
            record = self._load(image_id, refs) if image_id else None
            if record is not None:
                return record

        if is_image_id_prefix(name_or_id):
            prefix = name_or_id.removeprefix("sha256:")
            matches = [i for i in self._ids() if i.hex.startswith(prefix)]
            if len(matches) > 1:
                raise InvalidArgument(f"ambiguous image id prefix {name_or_id!r}: it matches {len(matches)} images")
            if matches:
                record = self._load(matches[0], refs)
                if record is not None:
                    return record
        if ref is None:
            raise ref_error
        raise NotFound(f"No such image: {ref.familiar}")

    def list(self, *, dangling: bool | None = None, reference_filter: str | None = None) -> list[ImageRecord]:
        """Return the images, newest first, as ``docker images`` lists them.

        ``dangling``: True for images without tags only, False for tagged ones only. An image that
        only has digest references counts as dangling (moby does the same in image prune).
        ``reference_filter``: a glob as in ``--filter reference=bus*``, matched as Go's path.Match
        (``*`` does not cross ``/``) against each familiar reference (``busybox:latest``) and its
        name alone (``busybox``).
        """
        refs = self._read_refs()
        records = []
        for image_id in self._ids():
            record = self._load(image_id, refs)
            if record is None:
                continue
            if dangling is True and record.repo_tags:
                continue
            if dangling is False and not record.repo_tags:
                continue
            if reference_filter is not None and not any(
                _familiar_match(reference_filter, text) for text in record.repo_tags + record.repo_digests
            ):
                continue
            records.append(record)
        records.sort(key=lambda r: (_unix_time(r.created), r.id), reverse=True)
        return records

    #
    # References
    #

    def tag(self, name_or_id: str, new_ref: str) -> ImageRecord:
        """Point the tag ``new_ref`` (``busybox`` means ``busybox:latest``) at the image; return it."""
        ref = parse_reference(new_ref)
        if ref.digest is not None:
            raise InvalidArgument(f"refusing to create a tag with a digest reference: {new_ref}")
        with self._locked():
            record = self.resolve(name_or_id)
            doc = self._read_record_doc(record.id)
            if doc is None:
                raise NotFound(f"no such image: {record.id}")
            refs = self._read_refs()
            unchanged = refs["tags"].get(_tag_key(ref)) == record.id
            refs["tags"][_tag_key(ref)] = record.id
            doc["last_tag_time"] = _now()
            _write_json_atomic(self._record_path(record.id), doc)
            if not unchanged:  # a rebuild's tag usually names the same image: refs.json stays as it is
                self._write_refs(refs)
            return self._record_from_doc(doc, refs)

    def untag(self, ref: str) -> str:
        """Remove one reference (a tag, or ``name@digest``) and return it in familiar form.

        The image itself stays, dangling if that was its last tag. NotFound if no such reference.
        """
        parsed = parse_reference(ref)
        with self._locked():
            refs = self._read_refs()
            if parsed.digest is not None:
                key, table = f"{parsed.name}@{parsed.digest}", refs["digests"]
                shown = f"{parsed.familiar_name}@{parsed.digest}"
            else:
                key, table, shown = _tag_key(parsed), refs["tags"], parsed.familiar
            if key not in table:
                raise NotFound(f"No such image: {shown}")
            del table[key]
            self._write_refs(refs)
            return shown

    def add_repo_digest(self, image_id: str, name_at_digest: str) -> ImageRecord:
        """Record ``name@sha256:...`` (a manifest just pushed) as a digest reference of the image.

        NotFound if the image does not exist; InvalidArgument if the reference has no digest.
        """
        ref = parse_reference(name_at_digest)
        if ref.digest is None:
            raise InvalidArgument(f"not a digest reference: {name_at_digest}")
        with self._locked():
            doc = self._read_record_doc(image_id)
            if doc is None:
                raise NotFound(f"no such image: {image_id}")
            refs = self._read_refs()
            refs["digests"][f"{ref.name}@{ref.digest}"] = Digest(doc["id"])
            self._write_refs(refs)
            return self._record_from_doc(doc, refs)

    #
    # Removing
    #

    def remove(
        self,
        name_or_id: str,
        *,
        force: bool = False,
        in_use: InUse = _never,
        layer_in_use: Callable[[Digest], bool] = _never,
    ) -> list[dict]:
        """Remove an image or one of its names, with ``docker rmi``'s rules; return Docker's answer.

        The answer is a list of ``{"Untagged": "busybox:latest"}`` and ``{"Deleted": "sha256:..."}``
        items (the image id, then each layer chain_id deleted with it).

        - By a reference, when the image has other references: only that reference goes (with the
          digest references of the same repository when it was the repository's last tag).
        - By a reference, when it is the image's only name and ``in_use(id)`` is true (a container
          uses the image): refused unless ``force`` (InvalidState).
        - By id, when the image has references in more than one repository: refused unless
          ``force``; by id with references of one repository only: they are untagged and the
          image deleted.
        - By id, when a container uses the image: refused unless ``force``.
        - An image that is the parent of another cannot be removed, even with ``force``.

        ``in_use(image_id)`` may return a container id (truthy str) to name it in the error.
        Deleting the image deletes its config blob, its layers that no other image and no
        container (``layer_in_use(chain_id)``) needs, and the layer and manifest blobs no other
        image refers to.
        """
        with self._locked():
            record = self.resolve(name_or_id)
            refs = self._read_refs()
            answer, _ = self._remove_locked(record, name_or_id, refs, force, in_use, layer_in_use)
            return answer

    def _remove_locked(self, record, name_or_id, refs, force, in_use, layer_in_use) -> tuple[list[dict], int]:
        """The body of ``remove`` (moby's ImageDelete), under the lock. Returns (answer, bytes freed)."""
        image_id = record.id
        answer: list[dict] = []
        user = in_use(image_id)
        repo_refs = _refs_to(refs, image_id)
        by_id = _is_id_of(image_id, name_or_id)
        untagged_by_ref = False
        if not by_id:
            ref = parse_reference(name_or_id)
            if not force and _is_single_reference(repo_refs) and user:
                raise InvalidState(
                    f'conflict: unable to remove repository reference "{name_or_id}" (must force) - '
                    f"{_container_words(user)} is using its referenced image {image_id.short}"
                )
            answer.append({"Untagged": _drop_ref(refs, ref)})
            if ref.digest is None and not any(
                kind == "tag" and other.name == ref.name for kind, other in _refs_to(refs, image_id)
            ):
                # That was the repository's last tag: its digest references go with it.
                for kind, other in _refs_to(refs, image_id):
                    if kind == "digest" and other.name == ref.name:
                        answer.append({"Untagged": _drop_ref(refs, other)})
            if _refs_to(refs, image_id):
                self._write_refs(refs)
                return answer, 0
            untagged_by_ref = True
        elif _is_single_reference(repo_refs):
            if not force and user:
                raise InvalidState(
                    f"conflict: unable to delete {image_id.short} (must be forced) - "
                    f"image is being used by {_container_words(user)}"
                )
            for _, other in repo_refs:
                answer.append({"Untagged": _drop_ref(refs, other)})

        children = [i for i in self._ids() if (self._read_record_doc(i) or {}).get("parent") == image_id]
        if children:
            raise InvalidState(
                f"conflict: unable to delete {image_id.short} (cannot be forced) - image has dependent child images"
            )
        if not force:
            if _refs_to(refs, image_id):
                raise InvalidState(
                    f"conflict: unable to delete {image_id.short} (must be forced) - "
                    "image is referenced in multiple repositories"
                )
            if user:
                if untagged_by_ref:
                    # moby: the name went, the image stays for its container.
                    self._write_refs(refs)
                    return answer, 0
                raise InvalidState(
                    f"conflict: unable to delete {image_id.short} (must be forced) - "
                    f"image is being used by {_container_words(user)}"
                )
        for _, other in _refs_to(refs, image_id):
            answer.append({"Untagged": _drop_ref(refs, other)})
        deleted, freed = self._delete_locked(record, refs, layer_in_use)
        return answer + deleted, freed

    def _delete_locked(self, record: ImageRecord, refs: dict, layer_in_use) -> tuple[list[dict], int]:
        """Delete an image that has no references left in ``refs``, and what only it needed.

        Order: refs first, then the record, then layers and blobs, so a crash leaves garbage
        (unreferenced layers or blobs) but never a name pointing at nothing.
        """
        self._write_refs(refs)
        others = [d for d in (self._read_record_doc(i) for i in self._ids() if i != record.id) if d]
        os.unlink(self._record_path(record.id))
        fsync_dir(self.images_dir)
        answer = [{"Deleted": record.id}]
        freed = self._collect(record.chain_ids, _blobs_of(record.layers, record.manifest_digest) | {record.id},
                              others, layer_in_use, answer)
        return answer, freed

    def _collect(self, chains: list[str], blobs: set, others: list[dict], layer_in_use, answer=None) -> int:
        """Delete the layers ``chains`` (bottom first) and ``blobs`` that no record in ``others`` and no
        container uses; return the bytes freed. A layer a container uses keeps every layer below it."""
        used_chains = {c for d in others for c in d.get("chain_ids", [])}
        used_blobs = set()
        for doc in others:
            used_blobs |= _blobs_of(doc.get("layers", []), doc.get("manifest_digest")) | {doc["id"]}
        freed = 0
        keep_below = False
        for chain in reversed(chains):
            keep_below = keep_below or bool(layer_in_use(Digest(chain)))
            if keep_below or chain in used_chains or not self.layers.exists(chain):
                continue
            try:
                freed += self.layers.get(chain).size
                self.layers.remove(chain)
            except NotFound:
                continue
            if answer is not None:
                answer.append({"Deleted": chain})
        for blob in blobs - used_blobs:
            try:
                size = self.store.blob_size(blob)
            except NotFound:
                continue
            self.store.delete_blob(blob, missing_ok=True)
            freed += size
        return freed

    def prune(
        self,
        *,
        all: bool = False,
        in_use: InUse = _never,
        layer_in_use: Callable[[Digest], bool] = _never,
    ) -> dict:
        """Delete dangling images (every unused image with ``all``), as ``docker image prune`` does.

        Images a container uses and parents of other images are kept. Answers Docker's shape:
        ``{"ImagesDeleted": [{"Untagged": ...}, {"Deleted": ...}], "SpaceReclaimed": bytes}``.
        """
        deleted: list[dict] = []
        reclaimed = 0
        with self._locked():
            refs = self._read_refs()
            docs = [d for d in (self._read_record_doc(i) for i in self._ids()) if d]
            parents = {d.get("parent") for d in docs}
            for doc in docs:
                image_id = Digest(doc["id"])
                record = self._load(image_id, refs)
                if record is None or image_id in parents or in_use(image_id):
                    continue
                if record.repo_tags and not all:
                    continue
                answer = [{"Untagged": _drop_ref(refs, other)} for _, other in _refs_to(refs, image_id)]
                more, freed = self._delete_locked(record, refs, layer_in_use)
                deleted += answer + more
                reclaimed += freed
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    #
    # Docker API shapes
    #

    def history(self, name_or_id: str) -> list[dict]:
        """Return ``GET /images/{name}/history``: one entry per config history item, newest first.

        The newest entry carries the image id and its tags. As with dockerd's classic builder, an
        older entry carries the id (and tags) of the image that entry ended, when that image is
        still here: the steps of a build (the build cache knows each step's parent) down to the
        image it started FROM; the others say ``<missing>``. Size is the unpacked size of the
        layer an entry made, 0 for ``empty_layer`` entries. A config without history gets one
        entry per layer so the answer is never empty for an image with layers.
        """
        record = self.resolve(name_or_id)
        history = record.config.get("history")
        if not isinstance(history, list) or not history:
            history = [{"created": record.created} for _ in record.chain_ids]
        entries = []
        layer_index = 0
        for item in history:
            if not isinstance(item, dict):
                continue
            size = 0
            if not item.get("empty_layer"):
                if layer_index >= len(record.chain_ids):
                    raise InvalidState(f"image {record.short_id}: more non-empty history entries than layers")
                size = self._layer_size(record.chain_ids[layer_index])
                layer_index += 1
            entries.append({
                "Id": "<missing>",
                "Created": _unix_time(item.get("created")),
                "CreatedBy": _str(item.get("created_by")),
                "Tags": None,
                "Size": size,
                "Comment": _str(item.get("comment")),
            })
        if isinstance(record.config.get("history"), list):
            self._name_build_steps(record, [h for h in history if isinstance(h, dict)], entries)
        entries.reverse()
        if entries:
            entries[0]["Id"] = record.id
            entries[0]["Tags"] = list(record.repo_tags)
        return entries

    def _name_build_steps(self, record: ImageRecord, history: list[dict], entries: list[dict]) -> None:
        """Give the entries (oldest first) of a built image the ids of its steps' images: the
        image a step made has the first k history items of the final one, k its own count."""
        parents = self.build_parents()
        seen, current = {record.id}, parents.get(record.id)
        while current and current not in seen:
            seen.add(current)
            try:
                ancestor = self.get(current)
            except (NotFound, InvalidArgument):
                return
            own = [h for h in ancestor.config.get("history") or [] if isinstance(h, dict)]
            k = len(own)
            if not 0 < k <= len(history) or own[-1].get("created_by") != history[k - 1].get("created_by"):
                return  # not a prefix of this image's history: not its parent after all
            entries[k - 1]["Id"] = ancestor.id
            entries[k - 1]["Tags"] = list(ancestor.repo_tags) or None
            current = parents.get(current)

    def _built_from(self, image_id: str) -> str:
        """The image a build step made ``image_id`` from, while it is still here (else "")."""
        parent = self.build_parents().get(image_id, "")
        if not parent:
            return ""
        try:
            history = self.get(parent).config.get("history")
        except (NotFound, InvalidArgument):
            return ""
        return parent if history else ""  # FROM scratch's stand-in is no parent (Docker shows "")

    def build_parents(self) -> dict[str, str]:
        """Image id -> the image its build step started from, as the build cache records them."""
        from runtime.build.builder import BuildCache  # the cache's own format (not at import: a cycle)

        return BuildCache(self.root).parents()

    def _layer_size(self, chain_id: str) -> int:
        try:
            return self.layers.get(chain_id).size
        except NotFound:
            return 0

    def inspect(self, name_or_id: str) -> dict:
        """Return ``GET /images/{name}/json`` (ImageInspect in the Engine API) for the image."""
        record = self.resolve(name_or_id)
        config = record.config
        layer_dirs = [os.path.join(self.layers.layers_dir, Digest(c).hex, "diff") for c in record.chain_ids]
        graph_data = {}
        if layer_dirs:
            graph_data["UpperDir"] = layer_dirs[-1]
            if len(layer_dirs) > 1:
                graph_data["LowerDir"] = ":".join(reversed(layer_dirs[:-1]))
        answer = {
            "Id": record.id,
            "RepoTags": list(record.repo_tags),
            "RepoDigests": list(record.repo_digests),
            "Parent": record.parent or self._built_from(record.id),
            "Comment": _str(config.get("comment")),
            "Created": record.created or ZERO_TIME,
            "Container": _str(config.get("container")),
            "ContainerConfig": _container_config(config.get("container_config")),
            "DockerVersion": _str(config.get("docker_version")),
            "Author": _str(config.get("author")),
            "Config": _container_config(config.get("config")),
            "Architecture": record.architecture,
            "Os": record.os,
            "Size": record.size,
            "VirtualSize": record.size,
            "GraphDriver": {"Name": GRAPH_DRIVER, "Data": graph_data},
            "RootFS": {"Type": "layers", "Layers": list(record.diff_ids)},
            "Metadata": {"LastTagTime": record.last_tag_time or ZERO_TIME},
        }
        if record.variant:
            answer["Variant"] = record.variant
        if config.get("os.version"):
            answer["OsVersion"] = _str(config.get("os.version"))
        return answer

    def summary(self, record: ImageRecord) -> dict:
        """Return one entry of ``GET /images/json`` (ImageSummary) for ``record``.

        Like moby (API 1.41), an image with neither tags nor digests shows ``<none>:<none>`` and
        ``<none>@<none>``. SharedSize and Containers are -1: not computed here.
        """
        tags, digests = list(record.repo_tags), list(record.repo_digests)
        if not tags and not digests:
            tags, digests = ["<none>:<none>"], ["<none>@<none>"]
        return {
            "Id": record.id,
            "ParentId": record.parent,
            "RepoTags": tags,
            "RepoDigests": digests,
            "Created": _unix_time(record.created),
            "Size": record.size,
            "SharedSize": -1,
            "VirtualSize": record.size,
            "Labels": {str(k): _str(v) for k, v in record.labels.items()},
            "Containers": -1,
        }

    #
    # Import
    #

    def import_tar(
        self,
        stream: BinaryIO,
        *,
        changes: Iterable[str] = (),
        message: str = "",
        reference: str | None = None,
        platform: str | None = None,
    ) -> ImageRecord:
        """Make a one-layer image from a root filesystem tar, as ``docker import`` does.

        1. Check ``changes`` (Dockerfile-like lines, see ``apply_changes``), ``reference`` and
           ``platform`` (``os/arch[/variant]``, default this host) before reading anything.
        2. Decompress the stream (plain, gzip, zstd, xz or bzip2) into a staging file, hashing it:
           that is the layer's diff_id.
        3. Apply it through the layer store (which refuses entries escaping the layer), keep the
           tar as a blob (so ``save`` and a push give the same bytes), write the config and add.

        On any failure nothing is left behind.
        """
        ref = parse_reference(reference) if reference else None
        if ref is not None and ref.digest is not None:
            raise InvalidArgument(f"refusing to import as a digest reference: {reference}")
        os_name, arch, variant = _parse_platform(platform)
        container_config = apply_changes({}, changes)
        staging = self.store.tmp_dir("import-")
        new_chains: list[str] = []
        new_blobs: set = set()
        try:
            path = os.path.join(staging, "layer.tar")
            with open(path, "wb") as out:
                diff_id, size = _decompress_into(stream, out, self.layers.max_uncompressed)
            if size == 0:
                raise InvalidArgument("import: the archive is empty")
            if not self.layers.exists(diff_id):
                new_chains.append(diff_id)
            with open(path, "rb") as f:
                layer = self.layers.apply(f, chain_id=diff_id, parent=None, expected_diff_id=diff_id)
            if not self.store.has_blob(diff_id):
                new_blobs.add(diff_id)
                self._ingest_file(path, diff_id)
            created = _now()
            config = {
                "architecture": arch,
                "os": os_name,
                "created": created,
                "config": container_config,
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created": created, "comment": message} if message else {"created": created}],
            }
            if variant:
                config["variant"] = variant
            if message:
                config["comment"] = message
            descriptor = {"digest": diff_id, "media_type": m.MEDIA_TYPE_OCI_LAYER, "size": size}
            return self.add(_config_json(config), [layer], layer_descriptors=[descriptor], reference=ref)
        except BaseException:
            self._discard(new_chains, new_blobs)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _ingest_file(self, path: str, digest: str) -> None:
        """Copy the file at ``path`` into the blob store as ``digest`` (verified on commit)."""
        try:
            writer = self.store.ingest(digest, os.path.getsize(path))
        except AlreadyExists:
            return  # Someone else stored it meanwhile.
        with writer, open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                writer.write(chunk)
            writer.commit()

    def _discard(self, chains: list[str], blobs: set) -> None:
        """Undo a failed import or load: drop the layers and blobs it created that no image uses."""
        if not chains and not blobs:
            return
        with self._locked():
            others = [d for d in (self._read_record_doc(i) for i in self._ids()) if d]
            self._collect(sorted(set(chains), key=chains.index), set(blobs), others, _never)

    #
    # Save
    #

    def save(self, names: list[str], out: BinaryIO) -> None:
        """Write the images ``names`` to ``out`` as ``docker save`` does (Docker 25's layout).

        The tar is both a docker-archive and an OCI image layout, so ``docker load``, skopeo's
        ``docker-archive:`` and ``oci-archive:`` and containerd all read it::

            blobs/sha256/<hex>    configs, uncompressed layer tars (named by diff_id), OCI manifests
            oci-layout            {"imageLayoutVersion": "1.0.0"}
            index.json            one OCI manifest per image and tag, named by annotations
            manifest.json         [{"Config": "blobs/sha256/<hex>", "RepoTags": [...], "Layers": [...]}]
            repositories          {"busybox": {"latest": "<top layer hex>"}}: the legacy format's map

        A name without a tag (``busybox``) saves every tag of that repository, as Docker does; an id
        saves the image without names. ``out`` may be a pipe: nothing is seeked.
        Each layer tar is rebuilt byte for byte (from its blob, else by packing its directory) and
        checked against its diff_id; a layer that cannot be reproduced raises InvalidState.
        """
        if not names:
            raise InvalidArgument("save: no images given")
        chosen: dict[Digest, tuple[ImageRecord, list[Reference]]] = {}
        refs = self._read_refs()
        for name in names:
            for record, ref in self._save_targets(name, refs):
                entry = chosen.setdefault(record.id, (record, []))
                if ref is not None and ref not in entry[1]:
                    entry[1].append(ref)

        staging = self.store.tmp_dir("save-")
        try:
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                _add_dir(tf, "blobs")
                _add_dir(tf, "blobs/sha256")
                written: set[str] = set()
                docker_manifest, index_entries, repositories = [], [], {}
                for record, tagged in chosen.values():
                    config_bytes = self.store.read_blob(record.id, MAX_CONFIG_SIZE)
                    self._add_blob_bytes(tf, config_bytes, written)
                    layer_descs = []
                    for index, diff_id in enumerate(record.diff_ids):
                        size = self._add_layer(tf, record, index, staging, written)
                        layer_descs.append({"mediaType": m.MEDIA_TYPE_OCI_LAYER, "digest": diff_id, "size": size})
                    oci_manifest = _config_json({
                        "schemaVersion": 2,
                        "mediaType": m.MEDIA_TYPE_OCI_MANIFEST,
                        "config": {"mediaType": m.MEDIA_TYPE_OCI_CONFIG, "digest": record.id,
                                   "size": len(config_bytes)},
                        "layers": layer_descs,
                    })
                    manifest_digest = self._add_blob_bytes(tf, oci_manifest, written)
                    descriptor = {"mediaType": m.MEDIA_TYPE_OCI_MANIFEST, "digest": manifest_digest,
                                  "size": len(oci_manifest)}
                    for ref in tagged:
                        index_entries.append({**descriptor, "annotations": {
                            _ANNOTATION_IMAGE_NAME: ref.full, _ANNOTATION_REF_NAME: ref.tag}})
                        if record.diff_ids:
                            repositories.setdefault(ref.familiar_name, {})[ref.tag] = record.diff_ids[-1].hex
                    if not tagged:
                        index_entries.append(descriptor)
                    docker_manifest.append({
                        "Config": f"blobs/sha256/{record.id.hex}",
                        "RepoTags": [ref.familiar for ref in tagged] or None,
                        "Layers": [f"blobs/sha256/{d.hex}" for d in record.diff_ids],
                    })
                _add_bytes(tf, "index.json", _config_json(
                    {"schemaVersion": 2, "mediaType": m.MEDIA_TYPE_OCI_INDEX, "manifests": index_entries}))
                _add_bytes(tf, "manifest.json", _config_json(docker_manifest))
                _add_bytes(tf, "oci-layout", _config_json({"imageLayoutVersion": "1.0.0"}))
                if repositories:
                    _add_bytes(tf, "repositories", _config_json(repositories))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _save_targets(self, name: str, refs: dict) -> list[tuple[ImageRecord, Reference | None]]:
        """The (image, tag to save it under) pairs a name given to ``save`` stands for."""
        if "@" not in name and ":" not in name.rsplit("/", 1)[-1] and not _FULL_ID_RE.fullmatch(name):
            # A bare repository name: every tag of it (moby tarexport parseNames).
            try:
                repo = parse_reference(name)
            except InvalidArgument:
                repo = None
            if repo is not None:
                found = []
                for key, image_id in sorted(refs["tags"].items()):
                    ref = parse_reference(key)
                    record = self._load(image_id, refs) if ref.name == repo.name else None
                    if record is not None:
                        found.append((record, ref))
                if found:
                    return found
        record = self.resolve(name)
        if _FULL_ID_RE.fullmatch(name) or _is_id_of(record.id, name):
            return [(record, None)]
        ref = parse_reference(name)
        return [(record, ref if ref.digest is None else None)]

    def _add_blob_bytes(self, tf: tarfile.TarFile, data: bytes, written: set) -> Digest:
        digest = sha256_digest(data)
        if digest.hex not in written:
            written.add(digest.hex)
            _add_bytes(tf, f"blobs/sha256/{digest.hex}", data)
        return digest

    def _add_layer(self, tf: tarfile.TarFile, record: ImageRecord, index: int, staging: str, written: set) -> int:
        """Write layer ``index`` of ``record`` as ``blobs/sha256/<diff_id hex>``; return its size."""
        diff_id = record.diff_ids[index]
        path = os.path.join(staging, diff_id.hex)
        if diff_id.hex in written:
            return os.path.getsize(path)
        got = None
        blob = (record.layers[index] if index < len(record.layers) else {}).get("digest")
        if blob and self.store.has_blob(blob):
            with self.store.open_blob(blob) as src, open(path, "wb") as dst:
                got, _ = _decompress_into(src, dst, self.layers.max_uncompressed)
        if got != diff_id:
            layer = self.layers.get(record.chain_ids[index])
            with open(path, "wb") as dst:
                hasher = _HashingWriter(dst)
                pack_dir(layer.path, hasher)
            got = hasher.digest()
        if got != diff_id:
            raise InvalidState(
                f"cannot save image {record.short_id}: layer {diff_id} cannot be reproduced byte for byte "
                f"(its blob is gone and packing its directory gives {got})"
            )
        info = tarfile.TarInfo(f"blobs/sha256/{diff_id.hex}")
        info.size = os.path.getsize(path)
        info.mode = 0o644
        with open(path, "rb") as f:
            tf.addfile(info, f)
        written.add(diff_id.hex)
        return info.size

    #
    # Load
    #

    def load(self, stream: BinaryIO) -> list[str]:
        """Load the images of a ``docker save`` archive or an OCI image layout tar; return what was loaded.

        1. Spool the archive (plain or compressed, read once, front to back) into a staging
           directory, refusing ``..`` names and links outside it.
        2. Read ``manifest.json`` (docker-archive) or else ``index.json`` (OCI layout; a nested
           index gives this host's platform).
        3. For every image: check its config, apply each layer through the layer store, which
           verifies it against the config's diff_id (and its blob digest), and keep the layer blob.
        4. Only when every image verified: add the records and write the references.

        A failure at any step raises and leaves no record, no reference, and no layer or blob
        that this load created. Answers Docker's lines: ``Loaded image: busybox:latest`` per tag,
        ``Loaded image ID: sha256:...`` for an image without names.
        """
        staging = self.store.tmp_dir("load-")
        new_chains: list[str] = []
        new_blobs: set = set()
        try:
            files = _Spool(staging, self.layers.max_uncompressed)
            files.read(stream)
            if files.exists("manifest.json"):
                pending = _docker_archive_images(files)
            elif files.exists("index.json"):
                pending = _oci_layout_images(files)
            else:
                raise InvalidArgument("load: not a docker-archive or OCI layout (no manifest.json or index.json)")

            verified = []
            for image in pending:
                config = _parse_config(image.config)
                diff_ids = _diff_ids_of(config)
                if len(diff_ids) != len(image.layers):
                    raise InvalidArgument(
                        f"load: image config lists {len(diff_ids)} layers but the archive has {len(image.layers)}"
                    )
                layers, descriptors = [], []
                parent = None
                for diff_id, chain, (path, digest, media_type) in zip(diff_ids, chain_ids(diff_ids), image.layers):
                    file_digest = _file_digest(path)
                    if digest is not None and file_digest != digest:
                        raise DigestMismatch(f"load: blob {digest} has digest {file_digest}")
                    if not self.layers.exists(chain):
                        new_chains.append(chain)
                    with open(path, "rb") as f:
                        layer = self.layers.apply(f, chain_id=chain, parent=parent, expected_diff_id=diff_id,
                                                  digest=file_digest)
                    if not self.store.has_blob(file_digest):
                        new_blobs.add(file_digest)
                        self._ingest_file(path, file_digest)
                    layers.append(layer)
                    descriptors.append({"digest": file_digest, "size": os.path.getsize(path),
                                        "media_type": media_type or _layer_media_type(path)})
                    parent = chain
                verified.append((image, layers, descriptors))

            lines = []
            for image, layers, descriptors in verified:
                image_id = sha256_digest(image.config)
                refs_before = self._read_refs()
                record = None
                for ref in image.refs:
                    old = refs_before["tags"].get(_tag_key(ref))
                    if old and old != image_id:
                        lines.append(f"The image {ref.familiar} already exists, renaming the old one with ID "
                                     f"{old} to empty string")
                    record = self.add(image.config, layers, layer_descriptors=descriptors,
                                      manifest_digest=image.manifest_digest, reference=ref)
                    lines.append(f"Loaded image: {ref.familiar}")
                if record is None:
                    self.add(image.config, layers, layer_descriptors=descriptors,
                             manifest_digest=image.manifest_digest)
                    lines.append(f"Loaded image ID: {image_id}")
            return lines
        except BaseException:
            self._discard(new_chains, new_blobs)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


#
# Import changes (docker import --change)
#

SUPPORTED_CHANGES = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER",
                     "VOLUME", "WORKDIR")


def apply_changes(config: dict, changes: Iterable[str]) -> dict:
    """Return a copy of the container ``config`` (Docker's Env/Cmd/... keys) with ``changes`` applied.

    Each change is one Dockerfile line: ``ENV K=V``, ``CMD ["sh"]`` or ``CMD echo hi`` (shell form),
    ``ENTRYPOINT``, ``WORKDIR /app``, ``USER nobody``, ``EXPOSE 80/tcp``, ``LABEL k=v``,
    ``VOLUME /data``, ``STOPSIGNAL SIGTERM``, ``ONBUILD RUN make``. Others raise InvalidArgument.
    """
    config = json.loads(json.dumps(config))
    if isinstance(changes, str):
        changes = [changes]
    for line in changes:
        if not isinstance(line, str) or not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction not in SUPPORTED_CHANGES:
            raise InvalidArgument(
                f"{instruction} is not a valid change command (supported: {', '.join(SUPPORTED_CHANGES)})"
            )
        if not args:
            raise InvalidArgument(f"{instruction} requires at least one argument")
        if instruction == "ENV":
            env = list(config.get("Env") or [])
            for key, value in _key_values(instruction, args):
                env = [e for e in env if e.split("=", 1)[0] != key] + [f"{key}={value}"]
            config["Env"] = env
        elif instruction in ("CMD", "ENTRYPOINT"):
            config["Cmd" if instruction == "CMD" else "Entrypoint"] = _exec_or_shell(args)
            if instruction == "ENTRYPOINT":
                config["Cmd"] = None  # As a Dockerfile does: a new ENTRYPOINT resets CMD.
        elif instruction == "WORKDIR":
            config["WorkingDir"] = posixpath.normpath(posixpath.join(config.get("WorkingDir") or "/", args))
        elif instruction == "USER":
            config["User"] = args
        elif instruction == "EXPOSE":
            ports = dict(config.get("ExposedPorts") or {})
            for spec in args.split():
                for port in _expand_port(spec):
                    ports[port] = {}
            config["ExposedPorts"] = ports
        elif instruction == "LABEL":
            labels = dict(config.get("Labels") or {})
            labels.update(_key_values(instruction, args))
            config["Labels"] = labels
        elif instruction == "VOLUME":
            volumes = dict(config.get("Volumes") or {})
            paths = _json_list(args) if args.startswith("[") else args.split()
            for path in paths:
                if not path:
                    raise InvalidArgument("VOLUME specified can not be an empty string")
                volumes[path] = {}
            config["Volumes"] = volumes
        elif instruction == "STOPSIGNAL":
            config["StopSignal"] = args
        elif instruction == "ONBUILD":
            trigger = args.partition(" ")[0].upper()
            if trigger in ("ONBUILD", "FROM", "MAINTAINER"):
                raise InvalidArgument(f"{trigger} isn't allowed as an ONBUILD trigger")
            config["OnBuild"] = list(config.get("OnBuild") or []) + [args]
    return config


def _key_values(instruction: str, args: str) -> list[tuple[str, str]]:
    """Parse ``K=V K2="V 2"`` (or the legacy ``K V`` form) of ENV and LABEL."""
    try:
        words = shlex.split(args)
    except ValueError as exc:
        raise InvalidArgument(f"{instruction} {args}: {exc}") from None
    if words and "=" not in words[0]:
        key, _, value = args.partition(" ")
        value = value.strip()
        if not value:
            raise InvalidArgument(f"{instruction} {key} needs a value (use {key}=value)")
        return [(key, value)]
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"{instruction}: {word!r} is not in the form key=value")
        pairs.append((key, value))
    return pairs


def _exec_or_shell(args: str) -> list[str]:
    """``["a", "b"]`` (exec form) as is; anything else as ``["/bin/sh", "-c", args]``."""
    if args.startswith("["):
        try:
            return _json_list(args)
        except InvalidArgument:
            pass  # Docker runs a malformed JSON array in the shell form too.
    return ["/bin/sh", "-c", args]


def _json_list(args: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        raise InvalidArgument(f"not a JSON array of strings: {args}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"not a JSON array of strings: {args}")
    return value


def _expand_port(spec: str) -> list[str]:
    """``80`` -> ``["80/tcp"]``; ``53/udp``; ``8000-8002`` -> three ports."""
    ports, _, proto = spec.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise InvalidArgument(f"EXPOSE: invalid protocol {proto!r} in {spec!r}")
    low, _, high = ports.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise InvalidArgument(f"EXPOSE: invalid port {spec!r}") from None
    if not 0 < first <= last <= 65535:
        raise InvalidArgument(f"EXPOSE: invalid port range {spec!r}")
    return [f"{port}/{proto}" for port in range(first, last + 1)]


def _parse_platform(platform: str | None) -> tuple[str, str, str]:
    """``os/arch[/variant]`` -> (os, arch, variant); None -> this host."""
    if not platform:
        os_name, arch, variant = m.host_platform()
        return os_name, arch, variant or ""
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(f"invalid platform {platform!r}: expected os/arch[/variant]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


#
# Load: spooling the archive and reading its two formats
#


@dataclass
class _PendingImage:
    """An image read from an archive, not yet verified. ``layers``: (path, blob digest, media type)."""

    config: bytes
    layers: list[tuple[str, Digest | None, str | None]]
    refs: list[Reference]
    manifest_digest: Digest | None = None


class _Spool:
    """The regular files of a tar stream, copied under ``staging`` as numbered files.

    Entry names never become paths: they are keys of ``files``. Symlinks and hardlinks are kept
    as names to follow, inside the archive only.
    """

    def __init__(self, staging: str, max_member: int):
        self.staging = staging
        self.max_member = max_member
        self.files: dict[str, str] = {}
        self.links: dict[str, str] = {}

    def read(self, stream: BinaryIO) -> None:
        try:
            tf = tarfile.open(fileobj=stream, mode="r|*")
        except tarfile.TarError as exc:
            raise InvalidArgument(f"load: not a tar archive: {exc}") from None
        with tf:
            while True:
                try:
                    member = tf.next()
                except tarfile.TarError as exc:
                    raise UnsafeArchive(f"load: invalid tar stream: {exc}") from None
                except (EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
                    raise UnsafeArchive(f"load: truncated or corrupt archive: {exc}") from None
                if member is None:
                    break
                tf.members.clear()
                name = _archive_name(member.name)
                if member.size < 0:
                    raise UnsafeArchive(f"load: entry {member.name!r} has a negative size")
                if member.isreg():
                    if member.size > self.max_member:
                        raise UnsafeArchive(f"load: entry {member.name!r} is larger than {self.max_member} bytes")
                    path = os.path.join(self.staging, str(len(self.files)))
                    source = tf.extractfile(member)
                    try:
                        with open(path, "wb") as out:
                            shutil.copyfileobj(source, out, _CHUNK)
                    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
                        raise UnsafeArchive(f"load: entry {member.name!r}: {exc}") from None
                    self.files[name] = path
                elif member.issym():
                    target = member.linkname
                    if target.startswith("/"):
                        continue
                    self.links[name] = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                elif member.islnk():
                    self.links[name] = _archive_name(member.linkname)

    def path(self, name: str) -> str:
        """Return the staged file for the archive path ``name`` (links followed); InvalidArgument if none."""
        key = _archive_name(name)
        for _ in range(MAX_LINK_DEPTH):
            if key in self.files:
                return self.files[key]
            if key not in self.links:
                break
            key = self.links[key]
            if key.startswith(".."):
                break
        raise InvalidArgument(f"load: the archive has no file {name!r}")

    def exists(self, name: str) -> bool:
        try:
            self.path(name)
        except InvalidArgument:
            return False
        return True

    def read_bytes(self, name: str, limit: int) -> bytes:
        path = self.path(name)
        if os.path.getsize(path) > limit:
            raise InvalidArgument(f"load: {name} is larger than {limit} bytes")
        with open(path, "rb") as f:
            return f.read()

    def blob_path(self, digest: Digest) -> str:
        return self.path(f"blobs/{digest.algorithm}/{digest.hex}")


def _archive_name(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"load: entry {name!r} has a '..' path component")
    return "/".join(parts)


def _docker_archive_images(files: _Spool) -> list[_PendingImage]:
    """Read manifest.json: [{"Config": path, "RepoTags": [...], "Layers": [paths]}]."""
    doc = _load_json(files.read_bytes("manifest.json", MAX_METADATA_SIZE), "manifest.json")
    if not isinstance(doc, list):
        raise InvalidArgument("load: manifest.json is not a list")
    images = []
    for entry in doc:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise InvalidArgument("load: manifest.json entry without Config")
        layer_paths = entry.get("Layers") or []
        if not isinstance(layer_paths, list) or not all(isinstance(p, str) for p in layer_paths):
            raise InvalidArgument("load: manifest.json Layers is not a list of paths")
        refs = []
        for tag in entry.get("RepoTags") or []:
            ref = parse_reference(tag) if isinstance(tag, str) else None
            if ref is None or ref.tag is None or ref.digest is not None:
                raise InvalidArgument(f"load: invalid RepoTags entry {tag!r}")
            refs.append(ref)
        images.append(_PendingImage(
            config=files.read_bytes(entry["Config"], MAX_CONFIG_SIZE),
            layers=[(files.path(p), None, None) for p in layer_paths],
            refs=refs,
        ))
    return images


def _oci_layout_images(files: _Spool) -> list[_PendingImage]:
    """Read index.json of an OCI image layout; nested indexes give this host's platform."""
    index = m.parse_manifest(files.read_bytes("index.json", MAX_METADATA_SIZE), m.MEDIA_TYPE_OCI_INDEX)
    if not isinstance(index, m.Index):
        raise InvalidArgument("load: index.json is not an image index")
    images: dict[Digest, _PendingImage] = {}
    for entry in index.manifests:
        ref = _ref_from_annotations(entry.annotations)
        descriptor = entry
        if entry.media_type in m.INDEX_MEDIA_TYPES:
            nested = m.parse_manifest(_read_blob(files, entry), entry.media_type)
            descriptor = m.select_platform(nested)
        if descriptor.media_type not in m.IMAGE_MANIFEST_MEDIA_TYPES:
            continue  # Attestations and other artifacts.
        manifest = m.parse_manifest(_read_blob(files, descriptor), descriptor.media_type)
        image = images.get(descriptor.digest)
        if image is None:
            image = images[descriptor.digest] = _PendingImage(
                config=_read_blob(files, manifest.config, MAX_CONFIG_SIZE),
                layers=[(files.blob_path(d.digest), d.digest, d.media_type) for d in manifest.layers],
                refs=[],
                manifest_digest=descriptor.digest,
            )
        if ref is not None and ref not in image.refs:
            image.refs.append(ref)
    return list(images.values())


def _ref_from_annotations(annotations: dict) -> Reference | None:
    """The name an index entry gives its image: containerd's annotation, else a full ref.name."""
    for key in (_ANNOTATION_IMAGE_NAME, _ANNOTATION_REF_NAME):
        text = annotations.get(key)
        # A bare ref.name ("latest") is a tag without a repository: it names nothing here.
        if not text or (key == _ANNOTATION_REF_NAME and "/" not in text and ":" not in text):
            continue
        try:
            ref = parse_reference(text)
        except InvalidArgument:
            continue
        if ref.tag is not None:
            return ref.with_tag(ref.tag)
    return None


def _read_blob(files: _Spool, descriptor: m.Descriptor, limit: int = m.MAX_MANIFEST_SIZE) -> bytes:
    data = files.read_bytes(f"blobs/{descriptor.digest.algorithm}/{descriptor.digest.hex}", limit)
    if sha256_digest(data) != descriptor.digest:
        raise DigestMismatch(f"load: blob {descriptor.digest} does not match its digest")
    return data


#
# Helpers
#


def _parse_config(data: bytes) -> dict:
    """Parse an image config, checking the fields this module relies on."""
    if len(data) > MAX_CONFIG_SIZE:
        raise InvalidArgument(f"image config is {len(data)} bytes, over the limit of {MAX_CONFIG_SIZE}")
    config = _load_json(data, "image config")
    if not isinstance(config, dict):
        raise InvalidArgument("image config is not a JSON object")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidArgument('image config has no rootfs of type "layers"')
    diff_ids = rootfs.get("diff_ids") or []
    if not isinstance(diff_ids, list) or len(diff_ids) > m.MAX_DESCRIPTORS:
        raise InvalidArgument("image config rootfs.diff_ids is not a list of digests")
    for diff_id in diff_ids:
        Digest(diff_id)
    for key in ("config", "container_config"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise InvalidArgument(f"image config {key} is not an object")
    if config.get("history") is not None and not isinstance(config["history"], list):
        raise InvalidArgument("image config history is not a list")
    return config


def _diff_ids_of(config: dict) -> list[Digest]:
    return [Digest(d) for d in config["rootfs"].get("diff_ids") or []]


def _load_json(data: bytes, what: str):
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None


def _config_json(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _normalise_descriptors(descriptors: list | None, layers: list[Layer]) -> list[dict]:
    """One {"digest", "media_type", "size", "diff_id", "chain_id"} per layer."""
    if descriptors is not None and len(descriptors) != len(layers):
        raise InvalidArgument(f"{len(descriptors)} layer descriptors for {len(layers)} layers")
    out = []
    for index, layer in enumerate(layers):
        raw = descriptors[index] if descriptors is not None else None
        if isinstance(raw, m.Descriptor):
            raw = {"digest": raw.digest, "media_type": raw.media_type, "size": raw.size}
        raw = dict(raw or {})
        digest = raw.get("digest") or layer.digest
        size = raw.get("size")
        out.append({
            "digest": Digest(digest) if digest else None,
            "media_type": raw.get("media_type") or raw.get("mediaType"),
            "size": int(size) if size is not None else None,
            "diff_id": layer.diff_id,
            "chain_id": layer.chain_id,
        })
    return out


def _blobs_of(layers: list[dict], manifest_digest) -> set:
    found = {Digest(layer["digest"]) for layer in layers if layer.get("digest")}
    if manifest_digest:
        found.add(Digest(manifest_digest))
    return found


def _tag_key(ref: Reference) -> str:
    return f"{ref.name}:{ref.tag}"


def _repo_refs(refs: dict, image_id: str) -> tuple[list[str], list[str]]:
    """The familiar tags and digest references of an image, sorted."""
    tags = sorted(parse_reference(k).familiar for k, v in refs["tags"].items() if v == image_id)
    digests = []
    for key, value in refs["digests"].items():
        if value == image_id:
            ref = parse_reference(key)
            digests.append(f"{ref.familiar_name}@{ref.digest}")
    return tags, sorted(digests)


def _refs_to(refs: dict, image_id: str) -> list[tuple[str, Reference]]:
    """[("tag" | "digest", Reference)] for every reference to ``image_id``."""
    found = [("tag", parse_reference(k)) for k, v in refs["tags"].items() if v == image_id]
    found += [("digest", parse_reference(k)) for k, v in refs["digests"].items() if v == image_id]
    return found


def _drop_ref(refs: dict, ref: Reference) -> str:
    """Remove ``ref`` from ``refs`` (in memory) and return it as ``docker rmi`` shows it."""
    if ref.digest is not None:
        refs["digests"].pop(f"{ref.name}@{ref.digest}", None)
        return f"{ref.familiar_name}@{ref.digest}"
    refs["tags"].pop(_tag_key(ref), None)
    return ref.familiar


def _is_single_reference(repo_refs: list[tuple[str, Reference]]) -> bool:
    """moby's isSingleReference: at most one tag, and every reference in one repository."""
    if len(repo_refs) <= 1:
        return len(repo_refs) == 1
    tags = [ref for kind, ref in repo_refs if kind == "tag"]
    if len(tags) > 1:
        return False
    return len({ref.name for _, ref in repo_refs}) == 1


def _is_id_of(image_id: Digest, text: str) -> bool:
    """True when ``text`` names ``image_id`` by id or id prefix, not by a reference."""
    return image_id.startswith(text) or image_id.hex.startswith(text)


def _container_words(user) -> str:
    return f"container {user[:12]}" if isinstance(user, str) and user else "a container"


def _familiar_match(pattern: str, familiar: str) -> bool:
    """distribution/reference FamiliarMatch: path.Match on ``name:tag``, then on the name alone."""
    name = familiar.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    return _path_match(pattern, familiar) or _path_match(pattern, name)


def _path_match(pattern: str, text: str) -> bool:
    """Go's path.Match: shell globbing where ``*`` and ``?`` do not match ``/``."""
    pattern_parts, text_parts = pattern.split("/"), text.split("/")
    return len(pattern_parts) == len(text_parts) and all(
        fnmatchcase(t, p) for p, t in zip(pattern_parts, text_parts)
    )


# ContainerConfig fields moby always sends (with these zero values), then those it omits when empty.
_CONFIG_FIELDS = {
    "Hostname": (str, ""), "Domainname": (str, ""), "User": (str, ""), "AttachStdin": (bool, False),
    "AttachStdout": (bool, False), "AttachStderr": (bool, False), "Tty": (bool, False),
    "OpenStdin": (bool, False), "StdinOnce": (bool, False), "Env": (list, None), "Cmd": (list, None),
    "Image": (str, ""), "Volumes": (dict, None), "WorkingDir": (str, ""), "Entrypoint": (list, None),
    "OnBuild": (list, None), "Labels": (dict, None),
}
_OPTIONAL_CONFIG_FIELDS = {
    "ExposedPorts": dict, "Healthcheck": dict, "ArgsEscaped": bool, "NetworkDisabled": bool,
    "MacAddress": str, "StopSignal": str, "StopTimeout": int, "Shell": list,
}


def _container_config(raw) -> dict:
    """An image's ``config`` as the Engine API's ContainerConfig: known fields of the right type only."""
    raw = raw if isinstance(raw, dict) else {}
    out = {key: default for key, (_, default) in _CONFIG_FIELDS.items()}
    for key, value in raw.items():
        expected = _CONFIG_FIELDS[key][0] if key in _CONFIG_FIELDS else _OPTIONAL_CONFIG_FIELDS.get(key)
        if expected is None or not isinstance(value, expected):
            continue
        if expected is int and isinstance(value, bool):
            continue
        out[key] = value
    return out


def _unix_time(text) -> int:
    """Seconds since the epoch of an RFC 3339 time (nanoseconds allowed); 0 when absent or invalid."""
    if not isinstance(text, str) or not text:
        return 0
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text.strip())
    if not match:
        return 0
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    try:
        return int(datetime.fromisoformat(base + zone).timestamp())
    except ValueError:
        return 0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _str(value) -> str:
    return value if isinstance(value, str) else ""


def _short_list(digests: list) -> str:
    return "[" + ", ".join(Digest(d).short for d in digests) + "]"


def _write_json_atomic(path: str, doc) -> None:
    """Replace ``path`` with ``doc`` as JSON: temp file, fsync, rename, fsync of the directory."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}")
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def _file_digest(path: str) -> Digest:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return Digest.from_hex(hasher.hexdigest())


def _layer_media_type(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"\x1f\x8b"):
        return m.MEDIA_TYPE_OCI_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return m.MEDIA_TYPE_OCI_LAYER_ZSTD
    return m.MEDIA_TYPE_OCI_LAYER


class _HashingWriter:
    """A write-only file that hashes what goes through it to ``out``."""

    def __init__(self, out):
        self._out = out
        self._hash = hashlib.sha256()

    def write(self, data) -> int:
        self._hash.update(data)
        return self._out.write(data)

    def digest(self) -> Digest:
        return Digest.from_hex(self._hash.hexdigest())


def _decompress_into(stream, out, limit: int) -> tuple[Digest, int]:
    """Copy ``stream`` (plain, gzip, zstd, xz or bzip2) decompressed into ``out``; return (sha256, size).

    Raises UnsafeArchive past ``limit`` bytes of output or on corrupt compressed data.
    """
    head = read_exactly(stream, 6)
    source = PrefixedReader(head, stream)
    if head.startswith(b"\x1f\x8b"):
        reader = gzip.GzipFile(fileobj=source, mode="rb")
    elif head.startswith(b"\x28\xb5\x2f\xfd"):
        reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
    elif head.startswith(b"\xfd7zXZ\x00"):
        reader = lzma.LZMAFile(source)
    elif head.startswith(b"BZh"):
        reader = bz2.BZ2File(source)
    else:
        reader = source
    hasher = hashlib.sha256()
    size = 0
    try:
        while chunk := reader.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise UnsafeArchive(f"archive decompresses to more than {limit} bytes")
            hasher.update(chunk)
            out.write(chunk)
    except (EOFError, OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as exc:
        raise UnsafeArchive(f"invalid compressed data: {exc}") from None
    return Digest.from_hex(hasher.hexdigest()), size


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


def _add_dir(tf: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tf.addfile(info)
