"""Pushing from a real store to a real docker-registry: layers skipped, mounted or uploaded, then a manifest.

Each test pushes to its own repository (push/<name>) of the session's registries, so tests do not
see each other's blobs except through the mounts they mean to make.
"""

import io
import json
import os
import subprocess
import tarfile

import pytest

from runtime import manifest as m
from runtime.archive import pack_dir
from runtime.config import RuntimeConfig
from runtime.digest import sha256_digest
from runtime.engine import Engine
from runtime.errors import Cancelled, InvalidArgument, InvalidState, NotFound, Unauthorized


@pytest.fixture
def engine(tmp_path):
    engine = Engine(RuntimeConfig(root=str(tmp_path / "root")))
    engine.start()
    return engine


@pytest.fixture
def fresh_engine(tmp_path):
    """A second engine with its own empty root, to pull back what the first one pushed."""
    engine = Engine(RuntimeConfig(root=str(tmp_path / "fresh")))
    engine.start()
    return engine


def statuses(events):
    return [e.get("status", "") for e in events]


def layer_statuses(events, status):
    return [e["id"] for e in events if e.get("status") == status]


def only_named(engine, record, reference):
    """Give the image ``reference`` as its only name, so no mount source is known to the push."""
    engine.images.tag(record.id, reference)
    for name in record.repo_tags + record.repo_digests:
        engine.images.untag(name)
    return engine.images.resolve(reference)


def pushed_manifest(registry, repository, tag):
    data, media_type, digest = registry.client().get_manifest(repository, tag)
    return m.parse_manifest(data, media_type), digest, data


def import_tar_of(engine, tar: bytes, reference: str):
    return engine.images.import_tar(io.BytesIO(tar), reference=reference)


