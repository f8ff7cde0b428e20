"""Tests for runtime.layers: chain ids and the layer store (compression, verification, dedup, races)."""

import gzip
import hashlib
import io
import os
import stat
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard

from runtime.digest import sha256_digest
from runtime.errors import DigestMismatch, InvalidArgument, NotFound, UnsafeArchive
from runtime.layers import LayerStore, chain_id_of, chain_ids


class Stream:
    """A non-seekable stream, optionally waiting at a barrier before its first read."""

    def __init__(self, data: bytes, barrier: threading.Barrier | None = None):
        self._buf = io.BytesIO(data)
        self._barrier = barrier

    def read(self, n=-1):
        if self._barrier is not None:
            barrier, self._barrier = self._barrier, None
            barrier.wait(10)
        return self._buf.read(n)


class Unreadable:
    def read(self, n=-1):
        raise AssertionError("the stream of an existing layer must not be read")


def layer_tar(files: dict[str, bytes], whiteouts=()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
        for name in whiteouts:
            tf.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    return buf.getvalue()


TAR = layer_tar({"etc/os-release": b"NAME=berth\n", "bin/app": b"#!/bin/sh\necho hi\n"})
DIFF_ID = sha256_digest(TAR)


@pytest.fixture
def layers(tmp_path):
    return LayerStore(str(tmp_path / "root"))


def leftovers(store):
    """Staging directories left in the layers directory."""
    return [n for n in os.listdir(store.layers_dir) if n.startswith(".tmp-")]


def test_chain_ids_follow_the_oci_spec():
    a, b, c = (sha256_digest(x) for x in (b"a", b"b", b"c"))
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []
    assert chain_id_of(None, a) == a
    assert chain_id_of(ab, c) == abc
    with pytest.raises(InvalidArgument):
        chain_ids(["sha256:bad"])


@pytest.mark.parametrize(
    "compress", [lambda b: b, gzip.compress, lambda b: zstandard.ZstdCompressor().compress(b)],
    ids=["plain", "gzip", "zstd"],
)
def test_apply_unpacks_any_compression_and_records_meta(layers, compress):
    blob = compress(TAR)
    seen = []
    layer = layers.apply(
        Stream(blob), chain_id=DIFF_ID, parent=None, expected_diff_id=DIFF_ID,
        digest=sha256_digest(blob), progress=seen.append,
    )
    assert layer.path == os.path.join(layers.layers_dir, DIFF_ID.hex, "diff")
    assert open(os.path.join(layer.path, "etc/os-release"), "rb").read() == b"NAME=berth\n"
    assert (layer.chain_id, layer.diff_id, layer.parent, layer.digest) == (
        DIFF_ID, DIFF_ID, None, sha256_digest(blob))
    assert layer.size == len(b"NAME=berth\n") + len(b"#!/bin/sh\necho hi\n")
    assert seen[-1] == len(blob)
    assert layers.get(DIFF_ID) == layer
    assert layers.exists(DIFF_ID)
    assert leftovers(layers) == []


def test_multi_frame_zstd_and_multi_member_gzip(layers):
    half = len(TAR) // 2
    z = zstandard.ZstdCompressor()
    for blob in (z.compress(TAR[:half]) + z.compress(TAR[half:]),
                 gzip.compress(TAR[:half]) + gzip.compress(TAR[half:])):
        layer = layers.apply(Stream(blob), chain_id=DIFF_ID, parent=None, expected_diff_id=DIFF_ID)
        assert os.path.exists(os.path.join(layer.path, "bin/app"))
        layers.remove(DIFF_ID)


def test_layer_on_a_parent_converts_whiteouts(layers):
    top = layer_tar({"new": b"n"}, whiteouts=["etc/.wh.os-release"])
    top_diff = sha256_digest(top)
    chain = chain_ids([DIFF_ID, top_diff])[1]
    layer = layers.apply(Stream(gzip.compress(top)), chain_id=chain, parent=DIFF_ID, expected_diff_id=top_diff)
    assert layer.parent == DIFF_ID
    st = os.lstat(os.path.join(layer.path, "etc/os-release"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    # Only its own diff: the parent's files are not copied in.
    assert sorted(os.listdir(layer.path)) == ["etc", "new"]


def test_wrong_diff_id_leaves_nothing(layers):
    wrong = sha256_digest(b"other")
    with pytest.raises(DigestMismatch, match=f"unexpected diff_id {DIFF_ID}, expected {wrong}"):
        layers.apply(Stream(gzip.compress(TAR)), chain_id=wrong, parent=None, expected_diff_id=wrong)
    assert not layers.exists(wrong)
    assert os.listdir(layers.layers_dir) == []


def test_wrong_compressed_digest_leaves_nothing(layers):
    with pytest.raises(DigestMismatch, match="unexpected digest"):
        layers.apply(Stream(gzip.compress(TAR)), chain_id=DIFF_ID, parent=None, expected_diff_id=DIFF_ID,
                     digest=sha256_digest(TAR))
    assert os.listdir(layers.layers_dir) == []


def test_chain_id_must_match_parent_and_diff_id(layers):
    with pytest.raises(InvalidArgument, match="is not the chain of parent"):
        layers.apply(Stream(TAR), chain_id=DIFF_ID, parent=sha256_digest(b"p"), expected_diff_id=DIFF_ID)


def test_unsafe_tar_in_a_layer_leaves_nothing(layers, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.addfile(tarfile.TarInfo("ok"), io.BytesIO(b""))
        tf.addfile(tarfile.TarInfo("../../evil"), io.BytesIO(b""))
    bad = buf.getvalue()
    with pytest.raises(UnsafeArchive, match="evil"):
        layers.apply(Stream(gzip.compress(bad)), chain_id=sha256_digest(bad), parent=None,
                     expected_diff_id=sha256_digest(bad))
    assert os.listdir(layers.layers_dir) == []
    assert not (tmp_path / "evil").exists()


def test_truncated_or_corrupt_compression_is_an_error(layers):
    blob = gzip.compress(TAR)
    with pytest.raises((UnsafeArchive, DigestMismatch)):
        layers.apply(Stream(blob[: len(blob) // 2]), chain_id=DIFF_ID, parent=None, expected_diff_id=DIFF_ID)
    zblob = bytearray(zstandard.ZstdCompressor().compress(TAR))
    zblob[len(zblob) // 2] ^= 0xFF
    with pytest.raises((UnsafeArchive, DigestMismatch)):
        layers.apply(Stream(bytes(zblob)), chain_id=DIFF_ID, parent=None, expected_diff_id=DIFF_ID)
    assert os.listdir(layers.layers_dir) == []


def test_unsupported_compression_is_refused(layers):
    import lzma

    with pytest.raises(UnsafeArchive, match="unsupported compression xz"):
        layers.apply(Stream(lzma.compress(TAR)), chain_id=DIFF_ID, parent=None, expected_diff_id=DIFF_ID)


def test_decompressed_size_is_bounded(tmp_path):
    bomb_tar = layer_tar({"zeros": b"\0" * 4_000_000})
    store = LayerStore(str(tmp_path / "root"), max_uncompressed=1_000_000)
    bomb = gzip.compress(bomb_tar)
    assert len(bomb) < 20_000
    with pytest.raises(UnsafeArchive, match="decompresses to more than 1000000 bytes"):
        store.apply(Stream(bomb), chain_id=sha256_digest(bomb_tar), parent=None,
                    expected_diff_id=sha256_digest(bomb_tar))
    assert os.listdir(store.layers_dir) == []


def test_existing_layer_is_returned_without_reading(layers):
    first = layers.apply(Stream(TAR), chain_id=DIFF_ID, parent=None, expected_diff_id=DIFF_ID)
    again = layers.apply(Unreadable(), chain_id=DIFF_ID, parent=None, expected_diff_id=DIFF_ID)
    assert again == first


def test_concurrent_applies_of_one_layer_agree(layers):
    barrier = threading.Barrier(2)
    blob = gzip.compress(TAR)
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(layers.apply, Stream(blob, barrier), chain_id=DIFF_ID, parent=None,
                        expected_diff_id=DIFF_ID)
            for _ in range(2)
        ]
        results = [f.result(timeout=30) for f in futures]
    assert results[0] == results[1]
    assert os.listdir(layers.layers_dir) == [DIFF_ID.hex]
    assert sorted(os.listdir(results[0].path)) == ["bin", "etc"]


def test_layers_of_one_image_apply_in_parallel(layers):
    tars = [layer_tar({f"layer{i}/file": bytes([i]) * 1000}) for i in range(4)]
    diff_ids = [sha256_digest(t) for t in tars]
    chains = chain_ids(diff_ids)
    parents = [None] + chains[:-1]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(
            lambda i: layers.apply(Stream(gzip.compress(tars[i])), chain_id=chains[i], parent=parents[i],
                                   expected_diff_id=diff_ids[i]),
            range(4),
        ))
    assert [layer.chain_id for layer in got] == chains
    assert [layer.chain_id for layer in layers.list()] == sorted(chains)
    for i, layer in enumerate(got):
        assert os.listdir(layer.path) == [f"layer{i}"]


def test_get_remove_and_clean_staging(layers):
    with pytest.raises(NotFound, match=f"layer {DIFF_ID} not found"):
        layers.get(DIFF_ID)
    with pytest.raises(NotFound):
        layers.remove(DIFF_ID)
    layers.apply(Stream(TAR), chain_id=DIFF_ID, parent=None, expected_diff_id=DIFF_ID)
    os.makedirs(os.path.join(layers.layers_dir, ".tmp-dead/diff/x"))
    assert [layer.chain_id for layer in layers.list()] == [DIFF_ID]
    layers.clean_staging()
    assert os.listdir(layers.layers_dir) == [DIFF_ID.hex]
    layers.remove(DIFF_ID)
    assert not layers.exists(DIFF_ID)
    assert layers.list() == []
    assert os.listdir(layers.layers_dir) == []


def test_diff_id_covers_padding_after_the_end_of_archive(layers):
    padded = TAR + b"\0" * 40960  # Some writers pad well past tarfile's read-ahead.
    diff_id = sha256_digest(padded)
    layer = layers.apply(Stream(gzip.compress(padded)), chain_id=diff_id, parent=None, expected_diff_id=diff_id)
    assert layer.diff_id == diff_id
