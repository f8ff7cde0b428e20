"""Content digests: the ``sha256:<hex>`` names that blobs, layers and images go by.

A ``Digest`` is a ``str``, so it can be used as a dict key, written to JSON and compared with
plain strings, but it can only be built from text that is a valid digest. Only sha256 is
supported: it is what every registry and the OCI image spec use today.
"""

from __future__ import annotations

import hashlib
import re

from runtime.errors import DigestMismatch, InvalidArgument

__all__ = ["ALGORITHM", "Digest", "HashingReader", "sha256_digest"]

ALGORITHM = "sha256"

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


class Digest(str):
    """A validated ``sha256:<64 lowercase hex>`` digest.

    ``Digest(text)`` and ``Digest.parse(text)`` both validate; a bad value raises InvalidArgument.
    """

    __slots__ = ()

    def __new__(cls, text: str) -> "Digest":
        if isinstance(text, Digest):
            return text
        if not isinstance(text, str):
            raise InvalidArgument(f"invalid digest {text!r}: not a string")
        if not _DIGEST_RE.fullmatch(text):
            raise InvalidArgument(f"invalid digest {text!r}: {_why_invalid(text)}")
        return super().__new__(cls, text)

    @classmethod
    def parse(cls, text: str) -> "Digest":
        """Return ``text`` as a Digest, or raise InvalidArgument saying what is wrong with it."""
        return cls(text)

    @classmethod
    def from_hex(cls, hex_: str) -> "Digest":
        """Return the sha256 Digest whose encoded part is ``hex_``."""
        return cls(f"{ALGORITHM}:{hex_}")

    @property
    def algorithm(self) -> str:
        """The algorithm part, always ``sha256``."""
        return self.split(":", 1)[0]

    @property
    def hex(self) -> str:
        """The 64 hex characters after the colon."""
        return self.split(":", 1)[1]

    @property
    def short(self) -> str:
        """The first 12 hex characters, as ``docker images`` shows an id."""
        return self.hex[:12]


def _why_invalid(text: str) -> str:
    """Explain in a few words why ``text`` is not a valid digest."""
    if ":" not in text:
        return "expected sha256:<64 hex characters>"
    algorithm, encoded = text.split(":", 1)
    if algorithm != ALGORITHM:
        return f"unsupported algorithm {algorithm!r}, only sha256 is supported"
    if len(encoded) != 64:
        return f"expected 64 hex characters, got {len(encoded)}"
    return "expected lowercase hex characters only"


def sha256_digest(data: bytes) -> Digest:
    """Return the sha256 Digest of ``data``."""
    return Digest.from_hex(hashlib.sha256(data).hexdigest())


class HashingReader:
    """A read-only file-like wrapper that hashes and counts the bytes read through it.

    ``limit`` is the most bytes the source may yield (its declared size): reading more raises
    DigestMismatch, so a blob that runs past its announced size is stopped early.
    """

    def __init__(self, raw, limit: int | None = None, name: str = "content"):
        self.raw = raw
        self.limit = limit
        self.name = name
        self.size = 0
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all when negative), hashing them."""
        if n is None or n < 0:
            chunks = []
            while True:
                chunk = self.read(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        data = self.raw.read(n)
        if data:
            self._account(data)
        return data

    def readinto(self, buffer) -> int:
        """Read into ``buffer``, hashing what was read."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _account(self, data: bytes) -> None:
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise DigestMismatch(f"{self.name} is larger than its declared size of {self.limit} bytes")
        self._hash.update(data)

    def readable(self) -> bool:
        """Return True: this is a reader."""
        return True

    def seekable(self) -> bool:
        """Return False: hashing needs every byte in order."""
        return False

    def digest(self) -> Digest:
        """Return the Digest of everything read so far."""
        return Digest.from_hex(self._hash.hexdigest())

    def drain(self, chunk_size: int = 1 << 20) -> None:
        """Read (and hash) the rest of the source, discarding the bytes."""
        while self.read(chunk_size):
            pass

    def close(self) -> None:
        """Close the wrapped source."""
        close = getattr(self.raw, "close", None)
        if close is not None:
            close()
