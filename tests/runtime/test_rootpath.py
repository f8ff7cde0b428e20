"""Tests for runtime.rootpath: paths resolved inside a root as the container would resolve them."""

import os

import pytest

from runtime import rootpath
from runtime.errors import InvalidArgument, NotFound


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text("container\n")
    (r / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", r / "lib")
    os.symlink("/", r / "slash")
    os.symlink("../../../..", r / "etc" / "up")
    os.symlink("loop2", r / "loop1")
    os.symlink("loop1", r / "loop2")
    os.symlink("/etc/passwd", r / "pw")
    fd = os.open(r, os.O_RDONLY | os.O_DIRECTORY)
    yield r, fd
    os.close(fd)


def test_split_path_cleans_lexically():
    assert rootpath.split_path("etc/../var//log/") == ["var", "log"]
    assert rootpath.split_path("../../x") == ["x"]
    assert rootpath.split_path("/") == [] == rootpath.split_path("")


def test_symlinks_are_followed_inside_the_root(root):
    r, fd = root
    with rootpath.resolve(fd, ["etc", "up", "etc", "passwd"]) as res:
        assert res.path == "/etc/passwd"
    with rootpath.resolve(fd, ["slash", "slash", "lib"], follow_final=True) as res:
        assert res.path == "/usr/lib"
    with rootpath.resolve(fd, ["pw"]) as res:
        assert res.path == "/pw" and res.leaf == "pw"  # the final link is not followed by default
    with rootpath.resolve(fd, ["pw"], follow_final=True) as res:
        assert res.path == "/etc/passwd"
        assert os.stat(res.leaf, dir_fd=res.parent_fd).st_size == len("container\n")
    with rootpath.resolve(fd, ["etc", "up"], follow_final=True) as res:
        assert res.path == "/" and res.leaf is None


def test_loops_missing_paths_and_files_on_the_way(root):
    _, fd = root
    with pytest.raises(InvalidArgument, match="too many levels"):
        rootpath.resolve(fd, ["loop1", "x"])
    with pytest.raises(NotFound):
        rootpath.resolve(fd, ["nope", "x"])
    with pytest.raises(InvalidArgument, match="not a directory"):
        rootpath.resolve(fd, ["etc", "passwd", "x"])
    with rootpath.resolve(fd, ["nope", "x", "..", "y"], must_exist=False, lenient=True) as res:
        assert res.path == "/nope/y" and res.stat is None


def test_open_dir_creates_missing_directories_through_symlinks(root):
    r, fd = root
    dir_fd, names = rootpath.open_dir(fd, ["lib", "new", "deeper"], create=True)
    os.close(dir_fd)
    assert names == ["usr", "lib", "new", "deeper"]
    assert (r / "usr" / "lib" / "new" / "deeper").is_dir()
    assert oct((r / "usr" / "lib" / "new").stat().st_mode & 0o7777) == "0o755"
    dir_fd, names = rootpath.open_dir(fd, ["slash", "made"], create=True)
    os.close(dir_fd)
    assert (r / "made").is_dir() and not os.path.exists("/made")
