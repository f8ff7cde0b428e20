"""Tests for runtime.fsops: diff, cp in and out, commit and export on real overlay mounts."""

import base64
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile

import pytest

from runtime import fsops
from runtime.digest import sha256_digest
from runtime.errors import InvalidArgument, NotFound, UnsafeArchive
from runtime.images import ImageStore
from runtime.layers import LayerStore, chain_id_of
from runtime.rootfs import mount_rootfs, unmount_rootfs
from runtime.store import Store
from tests.support.registry import Dir, File, Symlink, busybox_layer, make_layer_tar

CONTAINER_PASSWD = b"root:x:0:0:container root:/root:/bin/sh\n"

BASE = make_layer_tar({
    "bin": Dir(),
    "bin/app": File(b"#!/bin/sh\necho app\n", 0o755),
    "etc": Dir(),
    "etc/passwd": CONTAINER_PASSWD,
    "etc/a": b"a\n",
    "etc/b": b"b\n",
    "etc/c": b"c\n",
    "opt": Dir(),
    "opt/old": b"old\n",
    "opt/keep": b"keep\n",
    "srv": Dir(),
    "srv/data": b"data\n",
})
TOP = make_layer_tar({
    "etc": Dir(),
    "etc/.wh.a": b"",
    "etc/motd": b"hello\n",
    # Symlinks that a host-side reader would follow out of the container.
    "link-passwd": Symlink("/etc/passwd"),
    "link-etc": Symlink("/etc"),
    "link-up": Symlink("../../../../../../../../etc/passwd"),
    "link-root": Symlink("/"),
    "link-host-tmp": Symlink("/tmp"),
    "dangling": Symlink("/nowhere/at/all"),
})


class Engine:
    """A throwaway engine root: store, layers, images, and containers mounted on demand."""

    def __init__(self, root):
        self.root = root
        self.store = Store(str(root))
        self.layers = LayerStore(str(root))
        self.images = ImageStore(str(root), self.store, self.layers)
        self.mounted = []

    def image(self, tars: list[bytes], *, cmd=None, reference=None):
        parent, layers = None, []
        for tar in tars:
            diff_id = sha256_digest(tar)
            chain = chain_id_of(parent, diff_id)
            layers.append(self.layers.apply(io.BytesIO(tar), chain_id=chain, parent=parent,
                                            expected_diff_id=diff_id))
            parent = chain
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": cmd or ["/bin/app"], "Env": ["PATH=/bin", "A=image"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"}
                        for i in range(len(layers))],
        }
        return self.images.add(json.dumps(config).encode(), layers, reference=reference)

    def lower_dirs(self, image):
        return [self.layers.get(c).path for c in image.chain_ids]

    def container(self, image, name="ctr"):
        """Mount a container of ``image``; return (container dir, merged dir)."""
        ctr = self.root / "containers" / name
        merged = mount_rootfs(str(ctr), self.lower_dirs(image), links_dir=str(self.root / "l"))
        self.mounted.append(ctr)
        return ctr, merged

    def close(self):
        for ctr in self.mounted:
            unmount_rootfs(str(ctr))


