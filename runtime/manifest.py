"""Image manifests and indexes: media types, typed records, parsing and platform choice.

Two families of formats say the same things:

- Docker schema 2: a *manifest* (one image: a config blob plus layer blobs) and a *manifest list*
  (one manifest per platform).
- OCI image spec: an *image manifest* and an *image index*, with the same shape.

`parse_manifest` turns the bytes a registry (or an image layout) gave us into `Manifest` or `Index`
records after checking every field we rely on. Those bytes are untrusted: the size is bounded, every
digest and size is checked for form, and every error says which field is wrong. Docker schema 1
manifests are refused.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from runtime.digest import Digest
from runtime.errors import InvalidArgument, NotFound

#
# Media types
#

MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"

MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

# Schema 1 is deprecated everywhere and signed in a way we do not verify: recognised only to refuse it.
MEDIA_TYPE_DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

IMAGE_MANIFEST_MEDIA_TYPES = (MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_MANIFEST)
INDEX_MEDIA_TYPES = (MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX)
# What we send in Accept when we ask a registry for a manifest, most preferred first.
MANIFEST_MEDIA_TYPES = IMAGE_MANIFEST_MEDIA_TYPES + INDEX_MEDIA_TYPES
CONFIG_MEDIA_TYPES = (MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_OCI_CONFIG)

FOREIGN_LAYER_MEDIA_TYPES = (
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP,
    MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER,
    MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER_GZIP,
    MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER_ZSTD,
)
# Layer media type -> compression of the tar ("gzip", "zstd" or None for a plain tar).
LAYER_COMPRESSION: dict[str, str | None] = {
    MEDIA_TYPE_DOCKER_LAYER_GZIP: "gzip",
    MEDIA_TYPE_DOCKER_LAYER_ZSTD: "zstd",
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP: "gzip",
    MEDIA_TYPE_OCI_LAYER: None,
    MEDIA_TYPE_OCI_LAYER_GZIP: "gzip",
    MEDIA_TYPE_OCI_LAYER_ZSTD: "zstd",
    MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER: None,
    MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER_GZIP: "gzip",
    MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER_ZSTD: "zstd",
}
LAYER_MEDIA_TYPES = tuple(LAYER_COMPRESSION)

#
# Bounds on untrusted input
#

# Registries commonly refuse manifests over 4 MiB; so do we, before parsing anything.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
# No real image has this many layers (overlayfs stops far below), nor an index this many platforms.
MAX_DESCRIPTORS = 1000
# A descriptor's size is a JSON integer; anything past 2**53 cannot be exact in every client.
MAX_BLOB_SIZE = 2**53 - 1

_HOST_ARCHITECTURES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


#
# Records
#


@dataclass(frozen=True)
class Platform:
    """The platform an entry of an index runs on (`os`, `architecture` are required)."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form, as found in a manifest list or an OCI index."""
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        return out


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob: what it is (`media_type`), which bytes (`digest`) and how many (`size`).

    `platform` is only set on the entries of an index; `urls` only on foreign layers.
    """

    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def compression(self) -> str | None:
        """Return "gzip", "zstd" or None for a layer; raise InvalidArgument for other blobs."""
        try:
            return LAYER_COMPRESSION[self.media_type]
        except KeyError:
            raise InvalidArgument(f"{self.media_type!r} is not a layer media type") from None

    @property
    def is_foreign(self) -> bool:
        """Return True for a layer a registry may not serve (Windows base layers, OCI non-distributable)."""
        return self.media_type in FOREIGN_LAYER_MEDIA_TYPES

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form of the descriptor."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        return out


@dataclass(frozen=True)
class Manifest:
    """One image: its config blob and its layers, bottom layer first."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Return canonical-enough JSON bytes to push (the digest is of these exact bytes)."""
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return json.dumps(doc, indent=2).encode()


