"""Image references: the ``name[:tag][@digest]`` text users type, parsed and normalised as Docker does.

Vocabulary: a *ref* is what the user typed (``busybox``); its *name* is the normalised
``registry/repository`` (``docker.io/library/busybox``); the *familiar* form is what ``docker images``
shows (``busybox:latest``).

The grammar is the one of github.com/distribution/reference::

    reference   := name [ ":" tag ] [ "@" digest ]
    name        := [domain "/"] path-component ["/" path-component]*
    domain      := host [":" port]       host is a DNS name, an IPv4 address or [IPv6]
    path-comp   := [a-z0-9]+ (separator [a-z0-9]+)*      separator is "." | "_" | "__" | "-"+
    tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}

Normalisation (distribution/reference ``splitDockerDomain``): the first path component is a registry
only when it contains ``.`` or ``:``, is ``localhost``, or has an upper-case letter; otherwise the
registry is ``docker.io``. On docker.io a one-component repository gets ``library/``. A reference with
neither tag nor digest gets the tag ``latest``; one with a digest gets no default tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from runtime.digest import Digest
from runtime.errors import InvalidArgument

__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_TAG",
    "Reference",
    "is_image_id_prefix",
    "parse_reference",
]

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
# distribution/reference NameTotalLengthMax: the whole normalised name.
NAME_MAX_LENGTH = 255

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*", re.ASCII)
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?", re.ASCII
)
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")
# moby daemon/containerd/image.go truncatedID: what `docker inspect <id>` accepts as an image id.
_ID_PREFIX_RE = re.compile(r"(?:sha256:)?[a-f0-9]{4,64}")


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised image reference.

    ``registry`` and ``repository`` are always set (``docker.io``, ``library/busybox``). ``tag`` is
    None only when a digest was given without a tag. When both are given the digest decides what is
    pulled; the tag is kept so it can be shown.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def name(self) -> str:
        """The normalised name without tag or digest: ``docker.io/library/busybox``."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """The name as Docker shows it: ``busybox``, ``team/app``, ``127.0.0.1:5000/team/app``."""
        if self.registry != DEFAULT_REGISTRY:
            return self.name
        if self.repository.startswith(OFFICIAL_REPO_PREFIX):
            rest = self.repository[len(OFFICIAL_REPO_PREFIX) :]
            if "/" not in rest:
                return rest
        return self.repository

    @property
    def familiar(self) -> str:
        """The reference as ``docker images`` shows it: ``busybox:latest``."""
        return self._format(self.familiar_name)

    @property
    def full(self) -> str:
        """The fully qualified reference: ``docker.io/library/busybox:latest``."""
        return self._format(self.name)

    def _format(self, name: str) -> str:
        text = name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def with_tag(self, tag: str) -> "Reference":
        """Return the same repository with ``tag`` and no digest (the result names a tag)."""
        _check_tag(tag, f"{self.familiar_name}:{tag}")
        return replace(self, tag=tag, digest=None)

    def __str__(self) -> str:
        return self.full


def parse_reference(text: str) -> Reference:
    """Parse and normalise ``text`` as Docker does; raise InvalidArgument saying why it is invalid.

    1. Split off ``@digest`` and then ``:tag`` (a colon after the last slash).
    2. Split the registry from the repository (``splitDockerDomain``).
    3. Validate each part and the total length; add ``latest`` when there is neither tag nor digest.
    """
    if not isinstance(text, str) or not text:
        raise InvalidArgument("invalid reference '': empty")
    if text.strip() != text:
        raise InvalidArgument(f"invalid reference {text!r}: contains whitespace")
    if _IDENTIFIER_RE.fullmatch(text):
        raise InvalidArgument(
            f"invalid reference {text!r}: cannot use a 64-character hexadecimal string as a repository name"
        )

    name_tag, at, digest_text = text.partition("@")
    digest = None
    if at:
        try:
            digest = Digest.parse(digest_text)
        except InvalidArgument as exc:
            raise InvalidArgument(f"invalid reference {text!r}: {exc}") from None

    tag = None
    colon = name_tag.rfind(":")
    if colon > name_tag.rfind("/"):
        name_tag, tag = name_tag[:colon], name_tag[colon + 1 :]
        _check_tag(tag, text)
    name = name_tag
    if not name:
        raise InvalidArgument(f"invalid reference {text!r}: empty repository name")

    registry, repository = _split_registry(name)
    if not _DOMAIN_RE.fullmatch(registry):
        raise InvalidArgument(f"invalid reference {text!r}: invalid registry {registry!r}")
    if repository.lower() != repository:
        raise InvalidArgument(f"invalid reference {text!r}: repository name must be lowercase")
    if not _PATH_RE.fullmatch(repository):
        raise InvalidArgument(
            f"invalid reference {text!r}: invalid repository name {repository!r} "
            "(lowercase letters, digits and separators '.', '_', '__', '-' between components)"
        )
    if len(registry) + 1 + len(repository) > NAME_MAX_LENGTH:
        raise InvalidArgument(f"invalid reference {text!r}: name longer than {NAME_MAX_LENGTH} characters")

    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


def _split_registry(name: str) -> tuple[str, str]:
    """Split a name (no tag, no digest) into registry and repository as ``splitDockerDomain`` does."""
    first, slash, rest = name.partition("/")
    if not slash or (
        "." not in first and ":" not in first and first != "localhost" and first.lower() == first
    ):
        registry, repository = DEFAULT_REGISTRY, name
    else:
        registry, repository = first, rest
    if registry == LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = OFFICIAL_REPO_PREFIX + repository
    return registry, repository


def _check_tag(tag: str, text: str) -> None:
    """Raise InvalidArgument unless ``tag`` is a valid tag."""
    if not tag:
        raise InvalidArgument(f"invalid reference {text!r}: empty tag")
    if len(tag) > 128:
        raise InvalidArgument(f"invalid reference {text!r}: tag longer than 128 characters")
    if not _TAG_RE.fullmatch(tag):
        raise InvalidArgument(
            f"invalid reference {text!r}: invalid tag {tag!r} "
            "(letters, digits, '_', '.' and '-', not starting with '.' or '-')"
        )


def is_image_id_prefix(text: str) -> bool:
    """Return True if ``text`` can name an image by id: 4 to 64 lowercase hex, optionally ``sha256:``.

    This is moby's ``truncatedID`` rule. A text like ``cafe`` is also a valid repository name:
    callers look it up as a reference first and as an id prefix second, as Docker does.
    """
    return isinstance(text, str) and _ID_PREFIX_RE.fullmatch(text) is not None
