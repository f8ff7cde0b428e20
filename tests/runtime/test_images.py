"""Tests for runtime.images: records, references, rmi/prune rules, Docker API shapes, import, save, load.

Images are built in-process: a layer tar written with tarfile, gzipped into the blob store, applied
through the real LayerStore, and a config JSON on top.
"""

import gzip
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import tarfile

import pytest

from runtime import manifest as m
from runtime.digest import Digest, sha256_digest
from runtime.errors import DigestMismatch, InvalidArgument, InvalidState, NotFound, UnsafeArchive
from runtime.images import ImageStore, apply_changes
from runtime.layers import LayerStore, chain_ids
from runtime.store import Store
from tests import dockerspec

CREATED = "2023-11-14T22:13:20.123456789Z"


def make_tar(files: dict) -> bytes:
    """An uncompressed tar of path -> bytes, with fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1700000000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Env:
    """A fresh engine root with its blob store, layer store and image store."""

    def __init__(self, root):
        self.root = str(root)
        self.store = Store(self.root)
        self.layers = LayerStore(self.root)
        self.images = ImageStore(self.root, self.store, self.layers)

    def build(self, layer_files: list[dict], *, history=None, config=None, created=CREATED, extra=None):
        """Apply the layers (gzipped, blobs kept) and return (config bytes, layers, descriptors)."""
        tars = [make_tar(files) for files in layer_files]
        diff_ids = [sha256_digest(t) for t in tars]
        layers, descriptors = [], []
        parent = None
        for tar, diff_id, chain in zip(tars, diff_ids, chain_ids(diff_ids)):
            blob = gzip.compress(tar, mtime=0)
            digest = self.store.write_blob(blob)
            layers.append(self.layers.apply(io.BytesIO(blob), chain_id=chain, parent=parent,
                                            expected_diff_id=diff_id, digest=digest))
            descriptors.append({"digest": digest, "media_type": m.MEDIA_TYPE_OCI_LAYER_GZIP, "size": len(blob)})
            parent = chain
        doc = {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": config if config is not None else {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history if history is not None else [
                {"created": created, "created_by": f"layer {i}"} for i in range(len(tars))],
        }
        doc.update(extra or {})
        return json.dumps(doc, sort_keys=True).encode(), layers, descriptors

    def add(self, layer_files: list[dict], reference=None, *, manifest_digest=None, **kwargs):
        config, layers, descriptors = self.build(layer_files, **kwargs)
        return self.images.add(config, layers, layer_descriptors=descriptors, reference=reference,
                               manifest_digest=manifest_digest)


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path / "root")


BASE = {"etc/os-release": b"NAME=berth\n"}
APP = {"app/run": b"#!/bin/sh\necho app\n"}
MANIFEST_DIGEST = sha256_digest(b"a manifest")


class Pipe:
    """A non-seekable stream: read() or write() only, as a socket or an HTTP body is."""

    def __init__(self, data: bytes = b""):
        self._buf = io.BytesIO(data)

    def read(self, n=-1):
        return self._buf.read(n)

    def write(self, data):
        return self._buf.write(data)

    def getvalue(self):
        return self._buf.getvalue()


def blob_count(env) -> int:
    return len(list(env.store.blobs()))


#
# Adding and resolving
#


def test_it_adds_and_resolves_by_tag_id_prefix_and_digest(env):
    record = env.add([BASE, APP], "busybox", manifest_digest=MANIFEST_DIGEST)

    assert record.repo_tags == ["busybox:latest"]
    assert record.repo_digests == [f"busybox@{MANIFEST_DIGEST}"]
    assert record.size == len(BASE["etc/os-release"]) + len(APP["app/run"])
    assert record.created == CREATED and record.architecture == "amd64" and record.os == "linux"
    assert len(record.chain_ids) == 2 and record.chain_ids == chain_ids(record.diff_ids)
    assert [layer["media_type"] for layer in record.layers] == [m.MEDIA_TYPE_OCI_LAYER_GZIP] * 2
    assert record.short_id == record.id.hex[:12]
    assert env.store.has_blob(record.id)

    for name in ("busybox", "busybox:latest", "docker.io/library/busybox:latest", record.id, record.id.hex,
                 record.id.hex[:4], "sha256:" + record.id.hex[:8], f"busybox@{MANIFEST_DIGEST}"):
        assert env.images.resolve(name).id == record.id, name
    assert env.images.get(record.id).repo_tags == ["busybox:latest"]
    assert os.path.isfile(os.path.join(env.root, "images", f"{record.id.hex}.json"))


def test_it_says_no_such_image_as_docker_does(env):
    env.add([BASE], "busybox")
    with pytest.raises(NotFound, match=r"^No such image: alpine:latest$"):
        env.images.resolve("alpine")
    with pytest.raises(NotFound, match="No such image: busybox:1.36"):
        env.images.resolve("busybox:1.36")
    with pytest.raises(NotFound, match="No such image: sha256:" + "0" * 64):
        env.images.resolve("sha256:" + "0" * 64)
    with pytest.raises(NotFound, match="no such image"):
        env.images.get("sha256:" + "0" * 64)
    with pytest.raises(InvalidArgument):
        env.images.resolve("Not A Reference")


def test_an_image_pulled_by_digest_has_a_digest_reference_and_no_tag(env):
    record = env.add([BASE], f"busybox@{MANIFEST_DIGEST}")
    assert record.repo_tags == [] and record.repo_digests == [f"busybox@{MANIFEST_DIGEST}"]
    assert env.images.resolve(f"docker.io/library/busybox@{MANIFEST_DIGEST}").id == record.id
    assert [r.id for r in env.images.list(dangling=True)] == [record.id]
    assert env.images.untag(f"busybox@{MANIFEST_DIGEST}") == f"busybox@{MANIFEST_DIGEST}"
    assert env.images.get(record.id).repo_digests == []


def test_it_adds_the_same_image_twice_as_one(env):
    first = env.add([BASE], "one")
    again = env.add([BASE], "two")
    assert first.id == again.id
    assert again.repo_tags == ["one:latest", "two:latest"]
    assert len(env.images.list()) == 1


def test_it_refuses_a_config_whose_diff_ids_do_not_match_the_layers(env):
    config, layers, _ = env.build([BASE, APP])
    other_config, _, _ = env.build([APP])
    with pytest.raises(DigestMismatch):
        env.images.add(other_config, layers, reference="bad")
    with pytest.raises(DigestMismatch):
        env.images.add(config, list(reversed(layers)), reference="bad")
    with pytest.raises(InvalidArgument):
        env.images.add(b"{not json", layers, reference="bad")
    assert env.images.list() == []
    assert not env.store.has_blob(sha256_digest(other_config))
    with pytest.raises(NotFound):
        env.images.resolve("bad")


def test_an_ambiguous_id_prefix_is_an_invalid_argument(env):
    # Find two configs whose ids share their first 4 hex characters (birthday bound: a few hundred).
    seen = {}
    for n in range(100000):
        config = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}, "comment": str(n)}).encode()
        prefix = sha256_digest(config).hex[:4]
        if prefix in seen:
            break
        seen[prefix] = config
    a = env.images.add(seen[prefix], [])
    b = env.images.add(config, [])
    with pytest.raises(InvalidArgument, match="ambiguous"):
        env.images.resolve(prefix)
    assert env.images.resolve(a.id.hex[:12] if a.id.hex[:12] != b.id.hex[:12] else a.id).id == a.id


#
# Tags and listing
#


def test_it_moves_a_tag_and_the_old_image_becomes_dangling(env):
    old = env.add([BASE], "app:v1")
    new = env.add([BASE, APP], "app:v1")
    assert env.images.resolve("app:v1").id == new.id
    assert env.images.get(old.id).repo_tags == []
    assert [r.id for r in env.images.list(dangling=True)] == [old.id]
    assert [r.id for r in env.images.list(dangling=False)] == [new.id]

    tagged = env.images.tag(old.short_id, "127.0.0.1:5000/team/app:v2")
    assert tagged.repo_tags == ["127.0.0.1:5000/team/app:v2"]
    assert tagged.last_tag_time
    assert env.images.untag("127.0.0.1:5000/team/app:v2") == "127.0.0.1:5000/team/app:v2"
    with pytest.raises(NotFound):
        env.images.untag("127.0.0.1:5000/team/app:v2")
    with pytest.raises(InvalidArgument):
        env.images.tag(old.id, f"app@{MANIFEST_DIGEST}")


def test_it_lists_by_reference_glob_as_docker_does(env):
    busybox = env.add([BASE], "busybox:1.36")
    env.images.tag(busybox.id, "busybox:latest")
    app = env.add([BASE, APP], "team/app:v2")
    local = env.add([APP], "127.0.0.1:5000/team/app:v3")

    def ids(pattern):
        return {r.id for r in env.images.list(reference_filter=pattern)}

    assert ids("bus*") == {busybox.id}
    assert ids("busybox:1.*") == {busybox.id}
    assert ids("*:v2") == set()  # "*" does not cross "/" (Go's path.Match).
    assert ids("team/*") == {app.id}
    assert ids("*/*/app:v3") == {local.id}
    assert ids("nothing*") == set()
    assert len(env.images.list()) == 3


def test_concurrent_taggers_in_two_processes_lose_no_reference(env):
    record = env.add([BASE], "base")
    ctx = multiprocessing.get_context("fork")

    def tagger(prefix):
        images = Env(env.root).images
        for n in range(15):
            images.tag(record.id, f"{prefix}:{n}")

    procs = [ctx.Process(target=tagger, args=(p,)) for p in ("left", "right")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(env.images.get(record.id).repo_tags) == 31


#
# Removing
#


def test_removing_one_of_several_tags_only_untags(env):
    record = env.add([BASE], "busybox", manifest_digest=MANIFEST_DIGEST)
    env.images.tag(record.id, "busybox:1.36")
    assert env.images.remove("busybox:1.36") == [{"Untagged": "busybox:1.36"}]
    assert env.images.get(record.id).repo_tags == ["busybox:latest"]

    # The last tag of the repository takes its digest reference with it, then the image goes.
    answer = env.images.remove("busybox")
    assert answer[:3] == [{"Untagged": "busybox:latest"}, {"Untagged": f"busybox@{MANIFEST_DIGEST}"},
                          {"Deleted": record.id}]
    assert {"Deleted": record.chain_ids[0]} in answer
    assert env.images.list() == [] and env.layers.list() == [] and blob_count(env) == 0


def test_removing_by_id_with_tags_in_two_repositories_needs_force(env):
    record = env.add([BASE], "busybox")
    env.images.tag(record.id, "mirror/busybox")
    with pytest.raises(InvalidState, match=rf"conflict: unable to delete {record.short_id} \(must be forced\) "
                                           "- image is referenced in multiple repositories"):
        env.images.remove(record.short_id)
    answer = env.images.remove(record.short_id, force=True)
    assert {"Untagged": "busybox:latest"} in answer and {"Untagged": "mirror/busybox:latest"} in answer
    assert {"Deleted": record.id} in answer
    assert env.images.list() == []


def test_removing_by_id_with_tags_in_one_repository_untags_and_deletes(env):
    record = env.add([BASE], "busybox")
    answer = env.images.remove(record.id)
    assert answer[:2] == [{"Untagged": "busybox:latest"}, {"Deleted": record.id}]


def test_an_image_used_by_a_container_is_kept_unless_forced(env):
    record = env.add([BASE, APP], "app")
    used = lambda image_id: "c0ffee" * 10 if image_id == record.id else False  # noqa: E731
    with pytest.raises(InvalidState, match=r'unable to remove repository reference "app" \(must force\) '
                                           r"- container c0ffeec0ffee is using its referenced image"):
        env.images.remove("app", in_use=used)
    with pytest.raises(InvalidState, match="image is being used by container c0ffeec0ffee"):
        env.images.remove(record.id, in_use=used)
    assert env.images.resolve("app").id == record.id

    # Forced: the image goes, the layers its container still stands on stay.
    top = record.chain_ids[-1]
    answer = env.images.remove("app", force=True, in_use=used, layer_in_use=lambda chain: chain == top)
    assert {"Deleted": record.id} in answer
    assert not any(item.get("Deleted") in record.chain_ids for item in answer)
    assert [layer.chain_id for layer in env.layers.list()] == sorted(record.chain_ids)


def test_layers_shared_by_two_images_survive_the_first_removal(env):
    first = env.add([BASE], "base")
    second = env.add([BASE, APP], "app")
    shared_blob = first.layers[0]["digest"]
    assert second.layers[0]["digest"] == shared_blob

    answer = env.images.remove("base")
    assert answer == [{"Untagged": "base:latest"}, {"Deleted": first.id}]
    assert env.layers.exists(first.chain_ids[0]) and env.store.has_blob(shared_blob)
    assert not env.store.has_blob(first.id)

    answer = env.images.remove("app")
    assert [item for item in answer if "Deleted" in item] == [
        {"Deleted": second.id}, {"Deleted": second.chain_ids[1]}, {"Deleted": second.chain_ids[0]}]
    assert env.layers.list() == [] and blob_count(env) == 0
    assert sorted(os.listdir(os.path.join(env.root, "images"))) == ["lock", "refs.json"]


def test_prune_deletes_dangling_images_and_with_all_unused_ones(env):
    old = env.add([BASE], "app", manifest_digest=MANIFEST_DIGEST)
    new = env.add([BASE, APP], "app")
    kept = env.add([{"kept": b"1"}], "kept")
    result = env.images.prune()
    assert result["ImagesDeleted"][0] == {"Untagged": f"app@{MANIFEST_DIGEST}"}
    assert {"Deleted": old.id} in result["ImagesDeleted"]
    assert result["SpaceReclaimed"] > 0
    dockerspec.validate(result, "/images/prune", "post")
    assert {r.id for r in env.images.list()} == {new.id, kept.id}
    assert env.layers.exists(old.chain_ids[0])  # Still part of the new image.

    result = env.images.prune(all=True, in_use=lambda image_id: image_id == kept.id)
    assert {"Untagged": "app:latest"} in result["ImagesDeleted"]
    assert [r.id for r in env.images.list()] == [kept.id]
    assert env.images.prune() == {"ImagesDeleted": None, "SpaceReclaimed": 0}


#
# Docker API shapes
#


def test_history_inspect_and_summary_match_the_engine_api(env):
    history = [
        {"created": "2023-11-14T22:13:20Z", "created_by": "ADD rootfs /", "comment": "base"},
        {"created": "2023-11-14T22:13:21Z", "created_by": 'CMD ["sh"]', "empty_layer": True},
        {"created": "2023-11-14T22:13:22.5Z", "created_by": "COPY app /app"},
    ]
    config = {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Labels": {"org.example": "yes"},
              "ExposedPorts": {"80/tcp": {}}, "WorkingDir": "/app"}
    record = env.add([BASE, APP], "team/app:v2", manifest_digest=MANIFEST_DIGEST, history=history,
                     config=config, extra={"author": "berth", "variant": "v8"})

    entries = env.images.history("team/app:v2")
    dockerspec.validate(entries, "/images/{name}/history")
    assert [e["CreatedBy"] for e in entries] == ["COPY app /app", 'CMD ["sh"]', "ADD rootfs /"]
    assert [e["Id"] for e in entries] == [record.id, "<missing>", "<missing>"]
    assert entries[0]["Tags"] == ["team/app:v2"]
    assert [e["Size"] for e in entries] == [len(APP["app/run"]), 0, len(BASE["etc/os-release"])]
    assert entries[0]["Created"] == 1700000002 and entries[2]["Comment"] == "base"

    answer = env.images.inspect(record.short_id)
    dockerspec.validate(answer, "/images/{name}/json")
    assert answer["Id"] == record.id and answer["RepoTags"] == ["team/app:v2"]
    assert answer["RepoDigests"] == [f"team/app@{MANIFEST_DIGEST}"]
    assert answer["Config"]["Env"] == ["PATH=/bin"] and answer["Config"]["WorkingDir"] == "/app"
    assert answer["Config"]["ExposedPorts"] == {"80/tcp": {}} and answer["Author"] == "berth"
    assert answer["RootFS"] == {"Type": "layers", "Layers": record.diff_ids}
    assert answer["Variant"] == "v8" and answer["Size"] == record.size
    data = answer["GraphDriver"]["Data"]
    assert answer["GraphDriver"]["Name"] == "overlay2"
    assert data["UpperDir"] == env.layers.get(record.chain_ids[1]).path
    assert data["LowerDir"] == env.layers.get(record.chain_ids[0]).path
    assert answer["Metadata"]["LastTagTime"] != "0001-01-01T00:00:00Z"

    summary = env.images.summary(record)
    dockerspec.validate([summary], "/images/json")
    assert summary["Created"] == 1700000000 and summary["Labels"] == {"org.example": "yes"}
    dangling = env.add([{"x": b"x"}])
    assert env.images.summary(dangling)["RepoTags"] == ["<none>:<none>"]
    dockerspec.validate([env.images.summary(r) for r in env.images.list()], "/images/json")


#
# Import
#


def test_import_with_changes_then_inspect(env):
    tar = make_tar({"bin/hello": b"#!/bin/sh\necho hello\n", "etc/motd": b"hi\n"})
    changes = ["ENV GREETING=hello NAME=berth", 'CMD ["/bin/hello"]', "WORKDIR /srv", "WORKDIR data",
               "USER nobody", "EXPOSE 80 53/udp", 'LABEL "com.example.vendor"="ACME" version=1',
               "VOLUME /data", "STOPSIGNAL SIGINT"]
    record = env.images.import_tar(io.BytesIO(gzip.compress(tar)), changes=changes, message="from a tarball",
                                   reference="imported:v1", platform="linux/arm64/v8")
    answer = env.images.inspect("imported:v1")
    dockerspec.validate(answer, "/images/{name}/json")
    config = answer["Config"]
    assert config["Env"] == ["GREETING=hello", "NAME=berth"]
    assert config["Cmd"] == ["/bin/hello"] and config["WorkingDir"] == "/srv/data"
    assert config["User"] == "nobody" and config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert config["Labels"] == {"com.example.vendor": "ACME", "version": "1"}
    assert config["Volumes"] == {"/data": {}} and config["StopSignal"] == "SIGINT"
    assert answer["Comment"] == "from a tarball"
    assert (answer["Architecture"], answer["Os"], answer["Variant"]) == ("arm64", "linux", "v8")
    assert record.diff_ids == [sha256_digest(tar)]
    assert env.images.history(record.id)[0]["Comment"] == "from a tarball"
    with open(os.path.join(env.layers.get(record.chain_ids[0]).path, "etc", "motd"), "rb") as f:
        assert f.read() == b"hi\n"


def test_import_changes_parse_like_a_dockerfile():
    assert apply_changes({}, ["CMD echo hi"])["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert apply_changes({"Env": ["A=1"]}, ["ENV A 2"])["Env"] == ["A=2"]
    assert apply_changes({}, ['ENTRYPOINT ["tini", "--"]'])["Entrypoint"] == ["tini", "--"]
    assert apply_changes({}, ["ONBUILD RUN make"])["OnBuild"] == ["RUN make"]
    assert apply_changes({}, ["expose 8000-8001"])["ExposedPorts"] == {"8000/tcp": {}, "8001/tcp": {}}
    for bad in ("RUN make", "COPY . /", "ENV", "EXPOSE 99999", "ONBUILD FROM x"):
        with pytest.raises(InvalidArgument):
            apply_changes({}, [bad])


def test_import_refuses_a_tar_escape_and_leaves_nothing(env):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in ("ok.txt", "../escaped.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(UnsafeArchive):
        env.images.import_tar(io.BytesIO(buf.getvalue()), reference="evil")
    assert not os.path.exists(os.path.join(env.root, "escaped.txt"))
    assert not os.path.exists(os.path.join(env.layers.layers_dir, "escaped.txt"))
    assert env.images.list() == [] and env.layers.list() == [] and blob_count(env) == 0
    assert os.listdir(env.store.tmp_root) == []
    with pytest.raises(InvalidArgument):
        env.images.import_tar(io.BytesIO(make_tar(BASE)), changes=["RUN rm -rf /"])


#
# Save and load
#


def read_archive(data: bytes) -> dict:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {member.name: tf.extractfile(member).read() for member in tf if member.isfile()}


def test_save_then_load_into_a_fresh_root_gives_the_same_image(env, tmp_path):
    base = env.add([BASE], "busybox:1.36")
    env.images.tag(base.id, "busybox:latest")
    app = env.add([BASE, APP], "team/app:v2")
    out = Pipe()
    env.images.save(["busybox", "team/app:v2"], out)
    files = read_archive(out.getvalue())

    manifest = json.loads(files["manifest.json"])
    assert sorted(tuple(entry["RepoTags"]) for entry in manifest) == [
        ("busybox:1.36", "busybox:latest"), ("team/app:v2",)]
    for entry in manifest:
        config = json.loads(files[entry["Config"]])
        assert [sha256_digest(files[p]) for p in entry["Layers"]] == config["rootfs"]["diff_ids"]
    index = json.loads(files["index.json"])
    assert {e["annotations"]["io.containerd.image.name"] for e in index["manifests"]} == {
        "docker.io/library/busybox:1.36", "docker.io/library/busybox:latest", "docker.io/team/app:v2"}
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads(files["repositories"])["busybox"]["latest"] == base.diff_ids[-1].hex

    fresh = Env(tmp_path / "fresh")
    lines = fresh.images.load(Pipe(out.getvalue()))
    assert sorted(lines) == ["Loaded image: busybox:1.36", "Loaded image: busybox:latest",
                             "Loaded image: team/app:v2"]
    assert fresh.images.resolve("busybox:latest").id == base.id
    loaded = fresh.images.resolve("team/app:v2")
    assert loaded.id == app.id and loaded.chain_ids == app.chain_ids and loaded.size == app.size
    with open(os.path.join(fresh.layers.get(app.chain_ids[1]).path, "app", "run"), "rb") as f:
        assert f.read() == APP["app/run"]

    # The loaded image saves again to the same layer bytes (its blobs were kept).
    again = io.BytesIO()
    fresh.images.save([app.id], again)
    entry = json.loads(read_archive(again.getvalue())["manifest.json"])[0]
    assert entry["RepoTags"] is None
    assert fresh.images.load(io.BytesIO(again.getvalue())) == [f"Loaded image ID: {app.id}"]


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_saved_archives_are_read_by_skopeo_and_skopeo_oci_archives_load(env, tmp_path):
    record = env.add([BASE, APP], "team/app:v2")
    saved = tmp_path / "saved.tar"
    with open(saved, "wb") as f:
        env.images.save(["team/app:v2"], f)
    inspected = subprocess.run(["skopeo", "inspect", "--raw", f"docker-archive:{saved}"],
                               capture_output=True, text=True, timeout=60)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["config"]["digest"] == record.id
    config = subprocess.run(["skopeo", "inspect", "--config", "--raw", f"oci-archive:{saved}:v2"],
                            capture_output=True, timeout=60)
    assert config.returncode == 0, config.stderr
    assert sha256_digest(config.stdout) == record.id

    converted = tmp_path / "converted.tar"
    copy = subprocess.run(["skopeo", "copy", "--dest-compress", f"docker-archive:{saved}",
                           f"oci-archive:{converted}:docker.io/team/app:v3"],
                          capture_output=True, text=True, timeout=60)
    assert copy.returncode == 0, copy.stderr
    fresh = Env(tmp_path / "fresh")
    assert fresh.images.load(open(converted, "rb")) == ["Loaded image: team/app:v3"]
    # skopeo re-serialises the config when it converts, so the id changes; the layers do not.
    assert fresh.images.resolve("team/app:v3").diff_ids == record.diff_ids


def oci_layout_tar(images: list[tuple[bytes, list[bytes], str | None]]) -> bytes:
    """A tar of an OCI image layout: per image (config, gzipped layers, name for the annotation)."""
    blobs, entries = {}, []
    for config, layers, name in images:
        blobs[sha256_digest(config)] = config
        descs = []
        for layer in layers:
            blobs[sha256_digest(layer)] = layer
            descs.append({"mediaType": m.MEDIA_TYPE_OCI_LAYER_GZIP, "digest": sha256_digest(layer),
                          "size": len(layer)})
        manifest = json.dumps({"schemaVersion": 2, "mediaType": m.MEDIA_TYPE_OCI_MANIFEST, "config": {
            "mediaType": m.MEDIA_TYPE_OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
            "layers": descs}).encode()
        blobs[sha256_digest(manifest)] = manifest
        entry = {"mediaType": m.MEDIA_TYPE_OCI_MANIFEST, "digest": sha256_digest(manifest), "size": len(manifest)}
        if name:
            entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        entries.append(entry)
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "manifests": entries}).encode()}
    files.update({f"blobs/sha256/{Digest(d).hex}": data for d, data in blobs.items()})
    return make_tar(files)


def config_for(tars: list[bytes]) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "created": CREATED,
                       "rootfs": {"type": "layers", "diff_ids": [sha256_digest(t) for t in tars]}}).encode()


def test_it_loads_an_oci_image_layout(env):
    tars = [make_tar(BASE), make_tar(APP)]
    config = config_for(tars)
    layout = oci_layout_tar([(config, [gzip.compress(t, mtime=0) for t in tars], "example.com/team/app:v1"),
                             (config_for(tars[:1]), [gzip.compress(tars[0], mtime=0)], "latest")])
    lines = env.images.load(io.BytesIO(gzip.compress(layout)))
    assert lines == ["Loaded image: example.com/team/app:v1",
                     f"Loaded image ID: {sha256_digest(config_for(tars[:1]))}"]
    record = env.images.resolve("example.com/team/app:v1")
    assert record.id == sha256_digest(config)
    assert record.repo_digests and record.repo_digests[0].startswith("example.com/team/app@sha256:")
    assert [layer["media_type"] for layer in record.layers] == [m.MEDIA_TYPE_OCI_LAYER_GZIP] * 2
    assert len(env.images.list()) == 2


def test_a_load_with_a_mismatched_diff_id_leaves_nothing_behind(env):
    good, bad = make_tar(BASE), make_tar(APP)
    config = json.dumps({"os": "linux", "architecture": "amd64", "rootfs": {
        "type": "layers", "diff_ids": [sha256_digest(good), sha256_digest(b"something else")]}}).encode()
    files = {
        "aaa/layer.tar": good,
        "bbb/layer.tar": bad,
        f"{sha256_digest(config).hex}.json": config,
        "manifest.json": json.dumps([{"Config": f"{sha256_digest(config).hex}.json", "RepoTags": ["bad:latest"],
                                      "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]).encode(),
    }
    with pytest.raises(DigestMismatch):
        env.images.load(io.BytesIO(make_tar(files)))
    assert env.images.list() == [] and env.layers.list() == [] and blob_count(env) == 0
    assert os.listdir(env.store.tmp_root) == []
    assert not os.path.exists(os.path.join(env.root, "images", "refs.json"))
    with pytest.raises(NotFound):
        env.images.resolve("bad")


def test_load_refuses_archives_that_escape_or_are_not_images(env):
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tf:
        info = tarfile.TarInfo("../manifest.json")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"[]"))
    with pytest.raises(UnsafeArchive):
        env.images.load(io.BytesIO(evil.getvalue()))
    with pytest.raises(InvalidArgument):
        env.images.load(io.BytesIO(make_tar({"hello.txt": b"hi"})))
    with pytest.raises(InvalidArgument):
        env.images.load(io.BytesIO(b"not a tar at all" * 100))
    assert os.listdir(env.store.tmp_root) == []


def test_it_loads_the_legacy_docker_archive_layout_with_linked_layers(env):
    """Docker before 25 wrote <v1-id>/layer.tar, with a symlink where two images share a layer."""
    base, app = make_tar(BASE), make_tar(APP)
    one, two = config_for([base]), config_for([base, app])
    files = {"1111/layer.tar": base, "3333/layer.tar": app, "one.json": one, "two.json": two,
             "manifest.json": json.dumps([
                 {"Config": "one.json", "RepoTags": ["one:latest"], "Layers": ["1111/layer.tar"]},
                 {"Config": "two.json", "RepoTags": ["two:latest"], "Layers": ["2222/layer.tar", "3333/layer.tar"]},
             ]).encode()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(make_tar(files))) as src, tarfile.open(fileobj=buf, mode="w") as tf:
        for member in src:
            tf.addfile(member, src.extractfile(member))
        link = tarfile.TarInfo("2222/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../1111/layer.tar"
        tf.addfile(link)
    assert env.images.load(io.BytesIO(buf.getvalue())) == ["Loaded image: one:latest", "Loaded image: two:latest"]
    assert env.images.resolve("two").diff_ids == [sha256_digest(base), sha256_digest(app)]
    assert len(env.layers.list()) == 2

    # Loading another image under an existing tag moves it, and says so as Docker does.
    other = config_for([app])
    archive = make_tar({"app.tar": app, "other.json": other, "manifest.json": json.dumps(
        [{"Config": "other.json", "RepoTags": ["one:latest"], "Layers": ["app.tar"]}]).encode()})
    old = env.images.resolve("one").id
    assert env.images.load(io.BytesIO(archive)) == [
        f"The image one:latest already exists, renaming the old one with ID {old} to empty string",
        "Loaded image: one:latest"]
    assert env.images.get(old).repo_tags == []


def test_save_refuses_unknown_images_and_unreproducible_layers(env):
    with pytest.raises(NotFound):
        env.images.save(["nothing:here"], io.BytesIO())
    # A layer whose blob is gone and whose directory packs to other bytes cannot be saved faithfully.
    record = env.add([BASE], "base")
    env.store.delete_blob(record.layers[0]["digest"])
    with pytest.raises(InvalidState, match="cannot be reproduced"):
        env.images.save(["base"], io.BytesIO())
