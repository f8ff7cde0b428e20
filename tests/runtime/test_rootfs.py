"""Tests for runtime.rootfs: real overlay mounts of real layers (root and overlayfs required)."""

import io
import os
import stat

import pytest

from runtime.digest import sha256_digest
from runtime.errors import EngineError, InvalidArgument
from runtime.layers import LayerStore, chain_id_of
from runtime.rootfs import LINK_LENGTH, clean_links, is_mounted, mount_rootfs, unmount_rootfs
from tests.support.registry import Dir, make_layer_tar


@pytest.fixture
def root(tmp_path):
    """An engine root; every container mounted under it is unmounted at the end of the test."""
    path = tmp_path / "root"
    path.mkdir()
    yield path
    containers = path / "containers"
    if containers.is_dir():
        for name in os.listdir(containers):
            unmount_rootfs(str(containers / name))


def apply_layers(root, tars: list[bytes]) -> list[str]:
    """Apply ``tars`` bottom first as a chain in a LayerStore; return their diff dirs, bottom first."""
    layers = LayerStore(str(root))
    parent, paths = None, []
    for tar in tars:
        diff_id = sha256_digest(tar)
        chain = chain_id_of(parent, diff_id)
        layer = layers.apply(io.BytesIO(tar), chain_id=chain, parent=parent, expected_diff_id=diff_id)
        paths.append(layer.path)
        parent = chain
    return paths


def mountinfo_line(path) -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split(" ")[4] == str(path):
                return line
    return None


BASE = make_layer_tar({
    "etc": Dir(),
    "etc/a": b"a from base\n",
    "etc/b": b"b from base\n",
    "etc/same": b"base\n",
    "opt": Dir(),
    "opt/old": b"old\n",
})
TOP = make_layer_tar({
    "etc": Dir(),
    "etc/.wh.a": b"",
    "etc/c": b"c from top\n",
    "etc/same": b"top\n",
    "opt": Dir(),
    "opt/.wh..wh..opq": b"",
    "opt/new": b"new\n",
})


def test_it_stacks_layers_top_first_and_applies_whiteouts(root):
    lowers = apply_layers(root, [BASE, TOP])
    ctr = root / "containers" / "c1"
    merged = mount_rootfs(str(ctr), lowers, links_dir=str(root / "l"))

    assert merged == str(ctr / "merged")
    assert is_mounted(merged)
    assert sorted(os.listdir(ctr / "merged" / "etc")) == ["b", "c", "same"]
    assert (ctr / "merged" / "etc" / "same").read_text() == "top\n"  # the top layer wins
    assert os.listdir(ctr / "merged" / "opt") == ["new"]  # opaque dir hides the base's content
    # The container's / is the upper dir's root: 0755, so that non-root users can use it.
    assert stat.S_IMODE(os.stat(merged).st_mode) == 0o755


def test_writes_land_in_the_upper_dir_and_layers_stay_untouched(root):
    lowers = apply_layers(root, [BASE, TOP])
    ctr = root / "containers" / "c1"
    merged = mount_rootfs(str(ctr), lowers, links_dir=str(root / "l"))

    with open(os.path.join(merged, "etc", "b"), "a") as f:
        f.write("changed\n")
    (ctr / "merged" / "new.txt").write_text("hello\n")
    os.unlink(os.path.join(merged, "etc", "c"))

    assert (ctr / "upper" / "new.txt").read_text() == "hello\n"
    assert (ctr / "upper" / "etc" / "b").read_text() == "b from base\nchanged\n"
    whiteout = os.lstat(ctr / "upper" / "etc" / "c")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert open(os.path.join(lowers[0], "etc", "b")).read() == "b from base\n"
    assert os.path.exists(os.path.join(lowers[1], "etc", "c"))


def test_a_second_container_shares_the_layers_and_the_links(root):
    lowers = apply_layers(root, [BASE, TOP])
    links = str(root / "l")
    one = mount_rootfs(str(root / "containers" / "one"), lowers, links_dir=links)
    two = mount_rootfs(str(root / "containers" / "two"), lowers, links_dir=links)
    (root / "containers" / "one" / "merged" / "only-in-one").write_text("1")

    assert not os.path.exists(os.path.join(two, "only-in-one"))
    assert not [n for n in os.listdir(links) if n.startswith(".tmp-")]
    assert len(os.listdir(links)) == 2
    assert all(len(name) == LINK_LENGTH for name in os.listdir(links))
    assert {os.readlink(os.path.join(links, n)) for n in os.listdir(links)} == set(lowers)
    assert is_mounted(one) and is_mounted(two)


def test_mounting_twice_is_a_no_op(root):
    lowers = apply_layers(root, [BASE])
    ctr = str(root / "containers" / "c1")
    first = mount_rootfs(ctr, lowers, links_dir=str(root / "l"))
    second = mount_rootfs(ctr, lowers, links_dir=str(root / "l"))
    assert first == second
    unmount_rootfs(ctr)
    assert not is_mounted(first)  # one unmount was enough: it was mounted once


