"""Tests for runtime.digest: Digest validation, sha256_digest and HashingReader."""

import hashlib
import io
import json

import pytest

from runtime.digest import Digest, HashingReader, sha256_digest
from runtime.errors import DigestMismatch, InvalidArgument

EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class TestDigest:
    def test_it_parses_a_valid_digest(self):
        d = Digest.parse(EMPTY)
        assert d == EMPTY
        assert isinstance(d, str)
        assert d.algorithm == "sha256"
        assert d.hex == EMPTY[7:]
        assert d.short == EMPTY[7:19]
        assert json.dumps({"d": d}) == json.dumps({"d": EMPTY})

    @pytest.mark.parametrize(
        "text, why",
        [
            ("", "expected sha256:"),
            ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "expected sha256:"),
            ("md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported algorithm 'md5'"),
            ("sha256:abc", "expected 64 hex characters, got 3"),
            (EMPTY.upper().replace("SHA256", "sha256"), "lowercase hex"),
            (EMPTY[:-1] + "g", "lowercase hex"),
            (EMPTY + "\n", "expected 64 hex characters, got 65"),
        ],
    )
    def test_it_rejects_bad_digests_saying_why(self, text, why):
        with pytest.raises(InvalidArgument) as exc:
            Digest.parse(text)
        assert why in str(exc.value)
        assert "invalid digest" in str(exc.value)

    def test_constructor_validates_too(self):
        with pytest.raises(InvalidArgument):
            Digest("sha256:nope")

    def test_sha256_digest_matches_hashlib(self):
        assert sha256_digest(b"") == EMPTY
        assert sha256_digest(b"hello").hex == hashlib.sha256(b"hello").hexdigest()


class TestHashingReader:
    def test_it_hashes_and_counts_what_is_read(self):
        data = b"x" * 100_000 + b"y" * 7
        reader = HashingReader(io.BytesIO(data))
        got = reader.read(10) + reader.read(50_000) + reader.read()
        assert got == data
        assert reader.size == len(data)
        assert reader.digest() == sha256_digest(data)

    def test_readinto_is_hashed(self):
        reader = HashingReader(io.BytesIO(b"abcdef"))
        buf = bytearray(4)
        assert reader.readinto(buf) == 4
        assert bytes(buf) == b"abcd"
        reader.drain()
        assert reader.size == 6
        assert reader.digest() == sha256_digest(b"abcdef")

    def test_it_allows_exactly_the_limit(self):
        reader = HashingReader(io.BytesIO(b"12345"), limit=5)
        assert reader.read() == b"12345"

    def test_it_raises_when_more_than_the_limit_is_read(self):
        reader = HashingReader(io.BytesIO(b"123456"), limit=5, name="blob sha256:abc")
        with pytest.raises(DigestMismatch) as exc:
            reader.read()
        assert "blob sha256:abc is larger than its declared size of 5 bytes" in str(exc.value)
