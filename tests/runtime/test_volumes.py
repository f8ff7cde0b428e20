"""Tests for runtime.volumes: named volumes of the local driver, and their first fill from an image."""

import io
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from runtime.digest import sha256_digest
from runtime.errors import InvalidArgument, InvalidState, NotFound
from runtime.layers import LayerStore, chain_id_of
from runtime.rootfs import mount_rootfs, unmount_rootfs
from runtime.volumes import VolumeStore, populate_from_image
from tests.support.registry import Dir, File, Symlink, make_layer_tar


@pytest.fixture
def volumes(tmp_path):
    return VolumeStore(str(tmp_path / "root"))


def test_create_get_and_the_docker_volume_shape(volumes, tmp_path):
    volume = volumes.create("data", labels={"team": "core"})
    assert volume == {
        "CreatedAt": volume["CreatedAt"],
        "Driver": "local",
        "Labels": {"team": "core"},
        "Mountpoint": str(tmp_path / "root" / "volumes" / "data" / "_data"),
        "Name": "data",
        "Options": None,
        "Scope": "local",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", volume["CreatedAt"])
    assert os.path.isdir(volume["Mountpoint"])
    assert stat.S_IMODE(os.stat(volume["Mountpoint"]).st_mode) == 0o755
    assert volumes.get("data") == volume
    # Creating it again returns it as it is (Docker's create is idempotent).
    assert volumes.create("data", labels={"other": "x"}) == volume


def test_a_volume_without_a_name_gets_64_hex_digits(volumes):
    volume = volumes.create()
    assert re.fullmatch(r"[0-9a-f]{64}", volume["Name"])


def test_invalid_names_are_refused_in_dockers_words(volumes):
    with pytest.raises(InvalidArgument, match="too short"):
        volumes.create("a")
    for bad in ("../x", "a/b", "-x", ".x", "x y"):
        with pytest.raises(InvalidArgument, match="includes invalid characters for a local volume name"):
            volumes.create(bad)
    with pytest.raises(NotFound, match="^get nope: no such volume$"):
        volumes.get("nope")
    with pytest.raises(NotFound):
        volumes.get("../../etc")


def test_list_filters_by_name_label_driver_and_dangling(volumes):
    volumes.create("web-data", labels={"app": "web", "tier": "front"})
    volumes.create("db-data", labels={"app": "db"})
    volumes.create("cache")
    used = {"db-data"}

    def names(filters):
        return [v["Name"] for v in volumes.list(filters, in_use=lambda n: n in used)]

    assert names(None) == ["cache", "db-data", "web-data"]
    assert names({"name": ["data"]}) == ["db-data", "web-data"]
    assert names({"name": ["^web"]}) == ["web-data"]
    assert names({"label": ["app"]}) == ["db-data", "web-data"]
    assert names({"label": ["app=web", "tier=front"]}) == ["web-data"]
    assert names({"label": {"app=db": True}}) == ["db-data"]
    assert names({"dangling": ["true"]}) == ["cache", "web-data"]
    assert names({"dangling": ["false"]}) == ["db-data"]
    assert names({"driver": ["local"]}) == ["cache", "db-data", "web-data"]
    with pytest.raises(InvalidArgument, match="invalid filter 'colour'"):
        volumes.list({"colour": ["red"]})


def test_remove_refuses_a_volume_in_use_even_with_force(volumes):
    volume = volumes.create("data")
    with pytest.raises(InvalidState, match=r"^remove data: volume is in use - \[abc123\]$"):
        volumes.remove("data", force=True, in_use=lambda n: ["abc123"])
    assert os.path.isdir(volume["Mountpoint"])
    volumes.remove("data", in_use=lambda n: [])
    assert not os.path.exists(volume["Mountpoint"])
    assert volumes.list() == []
    with pytest.raises(NotFound):
        volumes.remove("data")
    volumes.remove("data", force=True)  # force: a missing volume is not an error
    assert not [n for n in os.listdir(volumes.volumes_dir) if n.startswith(".tmp-")]


def test_prune_removes_unused_volumes_and_says_how_much_it_freed(volumes):
    keep = volumes.create("keep")
    gone = volumes.create("gone", labels={"tmp": "1"})
    labelled = volumes.create("labelled", labels={"keep": "yes"})
    with open(os.path.join(gone["Mountpoint"], "f"), "wb") as f:
        f.write(b"x" * 1000)
    os.link(os.path.join(gone["Mountpoint"], "f"), os.path.join(gone["Mountpoint"], "hardlink"))

    report = volumes.prune(lambda n: n == "keep", filters={"label!": ["keep=yes"]})

    assert report == {"VolumesDeleted": ["gone"], "SpaceReclaimed": 1000}
    assert [v["Name"] for v in volumes.list()] == ["keep", "labelled"]
    assert os.path.isdir(keep["Mountpoint"]) and os.path.isdir(labelled["Mountpoint"])


def test_ensure_creates_on_first_use_and_is_safe_from_many_threads(volumes):
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: volumes.ensure("shared"), range(16)))
    assert len(set(paths)) == 1 and os.path.isdir(paths[0])
    assert volumes.mountpoint("shared") == paths[0] == volumes.get("shared")["Mountpoint"]
    assert [v["Name"] for v in volumes.list()] == ["shared"]
    assert not [n for n in os.listdir(volumes.volumes_dir) if n.startswith(".tmp-")]