def test_an_image_with_no_layers_gets_an_empty_rootfs(root):
    ctr = root / "containers" / "scratch"
    merged = mount_rootfs(str(ctr), [], links_dir=str(root / "l"))
    assert is_mounted(merged)
    assert os.listdir(merged) == []
    (ctr / "merged" / "file").write_text("x")
    assert (ctr / "upper" / "file").read_text() == "x"
    assert os.listdir(root / "l" / ".empty") == []
    # A second scratch container shares the empty lower dir; cleaning links keeps it.
    mount_rootfs(str(root / "containers" / "scratch2"), [], links_dir=str(root / "l"))
    assert os.listdir(root / "l") == [".empty"]
    assert clean_links(str(root / "l")) == 0


def test_a_chain_of_120_layers_fits_the_mount_options(root):
    # Long paths, so that even the absolute link paths overflow a page: the relative mount is used.
    deep = root / ("d" * 100)
    lowers = []
    for i in range(120):
        layer = deep / "layers" / f"{i:03d}-{'x' * 60}" / "diff"
        layer.mkdir(parents=True)
        (layer / f"f{i:03d}").write_text(str(i))
        (layer / "top").write_text(str(i))
        lowers.append(str(layer))
    links = deep / "l"
    ctr = root / "containers" / "long"

    merged = mount_rootfs(str(ctr), lowers, links_dir=str(links))

    assert is_mounted(merged)
    names = os.listdir(merged)
    assert len(names) == 121
    assert (ctr / "merged" / "top").read_text() == "119"  # the last layer given is the top one
    assert (ctr / "merged" / "f000").read_text() == "0"
    line = mountinfo_line(merged)
    assert line is not None and f"lowerdir={str(links)}/" not in line  # relative link names
    assert len(os.listdir(links)) == 120


def test_a_short_chain_mounts_in_process_with_absolute_links(root):
    lowers = apply_layers(root, [BASE, TOP])
    links = root / "l"
    merged = mount_rootfs(str(root / "containers" / "c1"), lowers, links_dir=str(links))
    line = mountinfo_line(merged)
    assert f"lowerdir={links}/" in line
    assert "upperdir=" in line


def test_a_chain_too_long_even_for_short_links_is_refused(root):
    lowers = []
    for i in range(200):
        layer = root / "layers" / str(i)
        layer.mkdir(parents=True)
        lowers.append(str(layer))
    with pytest.raises(EngineError, match="do not fit"):
        mount_rootfs(str(root / "containers" / "c1"), lowers, links_dir=str(root / "l"))
    assert not is_mounted(root / "containers" / "c1" / "merged")


def test_a_missing_layer_dir_is_refused(root):
    with pytest.raises(InvalidArgument):
        mount_rootfs(str(root / "containers" / "c1"), [str(root / "nope")], links_dir=str(root / "l"))


def test_unmount_leaves_nothing_mounted_and_never_fails(root):
    lowers = apply_layers(root, [BASE, TOP])
    ctr = root / "containers" / "c1"
    unmount_rootfs(str(ctr))  # never mounted, not even created
    merged = mount_rootfs(str(ctr), lowers, links_dir=str(root / "l"))
    (ctr / "merged" / "kept").write_text("x")

    unmount_rootfs(str(ctr))

    assert not is_mounted(merged)
    assert os.listdir(merged) == []
    assert (ctr / "upper" / "kept").read_text() == "x"
    unmount_rootfs(str(ctr))  # twice is fine
    assert mountinfo_line(merged) is None


def test_clean_links_removes_only_links_to_removed_layers(root):
    lowers = apply_layers(root, [BASE, TOP])
    links = root / "l"
    mount_rootfs(str(root / "containers" / "c1"), lowers, links_dir=str(links))
    unmount_rootfs(str(root / "containers" / "c1"))
    LayerStore(str(root)).remove(LayerStore(str(root)).list()[0].chain_id)
    (links / ".tmp-leftover").symlink_to("/nowhere")

    assert clean_links(str(links)) == 2
    remaining = [os.readlink(links / n) for n in os.listdir(links)]
    assert len(remaining) == 1 and os.path.isdir(remaining[0])


def test_is_mounted_reads_escaped_mount_points(root):
    lowers = apply_layers(root, [BASE])
    ctr = root / "containers" / "with space"
    merged = mount_rootfs(str(ctr), lowers, links_dir=str(root / "l"))
    assert is_mounted(merged)
    assert not is_mounted(str(ctr))


def test_threads_mount_long_chains_at_once_sharing_the_links(root):
    from concurrent.futures import ThreadPoolExecutor

    deep = root / ("d" * 100)
    lowers = []
    for i in range(120):
        layer = deep / "layers" / f"{i:03d}-{'x' * 60}" / "diff"
        layer.mkdir(parents=True)
        (layer / "top").write_text(str(i))
        lowers.append(str(layer))
    links = str(deep / "l")

    def mount(n):
        return mount_rootfs(str(root / "containers" / f"c{n}"), lowers, links_dir=links)

    with ThreadPoolExecutor(4) as pool:
        merged = list(pool.map(mount, range(8)))

    assert all(open(os.path.join(m, "top")).read() == "119" for m in merged)
    assert len(os.listdir(links)) == 120