@pytest.fixture
def engine(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    eng = Engine(root)
    yield eng
    eng.close()


@pytest.fixture
def ctr(engine):
    """A mounted container of a two-layer image: (engine, image, container dir, merged dir)."""
    image = engine.image([BASE, TOP], reference="base:1")
    ctr_dir, merged = engine.container(image)
    return engine, image, ctr_dir, merged


def tar_of(entries: list[tuple[str, object]]) -> bytes:
    """A tar with entries in the order given: (name, bytes | 'dir' | ('sym', target) | ('lnk', target))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, what in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if what == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif isinstance(what, tuple):
                info.type = tarfile.SYMTYPE if what[0] == "sym" else tarfile.LNKTYPE
                info.linkname = what[1]
                tf.addfile(info)
            else:
                info.size, info.mode = len(what), 0o644
                tf.addfile(info, io.BytesIO(what))
    return buf.getvalue()


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: m for m in tf.getmembers()}


def read_member(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.extractfile(name).read()


def host_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


#
# diff
#


def test_diff_shows_added_changed_and_deleted_paths_as_docker_does(ctr):
    engine, image, ctr_dir, merged = ctr
    with open(os.path.join(merged, "etc", "b"), "a") as f:
        f.write("more\n")
    os.unlink(os.path.join(merged, "etc", "c"))  # through the merged view: a whiteout in upper
    os.makedirs(os.path.join(merged, "new", "deep"))
    with open(os.path.join(merged, "new", "deep", "file"), "w") as f:
        f.write("x")

    changes = fsops.diff(str(ctr_dir / "upper"), engine.lower_dirs(image))

    assert changes == [
        {"Path": "/etc", "Kind": 0},
        {"Path": "/etc/b", "Kind": 0},
        {"Path": "/etc/c", "Kind": 2},
        {"Path": "/new", "Kind": 1},
        {"Path": "/new/deep", "Kind": 1},
        {"Path": "/new/deep/file", "Kind": 1},
    ]


def test_diff_of_a_fresh_container_is_empty_even_with_runc_mount_points(ctr):
    engine, image, ctr_dir, merged = ctr
    # What runc leaves in the upper dir when the image lacks these mount points.
    for name in ("hosts", "hostname", "resolv.conf"):
        open(os.path.join(merged, "etc", name), "w").close()
    for name in ("proc", "sys", "dev"):
        os.mkdir(os.path.join(merged, name))
    open(os.path.join(merged, ".dockerenv"), "w").close()

    assert fsops.diff(str(ctr_dir / "upper"), engine.lower_dirs(image)) == []


def test_diff_reports_a_recreated_directory_as_deleted_and_its_content_as_added(ctr):
    engine, image, ctr_dir, merged = ctr
    subprocess.run(["rm", "-rf", os.path.join(merged, "opt")], check=True)
    os.mkdir(os.path.join(merged, "opt"))
    with open(os.path.join(merged, "opt", "old"), "w") as f:
        f.write("new content\n")
    assert sorted(os.listdir(os.path.join(merged, "opt"))) == ["old"]  # "keep" is hidden

    changes = fsops.diff(str(ctr_dir / "upper"), engine.lower_dirs(image))

    assert {"Path": "/opt", "Kind": 2} in changes
    assert {"Path": "/opt/old", "Kind": 1} in changes
    assert not [c for c in changes if c["Path"] == "/opt/keep"]


def test_diff_knows_a_path_whited_out_in_a_lower_layer_is_new(ctr):
    engine, image, ctr_dir, merged = ctr
    with open(os.path.join(merged, "etc", "a"), "w") as f:  # "a" was deleted by the top layer
        f.write("again\n")
    changes = fsops.diff(str(ctr_dir / "upper"), engine.lower_dirs(image))
    assert {"Path": "/etc/a", "Kind": 1} in changes


#
# stat and copy out
#


def test_stat_path_gives_dockers_path_stat(ctr):
    _, _, _, merged = ctr
    st = fsops.stat_path(merged, "/etc/motd")
    assert st["name"] == "motd" and st["size"] == 6 and st["linkTarget"] == ""
    assert st["mode"] == 0o644
    assert st["mtime"].endswith("Z")
    d = fsops.stat_path(merged, "/etc/")
    assert d["name"] == "etc" and d["mode"] == (1 << 31) | 0o755
    link = fsops.stat_path(merged, "/link-up")
    assert link["mode"] & (1 << 27) and link["linkTarget"] == "/etc/passwd"
    assert fsops.stat_path(merged, "/dangling")["linkTarget"] == "/nowhere/at/all"
    assert fsops.stat_path(merged, "/")["name"] == "/"
    # The header value is the JSON, base64-encoded.
    assert json.loads(base64.b64decode(base64.b64encode(json.dumps(st).encode()))) == st


def test_a_missing_path_is_not_found_in_dockers_words(ctr):
    _, _, _, merged = ctr
    with pytest.raises(NotFound, match="^Could not find the file /nope in container abc$"):
        fsops.stat_path(merged, "/nope", container_id="abc")
    with pytest.raises(NotFound):
        fsops.copy_out(merged, "/etc/passwd/x", io.BytesIO())
    with pytest.raises(NotFound):
        fsops.copy_out(merged, "/etc/motd/", io.BytesIO())


def test_copy_out_a_file_and_a_directory(ctr):
    _, _, _, merged = ctr
    out = io.BytesIO()
    st = fsops.copy_out(merged, "/etc/motd", out)
    assert st["name"] == "motd"
    assert list(members(out.getvalue())) == ["motd"]
    assert read_member(out.getvalue(), "motd") == b"hello\n"

    out = io.BytesIO()
    fsops.copy_out(merged, "/etc", out)
    names = members(out.getvalue())
    assert "etc" in names and names["etc"].isdir()
    assert {"etc/passwd", "etc/motd", "etc/b"} <= set(names)
    assert "etc/a" not in names  # whited out by the top layer

    out = io.BytesIO()
    fsops.copy_out(merged, "/etc/.", out)
    assert "./motd" in members(out.getvalue())


def test_copy_out_of_a_symlink_is_the_symlink(ctr):
    _, _, _, merged = ctr
    out = io.BytesIO()
    st = fsops.copy_out(merged, "/link-passwd", out)
    entry = members(out.getvalue())["link-passwd"]
    assert entry.issym() and entry.linkname == "/etc/passwd"
    assert st["linkTarget"] == "/etc/passwd"


def test_copy_out_follows_symlinks_inside_the_container_never_to_the_host(ctr):
    _, _, _, merged = ctr
    assert open("/etc/passwd", "rb").read() != CONTAINER_PASSWD
    for path, kwargs in [
        ("/link-etc/passwd", {}),                        # a symlinked directory on the way
        ("/link-passwd", {"follow_link": True}),         # docker cp -L
        ("/link-up", {"follow_link": True}),             # ../../.. stops at the container root
        ("../../../../etc/passwd", {}),                  # so does a ../ path
        ("/link-root/link-root/etc/passwd", {}),
    ]:
        out = io.BytesIO()
        fsops.copy_out(merged, path, out, **kwargs)
        (name,) = members(out.getvalue())
        assert read_member(out.getvalue(), name) == CONTAINER_PASSWD, path

    # /tmp exists on the host, not in the container.
    with pytest.raises(NotFound):
        fsops.copy_out(merged, "/link-host-tmp/", io.BytesIO())


def test_copy_out_of_the_root_names_entries_as_docker_does(ctr):
    _, _, _, merged = ctr
    out = io.BytesIO()
    st = fsops.copy_out(merged, "/", out)
    names = members(out.getvalue())
    assert st["name"] == "/"
    assert "/etc/passwd" in names and "/bin/app" in names


#
# copy in
#


def test_copy_in_extracts_into_a_directory(ctr):
    _, _, ctr_dir, merged = ctr
    data = tar_of([("dir", "dir"), ("dir/file", b"content"), ("top", b"top"),
                   ("dir/link", ("sym", "/etc/passwd"))])
    fsops.copy_in(merged, "/srv", io.BytesIO(data))
    assert open(os.path.join(merged, "srv", "dir", "file"), "rb").read() == b"content"
    assert os.readlink(os.path.join(merged, "srv", "dir", "link")) == "/etc/passwd"
    assert open(os.path.join(ctr_dir, "upper", "srv", "top"), "rb").read() == b"top"
    assert open(os.path.join(merged, "srv", "data"), "rb").read() == b"data\n"  # merged, not replaced


def test_copy_in_refuses_dot_dot_entries_and_leaves_the_host_untouched(ctr, tmp_path):
    _, _, _, merged = ctr
    data = tar_of([("../evil", b"evil"), ("../../../../../../../../../tmp/evil-berth", b"evil")])
    with pytest.raises(UnsafeArchive):
        fsops.copy_in(merged, "/srv", io.BytesIO(data))
    assert not os.path.exists(os.path.join(merged, "evil"))
    assert not os.path.exists(os.path.join(os.path.dirname(merged), "evil"))
    assert not os.path.exists("/tmp/evil-berth")


def test_copy_in_through_a_symlink_to_slash_lands_in_the_container_root(ctr):
    _, _, ctr_dir, merged = ctr
    fsops.copy_in(merged, "/link-root", io.BytesIO(tar_of([("dropped", b"inside")])))
    assert open(os.path.join(merged, "dropped"), "rb").read() == b"inside"
    assert not os.path.exists("/dropped")

    # A destination that exists only on the host does not exist in the container.
    with pytest.raises(NotFound, match="Could not find the file /link-host-tmp in container c1"):
        fsops.copy_in(merged, "/link-host-tmp", io.BytesIO(tar_of([("x", b"x")])), container_id="c1")


def test_copy_in_entries_through_symlinks_stay_in_the_container(ctr):
    _, _, _, merged = ctr
    before = host_digest("/etc/passwd")
    data = tar_of([
        ("escape", ("sym", "/etc")),          # planted by the archive itself
        ("escape/passwd", b"pwned\n"),        # written through it: the container's /etc
        ("up", ("sym", "../../../../../../../../../../etc")),
        ("up/motd", b"pwned too\n"),
    ])
    fsops.copy_in(merged, "/srv", io.BytesIO(data))
    assert host_digest("/etc/passwd") == before
    assert open(os.path.join(merged, "etc", "passwd"), "rb").read() == b"pwned\n"
    assert open(os.path.join(merged, "etc", "motd"), "rb").read() == b"pwned too\n"


def test_copy_in_refuses_hardlinks_to_anything_but_earlier_entries(ctr):
    _, _, _, merged = ctr
    for target in ("/etc/passwd", "../../etc/passwd", "etc/passwd"):
        with pytest.raises(UnsafeArchive):
            fsops.copy_in(merged, "/srv", io.BytesIO(tar_of([("hl", ("lnk", target))])))
    fsops.copy_in(merged, "/srv", io.BytesIO(tar_of([("f", b"x"), ("hl", ("lnk", "f"))])))
    assert os.stat(os.path.join(merged, "srv", "hl")).st_nlink == 2


def test_copy_in_to_a_missing_or_non_directory_destination(ctr):
    _, _, _, merged = ctr
    with pytest.raises(NotFound, match="^Could not find the file /missing in container$"):
        fsops.copy_in(merged, "/missing", io.BytesIO(tar_of([("x", b"x")])))
    with pytest.raises(InvalidArgument, match="not a directory"):
        fsops.copy_in(merged, "/etc/motd", io.BytesIO(tar_of([("x", b"x")])))


def test_copy_in_no_overwrite_dir_non_dir(ctr):
    _, _, _, merged = ctr
    with pytest.raises(InvalidArgument, match="cannot overwrite directory"):
        fsops.copy_in(merged, "/", io.BytesIO(tar_of([("etc", b"file")])), no_overwrite_dir_non_dir=True)
    with pytest.raises(InvalidArgument, match="cannot overwrite non-directory"):
        fsops.copy_in(merged, "/etc", io.BytesIO(tar_of([("motd", "dir")])), no_overwrite_dir_non_dir=True)
    assert os.path.isdir(os.path.join(merged, "etc"))
    # Without the flag, Docker replaces it.
    fsops.copy_in(merged, "/etc", io.BytesIO(tar_of([("motd", "dir")])))
    assert os.path.isdir(os.path.join(merged, "etc", "motd"))


def test_copy_in_writes_whiteout_names_as_plain_files(ctr):
    _, _, _, merged = ctr
    fsops.copy_in(merged, "/etc", io.BytesIO(tar_of([(".wh.passwd", b"")])))
    assert os.path.isfile(os.path.join(merged, "etc", ".wh.passwd"))
    assert os.path.isfile(os.path.join(merged, "etc", "passwd"))


#
# commit
#


def test_commit_then_run_the_new_image(ctr):
    engine, image, ctr_dir, merged = ctr
    with open(os.path.join(merged, "committed"), "w") as f:
        f.write("yes\n")
    os.unlink(os.path.join(merged, "etc", "b"))
    open(os.path.join(merged, "etc", "hosts"), "w").close()  # runc's mount point
    os.mkdir(os.path.join(merged, "proc"))
    calls = []

    def pause():
        calls.append("pause")
        return lambda: calls.append("resume")

    record = fsops.commit_image(
        engine.images, engine.store, engine.layers,
        parent_image_id=image.id, upper_dir=str(ctr_dir / "upper"),
        container_config={"Cmd": ["/bin/sh", "-c", "echo hi"], "Env": ["PATH=/bin", "A=ctr"],
                          "Hostname": "abc"},
        reference="committed:v1", changes=["ENV B=2", "LABEL team=core"], message="a message",
        author="alice", pause=pause, container_id="abc123",
    )

    assert calls == ["pause", "resume"]
    assert record.chain_ids[:2] == image.chain_ids and len(record.chain_ids) == 3
    assert engine.images.resolve("committed:v1").id == record.id
    config = record.config
    assert config["config"]["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert config["config"]["Env"] == ["B=2", "PATH=/bin", "A=ctr"]
    assert config["config"]["Labels"] == {"team": "core"}
    assert config["author"] == "alice" and config["container"] == "abc123"
    assert config["container_config"]["Hostname"] == "abc"
    last = config["history"][-1]
    assert last["created_by"] == "/bin/sh -c echo hi" and last["comment"] == "a message"
    assert last["author"] == "alice" and "empty_layer" not in last
    assert len(config["history"]) == 3
    assert engine.store.has_blob(record.diff_ids[-1])  # the tar is kept for a push

    _, new_merged = engine.container(record, name="from-commit")
    assert open(os.path.join(new_merged, "committed")).read() == "yes\n"
    assert not os.path.exists(os.path.join(new_merged, "etc", "b"))
    assert not os.path.exists(os.path.join(new_merged, "etc", "hosts"))
    assert not os.path.exists(os.path.join(new_merged, "proc"))
    assert os.path.exists(os.path.join(new_merged, "etc", "passwd"))
    history = engine.images.history("committed:v1")
    assert history[0]["Comment"] == "a message" and history[0]["Size"] > 0


def test_committing_an_unchanged_container_adds_an_empty_history_entry(ctr):
    engine, image, ctr_dir, merged = ctr
    open(os.path.join(merged, "etc", "resolv.conf"), "w").close()  # only a mount point
    record = fsops.commit_image(
        engine.images, engine.store, engine.layers,
        parent_image_id=image.id, upper_dir=str(ctr_dir / "upper"),
        container_config={"Cmd": ["/bin/app"]}, reference=None, changes=[], message="", author="", pause=None,
    )
    assert record.chain_ids == image.chain_ids
    assert record.config["history"][-1]["empty_layer"] is True
    assert record.config["config"]["Cmd"] == ["/bin/app"]


def test_commit_of_a_scratch_container_leaves_out_the_etc_made_for_mount_points(engine):
    image = engine.image([], reference="scratch:1")
    ctr_dir, merged = engine.container(image)
    os.mkdir(os.path.join(merged, "etc"))
    open(os.path.join(merged, "etc", "hostname"), "w").close()
    with open(os.path.join(merged, "app"), "w") as f:
        f.write("app")
    out = io.BytesIO()
    fsops.commit_layer(str(ctr_dir / "upper"), out, lower_dirs=[])
    assert list(members(out.getvalue())) == ["app"]
    assert fsops.diff(str(ctr_dir / "upper"), []) == [{"Path": "/app", "Kind": 1}]


def test_commit_layer_keeps_whiteouts_and_opaque_dirs(ctr):
    engine, image, ctr_dir, merged = ctr
    os.unlink(os.path.join(merged, "etc", "b"))
    subprocess.run(["rm", "-rf", os.path.join(merged, "opt")], check=True)
    os.mkdir(os.path.join(merged, "opt"))
    out = io.BytesIO()
    fsops.commit_layer(str(ctr_dir / "upper"), out)
    names = members(out.getvalue())
    assert "etc/.wh.b" in names
    assert "opt/.wh..wh..opq" in names


def test_commit_refuses_a_digest_reference(ctr):
    engine, image, ctr_dir, _ = ctr
    with pytest.raises(InvalidArgument):
        fsops.commit_image(engine.images, engine.store, engine.layers, parent_image_id=image.id,
                           upper_dir=str(ctr_dir / "upper"), container_config={},
                           reference="x@sha256:" + "0" * 64,
                           changes=[], message="", author="", pause=None)


#
# export
#


def test_export_is_a_flat_tar_of_the_merged_root(ctr):
    _, _, _, merged = ctr
    os.unlink(os.path.join(merged, "etc", "b"))
    with open(os.path.join(merged, "added"), "w") as f:
        f.write("added")
    os.makedirs(os.path.join(merged, "proc", "self"))  # content under /proc is never exported
    os.makedirs(os.path.join(merged, "mnt"))
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", os.path.join(merged, "mnt")], check=True)
    try:
        with open(os.path.join(merged, "mnt", "volume-file"), "w") as f:
            f.write("v")
        out = io.BytesIO()
        fsops.export_rootfs(merged, out)
    finally:
        subprocess.run(["umount", os.path.join(merged, "mnt")], check=True)

    names = members(out.getvalue())
    expected = {"bin", "bin/app", "etc", "etc/passwd", "etc/motd", "added", "opt/old", "proc", "mnt"}
    assert expected <= set(names)
    assert "etc/b" not in names and "etc/a" not in names
    assert not [n for n in names if ".wh." in n]
    assert "proc/self" not in names and "mnt/volume-file" not in names
    assert names["link-passwd"].issym()
    assert read_member(out.getvalue(), "etc/passwd") == CONTAINER_PASSWD


def test_go_file_modes():
    assert fsops.go_file_mode(stat.S_IFREG | 0o4755) == (1 << 23) | 0o755
    assert fsops.go_file_mode(stat.S_IFDIR | 0o1777) == (1 << 31) | (1 << 20) | 0o777
    assert fsops.go_file_mode(stat.S_IFCHR | 0o666) == (1 << 26) | (1 << 21) | 0o666
    assert fsops.go_file_mode(stat.S_IFLNK | 0o777) == (1 << 27) | 0o777


#
# With a real runc
#


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
def test_a_container_run_by_runc_diffs_and_commits_only_what_its_command_changed(engine, tmp_path):
    """runc creates the bind mounts' targets (/etc/hosts...) and /proc, /sys, /dev in the upper
    dir; like Docker's init layer, diff and commit do not show them."""
    image = engine.image([busybox_layer()[0]])
    ctr_dir, merged = engine.container(image)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    subprocess.run(["runc", "spec", "-b", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"] = {"path": merged, "readonly": False}
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["sh", "-c", "echo hi > /tmp/x && rm /etc/group"]
    spec["linux"]["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    for name in ("hosts", "hostname", "resolv.conf"):
        (tmp_path / name).write_text("")
        spec["mounts"].append({"destination": f"/etc/{name}", "type": "bind", "source": str(tmp_path / name),
                               "options": ["rbind", "rprivate"]})
    (bundle / "config.json").write_text(json.dumps(spec))
    cid = f"berth-fsops-{os.getpid()}"
    try:
        result = subprocess.run(["runc", "run", "-b", str(bundle), cid], capture_output=True, text=True,
                                timeout=60)
    finally:
        subprocess.run(["runc", "delete", "-f", cid], capture_output=True)
    assert result.returncode == 0, result.stderr
    upper = str(ctr_dir / "upper")
    assert os.path.exists(os.path.join(upper, "etc", "hosts")) and os.path.isdir(os.path.join(upper, "proc"))

    assert fsops.diff(upper, engine.lower_dirs(image)) == [
        {"Path": "/etc", "Kind": 0},
        {"Path": "/etc/group", "Kind": 2},
        {"Path": "/tmp", "Kind": 0},
        {"Path": "/tmp/x", "Kind": 1},
    ]
    out = io.BytesIO()
    fsops.commit_layer(upper, out, lower_dirs=engine.lower_dirs(image))
    assert list(members(out.getvalue())) == ["etc", "etc/.wh.group", "tmp", "tmp/x"]
