"""Tests for runtime.archive: hostile layer tars, metadata, whiteouts, and pack_dir round trips.

Every tar here is built by hand with tarfile and fed to apply_tar as a non-seekable stream.
"""

import io
import os
import stat
import tarfile
import threading

import pytest

from runtime.archive import OPAQUE_XATTR, apply_tar, pack_dir
from runtime.errors import UnsafeArchive

CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\x00" * 12  # cap_net_bind_service=ep
MTIME = 1_600_000_000


class Stream:
    """A read-only, non-seekable byte stream, like a decompressor or an HTTP body."""

    def __init__(self, data: bytes):
        self._buf = io.BytesIO(data)

    def read(self, n=-1):
        return self._buf.read(n)


def entry(name, type_=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, mtime=MTIME, linkname="",
          xattrs=None, dev=(0, 0)):
    """Return (TarInfo, data) for make_tar."""
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.linkname = linkname
    info.devmajor, info.devminor = dev
    if type_ == tarfile.REGTYPE:
        info.size = len(data)
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}
    return info, data


def make_tar(*entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def apply(data: bytes, dest):
    return apply_tar(Stream(data), str(dest))


@pytest.fixture
def dest(tmp_path):
    d = tmp_path / "layer"
    d.mkdir()
    return d


@pytest.fixture
def outside(tmp_path):
    """A directory beside the layer that no entry may touch."""
    d = tmp_path / "outside"
    d.mkdir()
    return d


class TestApplyTar:
    def test_it_keeps_owners_modes_times_xattrs_and_special_files(self, dest):
        data = make_tar(
            entry("bin/", tarfile.DIRTYPE, mode=0o755, mtime=MTIME + 1),
            entry("bin/ping", data=b"\x7fELF", mode=0o4755, uid=0, gid=0, xattrs={"security.capability": CAP}),
            entry("bin/sgid", data=b"x", mode=0o2711, uid=1000, gid=50),
            entry("home/user/", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000, mtime=MTIME + 2),
            entry("home/user/notes", data=b"hello", mode=0o600, uid=1000, gid=1000,
                  xattrs={"user.comment": b"\xff\xfebinary"}),
            entry("tmp/", tarfile.DIRTYPE, mode=0o1777),
            entry("bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox", uid=7, gid=8),
            entry("bin/ping6", tarfile.LNKTYPE, linkname="bin/ping"),
            entry("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
            entry("dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(7, 0)),
            entry("run/fifo", tarfile.FIFOTYPE, mode=0o620),
        )
        stats = apply(data, dest)

        ping = os.stat(dest / "bin/ping")
        assert stat.S_IMODE(ping.st_mode) == 0o4755
        assert os.getxattr(dest / "bin/ping", "security.capability") == CAP
        assert ping.st_mtime == MTIME
        sgid = os.stat(dest / "bin/sgid")
        assert (stat.S_IMODE(sgid.st_mode), sgid.st_uid, sgid.st_gid) == (0o2711, 1000, 50)
        notes = os.stat(dest / "home/user/notes")
        assert (notes.st_uid, notes.st_gid, stat.S_IMODE(notes.st_mode)) == (1000, 1000, 0o600)
        assert (dest / "home/user/notes").read_bytes() == b"hello"
        assert os.getxattr(dest / "home/user/notes", "user.comment") == b"\xff\xfebinary"
        assert stat.S_IMODE(os.stat(dest / "tmp").st_mode) == 0o1777
        assert os.readlink(dest / "bin/sh") == "/bin/busybox"
        assert os.lstat(dest / "bin/sh").st_uid == 7
        assert os.stat(dest / "bin/ping6").st_ino == ping.st_ino
        null = os.stat(dest / "dev/null")
        assert stat.S_ISCHR(null.st_mode) and (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
        assert stat.S_IMODE(null.st_mode) == 0o666
        loop = os.stat(dest / "dev/loop0")
        assert stat.S_ISBLK(loop.st_mode) and loop.st_gid == 6 and stat.S_IMODE(loop.st_mode) == 0o660
        assert stat.S_ISFIFO(os.stat(dest / "run/fifo").st_mode)
        # Directory mtimes survive the files written into them afterwards.
        assert os.stat(dest / "bin").st_mtime == MTIME + 1
        assert os.stat(dest / "home/user").st_mtime == MTIME + 2
        # Parents without an entry of their own are created 0755.
        assert stat.S_IMODE(os.stat(dest / "home").st_mode) == 0o755
        assert (stats.files, stats.dirs, stats.symlinks, stats.hardlinks, stats.devices) == (3, 3, 1, 1, 3)
        assert stats.size == 4 + 1 + 5

    def test_dot_slash_names_and_root_entry(self, dest):
        apply(make_tar(entry("./", tarfile.DIRTYPE, mode=0o755), entry("./etc/hostname", data=b"h\n")), dest)
        assert (dest / "etc/hostname").read_bytes() == b"h\n"
        assert stat.S_IMODE(os.stat(dest).st_mode) == 0o755

    def test_absolute_paths_are_made_relative(self, dest):
        apply(make_tar(entry("/etc/abs", data=b"inside")), dest)
        assert (dest / "etc/abs").read_bytes() == b"inside"

    @pytest.mark.parametrize("name", ["../evil", "a/../../evil", "./../evil", "/../evil"])
    def test_dotdot_paths_are_refused(self, dest, outside, name):
        with pytest.raises(UnsafeArchive, match=r"'\.\.'") as exc:
            apply(make_tar(entry(name.replace("evil", "outside/evil"), data=b"pwned")), dest)
        assert "outside/evil" in str(exc.value)
        assert not (outside / "evil").exists()

    def test_writing_through_a_symlink_to_an_absolute_path_is_refused(self, dest, outside):
        data = make_tar(entry("a", tarfile.SYMTYPE, linkname=str(outside)), entry("a/x", data=b"pwned"))
        with pytest.raises(UnsafeArchive, match="entry 'a/x': a is a symlink"):
            apply(data, dest)
        assert os.listdir(outside) == []

    def test_writing_through_a_symlink_to_dotdot_is_refused(self, dest, outside):
        data = make_tar(
            entry("up", tarfile.SYMTYPE, linkname=".."),
            entry("up/outside/escaped", data=b"pwned"),
        )
        with pytest.raises(UnsafeArchive, match="entry 'up/outside/escaped': up is a symlink"):
            apply(data, dest)
        assert os.listdir(outside) == []

    def test_a_deep_symlink_parent_is_refused(self, dest, outside):
        data = make_tar(
            entry("a/b/", tarfile.DIRTYPE),
            entry("a/b/c", tarfile.SYMTYPE, linkname="../../../outside"),
            entry("a/b/c/d/e", data=b"pwned"),
        )
        with pytest.raises(UnsafeArchive, match="a/b/c is a symlink"):
            apply(data, dest)
        assert os.listdir(outside) == []

    def test_symlinks_may_point_anywhere_and_are_not_followed(self, dest, outside):
        (outside / "target").write_bytes(b"untouched")
        data = make_tar(
            entry("link", tarfile.SYMTYPE, linkname=str(outside / "target")),
            entry("link", data=b"replaced the link, not its target"),
        )
        apply(data, dest)
        assert (outside / "target").read_bytes() == b"untouched"
        assert not os.path.islink(dest / "link")
        assert (dest / "link").read_bytes() == b"replaced the link, not its target"

    @pytest.mark.parametrize(
        "linkname, why",
        [
            ("/etc/passwd", "not an earlier entry"),
            ("etc/passwd", "not an earlier entry"),
            ("../../../../etc/passwd", "'..'"),
            ("nothere", "not an earlier entry"),
        ],
    )
    def test_hardlinks_outside_the_layer_are_refused(self, dest, linkname, why):
        with pytest.raises(UnsafeArchive, match=why) as exc:
            apply(make_tar(entry("passwd", tarfile.LNKTYPE, linkname=linkname)), dest)
        assert "passwd" in str(exc.value)
        assert not (dest / "passwd").exists()

    def test_hardlink_through_a_symlinked_dir_is_refused(self, dest):
        data = make_tar(
            entry("etc", tarfile.SYMTYPE, linkname="/etc"),
            entry("stolen", tarfile.LNKTYPE, linkname="etc/passwd"),
        )
        with pytest.raises(UnsafeArchive):
            apply(data, dest)
        assert not (dest / "stolen").exists()

    def test_whiteout_becomes_an_overlay_whiteout(self, dest):
        stats = apply(make_tar(entry("etc/.wh.motd", uid=5, gid=6)), dest)
        st = os.lstat(dest / "etc/motd")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert (st.st_uid, st.st_gid) == (5, 6)
        assert not (dest / "etc/.wh.motd").exists()
        assert stat.S_IMODE(st.st_mode) == 0
        assert stats.whiteouts == 1

    def test_whiteout_replaces_an_earlier_entry_of_the_same_layer(self, dest):
        apply(make_tar(entry("d/f", data=b"x"), entry(".wh.d")), dest)
        assert stat.S_ISCHR(os.lstat(dest / "d").st_mode)

    def test_opaque_marker_sets_the_overlay_xattr(self, dest):
        stats = apply(make_tar(entry("var/lib/", tarfile.DIRTYPE), entry("var/lib/.wh..wh..opq")), dest)
        assert os.getxattr(dest / "var/lib", OPAQUE_XATTR) == b"y"
        assert os.listdir(dest / "var/lib") == []
        assert stats.opaque_dirs == 1

    def test_overlay_xattrs_in_the_tar_are_not_applied(self, dest):
        data = make_tar(entry("d/", tarfile.DIRTYPE, xattrs={"trusted.overlay.redirect": b"/etc"}))
        stats = apply(data, dest)
        assert "trusted.overlay.redirect" not in os.listxattr(dest / "d")
        assert any("trusted.overlay.redirect" in e for e in stats.xattr_errors)

    def test_entries_replace_entries_of_another_type(self, dest, outside):
        data = make_tar(
            entry("a/", tarfile.DIRTYPE),
            entry("a/child", data=b"c"),
            entry("a", data=b"file over dir"),
            entry("b", data=b"file"),
            entry("b/", tarfile.DIRTYPE, mode=0o750),
            entry("c", tarfile.SYMTYPE, linkname=str(outside)),
            entry("c/", tarfile.DIRTYPE),
            entry("c/inside", data=b"i"),
            entry("d/", tarfile.DIRTYPE),
            entry("d/keep", data=b"k"),
            entry("d/", tarfile.DIRTYPE, mode=0o700),
        )
        apply(data, dest)
        assert (dest / "a").read_bytes() == b"file over dir"
        assert (dest / "b").is_dir() and stat.S_IMODE(os.stat(dest / "b").st_mode) == 0o750
        assert not os.path.islink(dest / "c") and (dest / "c/inside").read_bytes() == b"i"
        assert os.listdir(outside) == []
        # A directory entry over a directory keeps its content and updates its mode.
        assert (dest / "d/keep").read_bytes() == b"k"
        assert stat.S_IMODE(os.stat(dest / "d").st_mode) == 0o700

    def test_a_file_in_the_way_of_a_parent_is_refused(self, dest):
        with pytest.raises(UnsafeArchive, match="f is not a directory"):
            apply(make_tar(entry("f", data=b"x"), entry("f/g", data=b"y")), dest)

    def test_negative_size_is_refused_without_hanging(self, dest):
        good = make_tar(entry("ok", data=b"fine"))
        neg = tarfile.TarInfo("neg")
        neg.size = -512
        header = neg.tobuf(tarfile.GNU_FORMAT)
        data = good[:1024] + header + header + b"\0" * 2048
        outcome = []
        thread = threading.Thread(target=lambda: outcome.append(_raises(apply, data, dest)), daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "apply_tar hung on a negative size"
        assert "negative size" in str(outcome[0])

    def test_negative_pax_size_is_refused(self, dest):
        info, _ = entry("neg", data=b"")
        info.pax_headers = {"size": "-1024"}
        with pytest.raises(UnsafeArchive, match="negative size"):
            apply(make_tar((info, b"")), dest)

    def test_a_corrupt_header_mid_stream_is_an_error_not_the_end(self, dest):
        data = bytearray(make_tar(entry("first", data=b"1"), entry("second", data=b"2")))
        second = data.find(b"second")
        data[second + 100] ^= 0xFF  # Inside the mode field: the checksum no longer matches.
        with pytest.raises(UnsafeArchive, match="invalid tar header"):
            apply(bytes(data), dest)

    def test_garbage_is_not_a_tar(self, dest):
        with pytest.raises(UnsafeArchive, match="invalid tar"):
            apply(b"this is not a tar" * 100, dest)

    def test_unknown_aufs_metadata_is_skipped(self, dest):
        apply(make_tar(entry(".wh..wh.plnk/", tarfile.DIRTYPE), entry(".wh..wh..plnk/1.2", data=b"x")), dest)
        assert os.listdir(dest) == []


def _raises(func, *args):
    try:
        func(*args)
    except Exception as exc:  # Returned to the test thread for inspection.
        return exc
    return None


def snapshot(root):
    """Everything observable about a tree: type, mode, owner, size, content, mtime, rdev, xattrs, links."""
    found = {}
    inodes = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                xattrs = {k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path, follow_symlinks=False)}
            content = None
            if stat.S_ISREG(st.st_mode):
                content = open(path, "rb").read()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            found[rel] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content,
                int(st.st_mtime), st.st_rdev, xattrs, inodes.setdefault(st.st_ino, rel),
            )
    return found


@pytest.fixture
def upper(tmp_path):
    """An overlay upper directory with one of everything, as a container leaves it."""
    u = tmp_path / "upper"
    (u / "etc").mkdir(parents=True)
    (u / "etc/passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    os.chmod(u / "etc/passwd", 0o644)
    (u / "usr/bin").mkdir(parents=True)
    (u / "usr/bin/su").write_bytes(b"su")
    os.chown(u / "usr/bin/su", 0, 0)
    os.chmod(u / "usr/bin/su", 0o4755)
    (u / "usr/bin/ping").write_bytes(b"ping")
    os.setxattr(u / "usr/bin/ping", "security.capability", CAP)
    os.link(u / "usr/bin/su", u / "usr/bin/su-hardlink")
    os.symlink("/usr/bin/su", u / "usr/bin/sudo")
    (u / "home/app").mkdir(parents=True)
    (u / "home/app/data").write_bytes(b"\0" * 5000)
    os.chown(u / "home/app/data", 1000, 1000)
    os.chown(u / "home/app", 1000, 1000)
    os.setxattr(u / "home/app/data", "user.tag", b"\xff\x00")
    (u / "dev").mkdir()
    os.mknod(u / "dev/tty9", stat.S_IFCHR | 0o620, os.makedev(4, 9))
    os.mkfifo(u / "dev/pipe", 0o600)
    os.mknod(u / "etc/shadow", stat.S_IFCHR, os.makedev(0, 0))  # Deleted by the container.
    (u / "var/cache").mkdir(parents=True)
    os.setxattr(u / "var/cache", OPAQUE_XATTR, b"y")
    (u / "var/cache/new").write_bytes(b"new")
    for dirpath, dirnames, filenames in os.walk(u):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
    return u


class TestPackDir:
    def test_it_converts_overlay_whiteouts_and_opaque_dirs(self, upper):
        out = io.BytesIO()
        count = pack_dir(str(upper), out)
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
            members = {m.name: m for m in tf.getmembers()}
        assert count == len(members)
        assert members["etc/.wh.shadow"].isreg() and members["etc/.wh.shadow"].size == 0
        assert "etc/shadow" not in members
        assert members["var/cache/.wh..wh..opq"].isreg()
        assert "SCHILY.xattr.trusted.overlay.opaque" not in members["var/cache"].pax_headers
        assert members["usr/bin/su"].mode == 0o4755
        assert members["usr/bin/su-hardlink"].islnk()
        assert members["usr/bin/su-hardlink"].linkname == "usr/bin/su"
        assert members["usr/bin/ping"].pax_headers["SCHILY.xattr.security.capability"].encode() == CAP
        assert (members["home/app/data"].uid, members["home/app/data"].gid) == (1000, 1000)
        assert members["dev/tty9"].ischr() and (members["dev/tty9"].devmajor, members["dev/tty9"].devminor) == (4, 9)
        assert members["dev/pipe"].isfifo()
        names = list(members)
        # Sorted by the names in the upper directory, parents first.
        assert names.index("etc") < names.index("etc/passwd") < names.index("etc/.wh.shadow")
        assert names.index("var/cache") < names.index("var/cache/.wh..wh..opq") < names.index("var/cache/new")

    def test_it_is_deterministic(self, upper):
        first, second = io.BytesIO(), io.BytesIO()
        pack_dir(str(upper), first)
        os.utime(upper / "etc/passwd", (MTIME, MTIME + 0.5))  # Sub-second noise is dropped.
        pack_dir(str(upper), second)
        assert first.getvalue() == second.getvalue()

    def test_round_trip_through_apply_tar(self, upper, tmp_path):
        out = io.BytesIO()
        pack_dir(str(upper), out)
        restored = tmp_path / "restored"
        restored.mkdir()
        apply_tar(Stream(out.getvalue()), str(restored))
        assert snapshot(restored) == snapshot(upper)

    def test_sockets_are_skipped(self, tmp_path):
        import socket

        src = tmp_path / "src"
        src.mkdir()
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(src / "sock"))
        try:
            out = io.BytesIO()
            assert pack_dir(str(src), out) == 0
        finally:
            sock.close()