@dataclass(frozen=True)
class Index:
    """A manifest list or OCI index: one manifest per platform."""

    manifests: tuple[Descriptor, ...]
    media_type: str = MEDIA_TYPE_OCI_INDEX
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Return JSON bytes to push."""
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [entry.to_dict() for entry in self.manifests],
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return json.dumps(doc, indent=2).encode()


#
# Parsing
#


def parse_manifest(data: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse and check a manifest or index.

    `media_type` is what the registry said (Content-Type) or what the pointing descriptor said. When
    it is empty or generic ("application/json"), the document's own `mediaType` decides; when both
    are given they must agree. Raise InvalidArgument with the offending field on any problem.
    """
    if len(data) > MAX_MANIFEST_SIZE:
        raise InvalidArgument(f"manifest is {len(data)} bytes, over the limit of {MAX_MANIFEST_SIZE}")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("manifest is not a JSON object")

    declared = _normalise_media_type(media_type)
    inner = doc.get("mediaType")
    if inner is not None and not isinstance(inner, str):
        raise InvalidArgument("manifest mediaType is not a string")
    if declared in (MEDIA_TYPE_DOCKER_SCHEMA1, MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED) or doc.get("schemaVersion") == 1:
        raise InvalidArgument("docker schema 1 manifests are not supported; push the image again with a newer client")
    if declared and inner and declared != inner:
        raise InvalidArgument(f"manifest says mediaType {inner!r} but was served as {declared!r}")
    kind = declared or inner or _guess_media_type(doc)
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument(f"manifest schemaVersion is {doc.get('schemaVersion')!r}, expected 2")

    if kind in IMAGE_MANIFEST_MEDIA_TYPES:
        return _parse_image_manifest(doc, kind)
    if kind in INDEX_MEDIA_TYPES:
        return _parse_index(doc, kind)
    raise InvalidArgument(f"unsupported manifest media type {kind!r}")


def _normalise_media_type(media_type: str | None) -> str | None:
    """Strip parameters (`; charset=utf-8`) and treat generic JSON types as unknown."""
    if not media_type:
        return None
    value = media_type.split(";", 1)[0].strip().lower()
    if value in ("", "application/json", "text/plain", "application/octet-stream"):
        return None
    return value


def _guess_media_type(doc: dict[str, Any]) -> str:
    """Name an OCI document that carries no mediaType (allowed by image-spec 1.0)."""
    if "manifests" in doc:
        return MEDIA_TYPE_OCI_INDEX
    if "config" in doc and "layers" in doc:
        return MEDIA_TYPE_OCI_MANIFEST
    raise InvalidArgument("manifest has no mediaType and neither layers nor manifests")


def _parse_image_manifest(doc: dict[str, Any], media_type: str) -> Manifest:
    config = _parse_descriptor(doc.get("config"), "config")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise InvalidArgument("manifest layers is missing or not a list")
    if len(raw_layers) > MAX_DESCRIPTORS:
        raise InvalidArgument(f"manifest has {len(raw_layers)} layers, over the limit of {MAX_DESCRIPTORS}")
    layers = tuple(_parse_descriptor(item, f"layers[{i}]") for i, item in enumerate(raw_layers))
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_COMPRESSION:
            raise InvalidArgument(f"layers[{i}] has unsupported media type {layer.media_type!r}")
    return Manifest(config=config, layers=layers, media_type=media_type,
                    annotations=_parse_annotations(doc.get("annotations"), "manifest"))


def _parse_index(doc: dict[str, Any], media_type: str) -> Index:
    raw = doc.get("manifests")
    if not isinstance(raw, list):
        raise InvalidArgument("index manifests is missing or not a list")
    if len(raw) > MAX_DESCRIPTORS:
        raise InvalidArgument(f"index has {len(raw)} manifests, over the limit of {MAX_DESCRIPTORS}")
    manifests = tuple(_parse_descriptor(item, f"manifests[{i}]") for i, item in enumerate(raw))
    return Index(manifests=manifests, media_type=media_type,
                 annotations=_parse_annotations(doc.get("annotations"), "index"))


