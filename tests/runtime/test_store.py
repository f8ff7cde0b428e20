"""Tests for runtime.store: the content-addressed blob store and its resumable ingests."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from runtime.digest import sha256_digest
from runtime.errors import AlreadyExists, DigestMismatch, InvalidArgument, NotFound
from runtime.store import Store

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = b"layer bytes " * 10_000
DATA_DIGEST = sha256_digest(DATA)


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "root"))


def ingest_files(store):
    """Return every file left in the ingest area, relative to it."""
    found = []
    for dirpath, _dirs, files in os.walk(store.ingest_dir):
        found += [os.path.relpath(os.path.join(dirpath, f), store.ingest_dir) for f in files]
    return found


def run_python(code, **kwargs):
    """Start a separate Python process running ``code`` with the repo importable."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs,
    )


class TestBlobs:
    def test_write_blob_is_addressed_by_digest(self, store):
        digest = store.write_blob(b"hello")
        assert digest == sha256_digest(b"hello")
        assert store.blob_path(digest) == os.path.join(store.root, "blobs", "sha256", digest.hex)
        assert store.has_blob(digest)
        assert store.blob_size(digest) == 5
        with store.open_blob(digest) as f:
            assert f.read() == b"hello"
        assert store.read_blob(digest, max_size=5) == b"hello"
        assert list(store.blobs()) == [digest]
        assert ingest_files(store) == []

    def test_write_blob_twice_is_a_noop(self, store):
        assert store.write_blob(b"x") == store.write_blob(b"x", expected=sha256_digest(b"x"))

    def test_write_blob_with_wrong_expected_digest_stores_nothing(self, store):
        with pytest.raises(DigestMismatch):
            store.write_blob(b"hello", expected=sha256_digest(b"other"))
        assert not store.has_blob(sha256_digest(b"hello"))
        assert list(store.blobs()) == []

    def test_missing_blobs_raise_not_found_with_the_digest(self, store):
        d = sha256_digest(b"nope")
        for call in (store.open_blob, store.blob_size, store.delete_blob):
            with pytest.raises(NotFound, match=f"blob {d} not found"):
                call(d)
        with pytest.raises(NotFound):
            store.read_blob(d, 10)
        store.delete_blob(d, missing_ok=True)
        assert not store.has_blob(d)

    def test_digests_are_validated_so_paths_cannot_escape(self, store):
        with pytest.raises(InvalidArgument):
            store.blob_path("sha256:../../../etc/passwd")
        with pytest.raises(InvalidArgument):
            store.has_blob("../x")

    def test_read_blob_refuses_oversized_and_corrupt_blobs(self, store):
        d = store.write_blob(b"0123456789")
        with pytest.raises(InvalidArgument, match=f"blob {d} is 10 bytes, more than the 9 allowed"):
            store.read_blob(d, max_size=9)
        with open(store.blob_path(d), "r+b") as f:
            f.write(b"X")
        with pytest.raises(DigestMismatch, match="corrupt"):
            store.read_blob(d, max_size=100)

    def test_delete_blob(self, store):
        d = store.write_blob(b"bye")
        store.delete_blob(d)
        assert not store.has_blob(d)


