"""Pulling from a real docker-registry into a real store: layers streamed, unpacked, recorded."""

import os
import stat
import threading

import pytest

from runtime.config import RuntimeConfig
from runtime.engine import Engine
from runtime.errors import Cancelled, DigestMismatch, NotFound, UnsafeArchive
from runtime.registry import RegistryClient
from tests.support.registry import Dir, File, build_image, busybox_layer


@pytest.fixture
def engine(tmp_path):
    engine = Engine(RuntimeConfig(root=str(tmp_path / "root")))
    engine.start()
    return engine


def statuses(events):
    return [e.get("status", "") for e in events]


def test_it_pulls_busybox_with_dockers_progress_messages(engine, busybox_image):
    events = []
    record = engine.pull(busybox_image.references[0], progress=events.append)
    assert record.repo_tags == [busybox_image.references[0]]
    assert record.id == busybox_image.config_descriptor.digest
    layer = engine.layers.get(record.chain_ids[0])
    busybox = os.path.join(layer.path, "bin", "busybox")
    assert os.stat(busybox).st_mode & stat.S_IXUSR
    assert os.readlink(os.path.join(layer.path, "bin", "sh")) in ("busybox", "/bin/busybox")
    seen = statuses(events)
    assert seen[0] == "Pulling from library/busybox"
    assert "Pulling fs layer" in seen and "Downloading" in seen and "Pull complete" in seen
    assert seen[-2].startswith("Digest: sha256:")
    assert seen[-1] == f"Status: Downloaded newer image for {busybox_image.references[0]}"
    downloading = [e for e in events if e.get("status") == "Downloading"]
    assert downloading[-1]["progressDetail"]["current"] == downloading[-1]["progressDetail"]["total"]


def test_a_second_pull_is_up_to_date_and_downloads_nothing(engine, busybox_image):
    engine.pull(busybox_image.references[0])
    events = []
    engine.pull(busybox_image.references[0], progress=events.append)
    assert statuses(events)[-1] == f"Status: Image is up to date for {busybox_image.references[0]}"
    assert "Downloading" not in statuses(events)


def test_another_tag_of_the_same_image_reuses_its_layers(engine, busybox_image):
    engine.pull(busybox_image.references[0])
    events = []
    record = engine.pull(busybox_image.references[1], progress=events.append)
    assert "Downloading" not in statuses(events)
    assert sorted(record.repo_tags) == sorted(busybox_image.references)


def test_it_applies_whiteouts_of_upper_layers_as_overlay_whiteouts(engine, multilayer_image):
    record = engine.pull(multilayer_image.references[0])
    assert len(record.chain_ids) == 3
    top = engine.layers.get(record.chain_ids[2]).path
    whiteout = os.lstat(os.path.join(top, "data", "a.txt"))
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(os.path.join(top, "opq"), "trusted.overlay.opaque") == b"y"
    with open(os.path.join(top, "data", "c.txt")) as f:
        assert f.read() == "c\n"


def test_it_chooses_this_hosts_platform_from_an_index(engine, multiarch_image):
    from runtime.info import go_arch

    record = engine.pull(multiarch_image.references[0])
    assert record.architecture == go_arch()
    top = engine.layers.get(record.chain_ids[-1]).path
    with open(os.path.join(top, "etc", "berth-arch")) as f:
        assert f.read().strip() == go_arch()


def test_a_missing_tag_is_a_clear_not_found(engine, registry, busybox_image):
    with pytest.raises(NotFound, match="manifest unknown"):
        engine.pull(f"{registry.host}/library/busybox:nope")
    assert engine.images.list() == []


class CountingClient(RegistryClient):
    """A real client that counts the blob downloads it starts."""

    fetches: list = []
    lock = threading.Lock()

    def fetch_blob(self, repository, descriptor, writer, progress=None):
        with self.lock:
            CountingClient.fetches.append(descriptor.digest)
        return super().fetch_blob(repository, descriptor, writer, progress)


def test_two_pulls_at_once_download_each_blob_once(tmp_path, registry, multilayer_image):
    """Two engines on one root (two workers of one node) pull the same image at the same time."""
    CountingClient.fetches = []
    root = str(tmp_path / "shared")
    engines = [Engine(RuntimeConfig(root=root)) for _ in range(2)]
    from runtime.reference import parse_reference

    ref = parse_reference(multilayer_image.references[0])
    results, errors = [], []

    def pull(engine):
        try:
            client = CountingClient(ref.registry, insecure=True)
            results.append(engine.puller.pull(client, ref))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=pull, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results[0].id == results[1].id
    layer_blobs = [f for f in CountingClient.fetches if f != multilayer_image.config_descriptor.digest]
    assert sorted(layer_blobs) == sorted(set(layer_blobs)), "a layer blob was downloaded twice"
    assert len(set(layer_blobs)) == 3


def test_a_corrupt_layer_leaves_no_image_and_no_layer(engine, registry, tmp_path):
    image = build_image(str(tmp_path / "layout"), "v1", [busybox_layer(), {"etc": Dir(), "etc/x": b"x" * 5000}])
    registry.push(image, "test/corrupt-pull", "v1")
    # Corrupt the top layer's blob in the registry's own storage (same size, other bytes).
    top = image.layers[-1][0].digest
    data_path = os.path.join(registry.root, "docker/registry/v2/blobs/sha256", top[7:9], top[7:], "data")
    with open(data_path, "r+b") as f:
        f.seek(100)
        f.write(b"corrupted!")
    with pytest.raises(DigestMismatch):
        engine.pull(f"{registry.host}/test/corrupt-pull:v1")
    assert engine.images.list() == []
    chain_ids = [layer.chain_id for layer in engine.layers.list()]
    assert len(chain_ids) <= 1, "only the good bottom layer may stay"
    assert not [n for n in os.listdir(engine.layers.layers_dir) if n.startswith(".tmp-")]


def test_an_unsafe_layer_is_refused_as_such_not_as_a_failed_download(engine, registry, tmp_path):
    """The unpacking fails at the first entry while most of the blob is still to come: the download
    stops at once (its writer's error is not a network error to retry) and the cause is reported."""
    layer = {"../evil": b"x", "big": File(os.urandom(8 << 20))}
    image = build_image(str(tmp_path / "layout"), "v1", [busybox_layer(), layer])
    registry.push(image, "test/unsafe-pull", "v1")
    with pytest.raises(UnsafeArchive, match="'..' path component"):
        engine.pull(f"{registry.host}/test/unsafe-pull:v1")
    assert engine.images.list() == []
    assert not [n for n in os.listdir(engine.layers.layers_dir) if n.startswith(".tmp-")]


def test_a_cancelled_pull_leaves_no_image(engine, multilayer_image):
    with pytest.raises(Cancelled):
        engine.pull(multilayer_image.references[0], cancelled=lambda: True)
    assert engine.images.list() == []
    assert not [n for n in os.listdir(engine.layers.layers_dir) if n.startswith(".tmp-")]