def _parse_descriptor(raw: Any, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where} is missing or not an object")
    media_type = raw.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidArgument(f"{where}.mediaType is missing or not a string")
    size = raw.get("size")
    # bool is an int in Python; JSON true is no size.
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > MAX_BLOB_SIZE:
        raise InvalidArgument(f"{where}.size is {size!r}, expected a non-negative integer")
    urls = raw.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise InvalidArgument(f"{where}.urls is not a list of strings")
    for url in urls:
        if not url.startswith(("https://", "http://")):
            raise InvalidArgument(f"{where}.urls has a non-http URL {url!r}")
    platform = None
    if raw.get("platform") is not None:
        platform = _parse_platform(raw["platform"], f"{where}.platform")
    return Descriptor(
        media_type=media_type,
        digest=parse_digest(raw.get("digest"), f"{where}.digest"),
        size=size,
        platform=platform,
        urls=tuple(urls),
        annotations=_parse_annotations(raw.get("annotations"), where),
    )


def _parse_platform(raw: Any, where: str) -> Platform:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where} is not an object")
    values = {}
    for key in ("os", "architecture", "variant", "os.version"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidArgument(f"{where}.{key} is not a string")
        values[key] = value or None
    if not values["os"] or not values["architecture"]:
        raise InvalidArgument(f"{where} needs both os and architecture")
    features = raw.get("os.features") or []
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise InvalidArgument(f"{where}.os.features is not a list of strings")
    return Platform(os=values["os"], architecture=values["architecture"], variant=values["variant"],
                    os_version=values["os.version"], os_features=tuple(features))


def _parse_annotations(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise InvalidArgument(f"{where}.annotations is not a map of strings to strings")
    return dict(raw)


def parse_digest(value: Any, where: str = "digest") -> Digest:
    """Return `value` as a Digest, or raise InvalidArgument naming the field `where`.

    Only sha256 is accepted (see runtime/digest.py): a digest we cannot recompute proves nothing.
    """
    if isinstance(value, str) and len(value) > 200:
        # Keep a hostile value out of the error message.
        raise InvalidArgument(f"{where}: invalid digest of {len(value)} characters")
    try:
        return Digest.parse(value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {exc}") from None


#
# Platform choice
#


def host_platform() -> tuple[str, str, str | None]:
    """Return (os, architecture, variant) of this machine in Go's GOOS/GOARCH terms."""
    machine = _platform.machine().lower()
    arch, variant = _HOST_ARCHITECTURES.get(machine, (machine, None))
    return "linux", arch, variant


def _normalise_variant(arch: str, variant: str | None) -> str | None:
    # arm64 "v8" is the default and is often left out; treat both the same.
    if arch == "arm64" and variant in (None, "", "v8"):
        return None
    return variant or None


def select_platform(index: Index, os: str = "linux", arch: str | None = None,
                    variant: str | None = None) -> Descriptor:
    """Return the entry of `index` for the platform, by default this host's.

    With no `variant`, an entry without a variant (or arm64/v8) is preferred over one with a variant,
    and otherwise the first match wins. Entries with no platform (attestations, artifacts) are never
    chosen. Raise NotFound listing the platforms the index does have.
    """
    if arch is None:
        _, arch, host_variant = host_platform()
        variant = variant if variant is not None else host_variant
    wanted_variant = _normalise_variant(arch, variant)
    candidates = []
    for entry in index.manifests:
        p = entry.platform
        if p is None or p.os != os or p.architecture != arch:
            continue
        if entry.media_type not in IMAGE_MANIFEST_MEDIA_TYPES:
            continue
        have_variant = _normalise_variant(p.architecture, p.variant)
        if variant is not None and have_variant != wanted_variant:
            continue
        candidates.append((have_variant is not None, entry))
    if candidates:
        # Stable sort: entries without a variant first, then index order.
        return sorted(candidates, key=lambda pair: pair[0])[0][1]
    available = ", ".join(str(e.platform) for e in index.manifests if e.platform is not None) or "none"
    wanted = f"{os}/{arch}" + (f"/{variant}" if variant else "")
    raise NotFound(f"no manifest for platform {wanted} in the index (available: {available})")