def make_tar(files: dict) -> bytes:
    """A plain tar of path -> bytes with fixed metadata and no directory entries (pack_dir adds them)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def packed_tar(tmp_path, files: dict) -> bytes:
    """The tar ``pack_dir`` makes of a directory holding ``files``: what a commit would produce."""
    root = tmp_path / "packed"
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1700000000, 1700000000))
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir():
            os.utime(path, (1700000000, 1700000000))
    buf = io.BytesIO()
    pack_dir(str(root), buf)
    return buf.getvalue()


#
# Layers: already there, mounted, uploaded
#


def test_it_mounts_layers_from_the_repository_the_image_came_from(engine, registry, busybox_image):
    record = engine.pull(busybox_image.references[0])
    target = f"{registry.host}/push/mounted:latest"
    engine.images.tag(record.id, target)
    events = []
    digest = engine.push(target, progress=events.append)

    layer = busybox_image.layers[0][0]
    diff_id = busybox_image.diff_ids[0]
    assert events[0] == {"status": f"The push refers to repository [{registry.host}/push/mounted]"}
    assert {"status": "Preparing", "progressDetail": {}, "id": diff_id[7:19]} in events
    assert {"status": "Mounted from library/busybox", "progressDetail": {}, "id": diff_id[7:19]} in events
    assert "Pushing" not in statuses(events)
    manifest, registry_digest, data = pushed_manifest(registry, "push/mounted", "latest")
    assert registry_digest == digest
    assert events[-2] == {"status": f"latest: digest: {digest} size: {len(data)}"}
    assert events[-1] == {"progressDetail": {}, "aux": {"Tag": "latest", "Digest": digest, "Size": len(data)}}
    assert manifest.media_type == m.MEDIA_TYPE_DOCKER_MANIFEST
    assert [(d.digest, d.size, d.media_type) for d in manifest.layers] == [
        (layer.digest, layer.size, layer.media_type)]
    assert (manifest.config.digest, manifest.config.media_type) == (record.id, m.MEDIA_TYPE_DOCKER_CONFIG)
    assert f"{registry.host}/push/mounted@{digest}" in engine.images.get(record.id).repo_digests


def test_a_second_push_finds_every_layer_already_there(engine, registry, multilayer_image):
    record = engine.pull(multilayer_image.references[0])
    target = f"{registry.host}/push/twice:v1"
    engine.images.tag(record.id, target)
    first = engine.push(target)
    events = []
    second = engine.push(target, progress=events.append)
    assert second == first
    ids = sorted(d[7:19] for d in multilayer_image.diff_ids)
    assert sorted(layer_statuses(events, "Layer already exists")) == ids
    assert not {"Pushing", "Pushed"} & set(statuses(events))
    assert not [s for s in statuses(events) if s.startswith("Mounted from")]

    # Blobs gone from the store are not needed when the registry has them.
    for layer in record.layers:
        engine.store.delete_blob(layer["digest"])
    events = []
    assert engine.push(target, progress=events.append) == first
    assert sorted(layer_statuses(events, "Layer already exists")) == ids


def test_it_uploads_to_a_fresh_repository_and_a_fresh_engine_pulls_the_same_image(
        engine, fresh_engine, registry, multilayer_image):
    pulled = engine.pull(multilayer_image.references[0])
    target = f"{registry.host}/push/fresh:v1"
    record = only_named(engine, pulled, target)
    events = []
    digest = engine.push(target, progress=events.append)

    ids = [d[7:19] for d in multilayer_image.diff_ids]
    assert sorted(layer_statuses(events, "Pushed")) == sorted(ids)
    pushing = [e for e in events if e.get("status") == "Pushing"]
    assert pushing and all(e["id"] in ids for e in pushing)
    last = [e for e in pushing if e["id"] == ids[0]][-1]
    assert last["progressDetail"] == {"current": multilayer_image.layers[0][0].size,
                                      "total": multilayer_image.layers[0][0].size}
    assert last["progress"].startswith("[" + "=" * 50 + "]")

    back = fresh_engine.pull(target)
    assert back.id == record.id
    assert back.manifest_digest == digest
    assert back.diff_ids == record.diff_ids
    assert [layer["digest"] for layer in back.layers] == [d.digest for d, _ in multilayer_image.layers]


def test_skopeo_reads_what_berth_pushed(engine, registry, multilayer_image):
    record = engine.pull(multilayer_image.references[0])
    target = f"{registry.host}/push/skopeo:v2"
    engine.images.tag(record.id, target)
    digest = engine.push(target)
    result = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{target}"],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["Digest"] == digest
    assert answer["Layers"] == [d.digest for d, _ in multilayer_image.layers]
    assert answer["Architecture"] == record.architecture and answer["Os"] == "linux"


#
# Credentials
#


def test_it_pushes_to_a_basic_auth_registry_with_credentials_only(engine, auth_registry, busybox_image):
    record = engine.pull(busybox_image.references[0])
    target = f"{auth_registry.host}/push/basic:latest"
    engine.images.tag(record.id, target)
    with pytest.raises(Unauthorized):
        engine.push(target)
    events = []
    digest = engine.push(target, credentials=auth_registry.credentials, progress=events.append)
    # The image came from another registry: nothing to mount from, the layer is uploaded.
    assert "Pushed" in statuses(events)
    _, registry_digest, _ = pushed_manifest(auth_registry, "push/basic", "latest")
    assert registry_digest == digest


def test_it_pushes_to_a_token_auth_registry_with_credentials(engine, token_registry, busybox_image):
    record = engine.pull(busybox_image.references[0])
    target = f"{token_registry.host}/push/token:latest"
    engine.images.tag(record.id, target)
    digest = engine.push(target, credentials=token_registry.credentials)
    _, registry_digest, _ = pushed_manifest(token_registry, "push/token", "latest")
    assert registry_digest == digest
    assert any("push" in str(r["query"].get("scope")) for r in token_registry.authority.requests)


#
# Images made here: no compressed blob in the store
#


def test_an_imported_image_is_pushed_gzipped_and_pulls_back_with_the_same_diff_ids(
        engine, fresh_engine, registry):
    tar = make_tar({"etc/motd": b"imported\n", "srv/data.bin": os.urandom(5_000_000)})
    target = f"{registry.host}/push/imported:latest"
    record = import_tar_of(engine, tar, target)
    plain_blob = record.layers[0]["digest"]
    assert record.layers[0]["media_type"] == m.MEDIA_TYPE_OCI_LAYER  # the import kept the tar as it was
    events = []
    digest = engine.push(target, progress=events.append)
    assert "Pushed" in statuses(events)

    manifest, _, _ = pushed_manifest(registry, "push/imported", "latest")
    assert [d.media_type for d in manifest.layers] == [m.MEDIA_TYPE_DOCKER_LAYER_GZIP]
    # The record now names the gzip blob, and the plain tar nobody refers to is gone.
    after = engine.images.get(record.id)
    assert after.layers[0]["digest"] == manifest.layers[0].digest
    assert after.layers[0]["media_type"] == m.MEDIA_TYPE_DOCKER_LAYER_GZIP
    assert engine.store.has_blob(manifest.layers[0].digest) and not engine.store.has_blob(plain_blob)

    back = fresh_engine.pull(target)
    assert back.diff_ids == record.diff_ids == [sha256_digest(tar)]
    assert back.id == record.id and back.manifest_digest == digest

    # Pushed again, the blob the record now names is found in the registry: nothing is compressed again.
    events = []
    assert engine.push(target, progress=events.append) == digest
    assert "Layer already exists" in statuses(events)


def test_a_layer_with_only_its_directory_is_packed_again(engine, fresh_engine, registry, tmp_path):
    tar = packed_tar(tmp_path, {"app/run.sh": b"#!/bin/sh\necho hi\n", "app/conf/a.conf": b"a=1\n"})
    target = f"{registry.host}/push/committed:latest"
    record = import_tar_of(engine, tar, target)
    # As after a commit: the layer directory is all there is.
    engine.store.delete_blob(record.layers[0]["digest"])
    digest = engine.push(target)
    back = fresh_engine.pull(target)
    assert back.diff_ids == record.diff_ids and back.manifest_digest == digest


def test_a_layer_that_cannot_be_reproduced_is_refused_and_nothing_is_tagged(engine, registry):
    target = f"{registry.host}/push/unreproducible:latest"
    # Without directory entries this tar is not what packing its directory gives.
    record = import_tar_of(engine, make_tar({"etc/motd": b"hi\n"}), target)
    engine.store.delete_blob(record.layers[0]["digest"])
    with pytest.raises(InvalidState, match="cannot be reproduced"):
        engine.push(target)
    with pytest.raises(NotFound):
        registry.client().get_manifest("push/unreproducible", "latest")
    assert not os.listdir(engine.store.ingest_dir)


def test_a_push_cancelled_while_compressing_leaves_the_record_and_store_as_they_were(engine, registry):
    target = f"{registry.host}/push/cancelled-gzip:latest"
    record = import_tar_of(engine, make_tar({"srv/data.bin": os.urandom(2_000_000)}), target)
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(Cancelled):
        engine.push(target, cancelled=cancelled)
    assert engine.images.get(record.id).layers == record.layers
    assert engine.store.has_blob(record.layers[0]["digest"])
    assert not os.listdir(engine.store.ingest_dir)
    with pytest.raises(NotFound):
        registry.client().get_manifest("push/cancelled-gzip", "latest")


#
# Refusals and cancellation
#


def test_a_missing_image_is_not_found_in_dockers_words(engine, registry, busybox_image):
    wording = rf"^An image does not exist locally with the tag: {registry.host}/push/none$"
    with pytest.raises(NotFound, match=wording):
        engine.push(f"{registry.host}/push/none:latest")
    record = engine.pull(busybox_image.references[0])
    engine.images.tag(record.id, f"{registry.host}/push/some:v1")
    with pytest.raises(NotFound, match=rf"^tag does not exist: {registry.host}/push/some:v2$"):
        engine.push(f"{registry.host}/push/some:v2")


def test_a_digest_reference_is_refused(engine, registry, busybox_image):
    record = engine.pull(busybox_image.references[0])
    with pytest.raises(InvalidArgument, match="cannot push a digest reference"):
        engine.push(f"{registry.host}/library/busybox@{record.repo_digests[0].split('@')[1]}")


def test_a_cancelled_push_puts_no_manifest(engine, registry, multilayer_image):
    pulled = engine.pull(multilayer_image.references[0])
    target = f"{registry.host}/push/cancelled:latest"
    only_named(engine, pulled, target)
    events = []

    def cancelled():
        return "Pushing" in statuses(events)

    with pytest.raises(Cancelled):
        engine.push(target, progress=events.append, cancelled=cancelled)
    with pytest.raises(NotFound):
        registry.client().get_manifest("push/cancelled", "latest")
    assert not [d for d in engine.images.resolve(target).repo_digests if "push/cancelled@" in d]