#
# populate_from_image
#


IMAGE = make_layer_tar({
    "data": Dir(0o750),
    "data/config": File(b"key=value\n", 0o640, uid=1000, gid=1000),
    "data/sub": Dir(),
    "data/sub/deep": b"deep\n",
    "data/link": Symlink("/etc/shadow"),
    "data/up": Symlink("../../../../tmp"),
    "etc": Dir(),
    "etc/app.conf": b"conf\n",
    "tmp-link": Symlink("/tmp"),
    "file-target": b"not a dir\n",
})


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "root"
    layers = LayerStore(str(root))
    diff_id = sha256_digest(IMAGE)
    layer = layers.apply(io.BytesIO(IMAGE), chain_id=chain_id_of(None, diff_id), parent=None,
                         expected_diff_id=diff_id)
    ctr = root / "containers" / "c"
    merged = mount_rootfs(str(ctr), [layer.path], links_dir=str(root / "l"))
    # The image's directory is owned by uid 1000, as an image's app user would be.
    os.chown(os.path.join(merged, "data"), 1000, 1000)
    yield merged
    unmount_rootfs(str(ctr))


def test_populate_copies_the_image_content_into_an_empty_volume(volumes, rootfs):
    path = volumes.ensure("data")

    assert populate_from_image(path, rootfs, "/data") is True

    assert open(os.path.join(path, "config"), "rb").read() == b"key=value\n"
    st = os.stat(os.path.join(path, "config"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o640)
    assert open(os.path.join(path, "sub", "deep"), "rb").read() == b"deep\n"
    assert os.readlink(os.path.join(path, "link")) == "/etc/shadow"  # copied as a link, not followed
    root = os.stat(path)
    assert (root.st_uid, stat.S_IMODE(root.st_mode)) == (1000, 0o750)  # the volume takes the dir's owner

    # Not empty any more: a second mount copies nothing.
    os.unlink(os.path.join(path, "config"))
    assert populate_from_image(path, rootfs, "/data") is False
    assert not os.path.exists(os.path.join(path, "config"))


def test_populate_leaves_the_volume_alone_for_missing_or_non_directory_targets(volumes, rootfs):
    path = volumes.ensure("v1")
    assert populate_from_image(path, rootfs, "/nothing/here") is False
    assert populate_from_image(path, rootfs, "/file-target") is False
    # /tmp exists on the host, not in the image: a symlink to it is resolved in the container.
    assert populate_from_image(path, rootfs, "/tmp-link") is False
    assert populate_from_image(path, rootfs, "/data/up") is False
    assert os.listdir(path) == []


def test_populate_follows_symlinks_inside_the_container(volumes, rootfs):
    os.symlink("/etc", os.path.join(rootfs, "etc-link"))
    path = volumes.ensure("v2")
    assert populate_from_image(path, rootfs, "/etc-link") is True
    assert os.listdir(path) == ["app.conf"]