class TestIngest:
    def test_commit_verifies_and_publishes(self, store):
        with store.ingest(DATA_DIGEST, len(DATA)) as w:
            assert not store.has_blob(DATA_DIGEST)
            w.write(DATA[:100])
            w.write(DATA[100:])
            assert w.offset == len(DATA)
            assert w.commit() == DATA_DIGEST
        with store.open_blob(DATA_DIGEST) as f:
            assert f.read() == DATA
        assert ingest_files(store) == []

    def test_commit_without_expectations_returns_the_digest(self, store):
        w = store.ingest()
        w.write(b"abc")
        assert w.commit() == sha256_digest(b"abc")
        with pytest.raises(InvalidArgument, match="already committed"):
            w.write(b"more")

    def test_digest_mismatch_leaves_no_blob_and_no_ingest_file(self, store):
        wrong = sha256_digest(b"something else")
        w = store.ingest(wrong, len(DATA), key=wrong)
        w.write(DATA)
        with pytest.raises(DigestMismatch, match=f"unexpected commit digest {DATA_DIGEST}, expected {wrong}"):
            w.commit()
        assert not store.has_blob(wrong) and not store.has_blob(DATA_DIGEST)
        assert ingest_files(store) == []
        assert os.listdir(store.ingest_dir) == []

    def test_short_content_is_a_size_mismatch(self, store):
        w = store.ingest(DATA_DIGEST, len(DATA))
        w.write(DATA[:-1])
        with pytest.raises(DigestMismatch, match=f"unexpected commit size {len(DATA) - 1}, expected {len(DATA)}"):
            w.commit()
        assert ingest_files(store) == []

    def test_writing_past_the_declared_size_fails_at_once(self, store):
        w = store.ingest(DATA_DIGEST, 10, key="k")
        w.write(b"0123456789")
        with pytest.raises(DigestMismatch, match="larger than its declared size of 10 bytes"):
            w.write(b"!")
        assert ingest_files(store) == []

    def test_exception_in_context_aborts_an_anonymous_ingest(self, store):
        with pytest.raises(RuntimeError):
            with store.ingest() as w:
                w.write(b"partial")
                raise RuntimeError("network down")
        assert ingest_files(store) == []

    def test_keyed_ingest_resumes_in_process_after_an_error(self, store):
        with pytest.raises(ConnectionError):
            with store.ingest(DATA_DIGEST, len(DATA), key=DATA_DIGEST) as w:
                w.write(DATA[:5000])
                raise ConnectionError("connection reset")
        with store.ingest(DATA_DIGEST, len(DATA), key=DATA_DIGEST) as w:
            assert w.offset == 5000
            w.write(DATA[5000:])
            assert w.commit() == DATA_DIGEST
        assert ingest_files(store) == []

    def test_abort_discards_a_keyed_ingest(self, store):
        w = store.ingest(key="k")
        w.write(b"abc")
        w.abort()
        assert store.ingest(key="k").offset == 0

    def test_ingest_of_a_present_blob_raises_already_exists(self, store):
        d = store.write_blob(b"here")
        with pytest.raises(AlreadyExists, match=f"blob {d} already exists"):
            store.ingest(d)

    def test_keyed_ingest_resumes_after_the_writer_process_dies(self, store):
        half = len(DATA) // 2
        proc = run_python(f"""
            import os
            from runtime.store import Store
            w = Store({store.root!r}).ingest({DATA_DIGEST!r}, {len(DATA)}, key={DATA_DIGEST!r})
            DATA = b"layer bytes " * 10_000
            w.write(DATA[:{half}])
            w._file.flush()
            os._exit(9)  # Die without closing, as a killed worker would.
        """)
        proc.communicate(timeout=30)
        assert proc.returncode == 9
        with store.ingest(DATA_DIGEST, len(DATA), key=DATA_DIGEST) as w:
            assert w.offset == half
            # The hash state was rebuilt from the partial file, so the commit verifies.
            w.write(DATA[half:])
            assert w.commit() == DATA_DIGEST
        assert store.read_blob(DATA_DIGEST, len(DATA)) == DATA

    def test_corrupt_partial_bytes_fail_the_resumed_commit_cleanly(self, store):
        w = store.ingest(DATA_DIGEST, len(DATA), key=DATA_DIGEST)
        w.write(b"X" * 10)
        w.close()
        w = store.ingest(DATA_DIGEST, len(DATA), key=DATA_DIGEST)
        assert w.offset == 10
        w.write(DATA[10:])
        with pytest.raises(DigestMismatch):
            w.commit()
        assert ingest_files(store) == []
        # The next attempt starts from zero.
        assert store.ingest(DATA_DIGEST, len(DATA), key=DATA_DIGEST).offset == 0

    def test_second_writer_of_a_key_waits_then_finds_the_blob(self, store):
        proc = run_python(f"""
            import sys
            from runtime.store import Store
            w = Store({store.root!r}).ingest({DATA_DIGEST!r}, {len(DATA)}, key={DATA_DIGEST!r})
            DATA = b"layer bytes " * 10_000
            w.write(DATA[:1000])
            print("locked", flush=True)
            sys.stdin.readline()
            w.write(DATA[1000:])
            print(w.commit(), flush=True)
        """)
        assert proc.stdout.readline() == "locked\n"
        outcome = {}

        def second_writer():
            try:
                w = store.ingest(DATA_DIGEST, len(DATA), key=DATA_DIGEST)
                outcome["offset"] = w.offset
            except AlreadyExists as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=second_writer)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive(), "the second writer did not wait for the first"
        out, err = proc.communicate("go\n", timeout=30)
        thread.join(10)
        assert proc.returncode == 0, err
        assert out.strip() == DATA_DIGEST
        assert isinstance(outcome.get("error"), AlreadyExists)
        assert store.read_blob(DATA_DIGEST, len(DATA)) == DATA
        assert ingest_files(store) == []

    def test_many_threads_writing_the_same_blob_agree(self, store):
        errors = []

        def writer():
            try:
                with store.ingest(DATA_DIGEST, len(DATA), key=DATA_DIGEST) as w:
                    w.write(DATA[w.offset:])
                    w.commit()
            except AlreadyExists:
                pass
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert store.read_blob(DATA_DIGEST, len(DATA)) == DATA
        assert ingest_files(store) == []


class TestStaging:
    def test_tmp_dir_and_clean_tmp(self, store):
        a = store.tmp_dir("build-")
        b = store.tmp_dir()
        assert a != b and os.path.isdir(a) and os.path.dirname(a) == store.tmp_root
        open(os.path.join(a, "f"), "w").close()
        os.symlink("/etc", os.path.join(a, "link"))
        store.clean_tmp()
        assert os.listdir(store.tmp_root) == []
        assert os.path.isdir("/etc")

    def test_clean_tmp_drops_abandoned_anonymous_ingests_only(self, store):
        abandoned = store.ingest()
        abandoned.write(b"x")
        abandoned._file.close()
        os.close(abandoned._lock_fd)  # As if its process had died.
        live = store.ingest()
        live.write(b"y")
        keyed = store.ingest(key="resume-me")
        keyed.write(b"z")
        keyed.close()
        store.clean_tmp()
        assert not os.path.exists(abandoned.path)
        assert os.path.exists(live.data_path)
        assert store.ingest(key="resume-me").offset == 1
        assert live.commit() == sha256_digest(b"y")
