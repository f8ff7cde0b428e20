"""favordynmods: the worker remounts the host's cgroup2 hierarchy with it at start, so that moving
a process into a cgroup (each container's create) no longer waits for an RCU grace period
(runtime/cgroups.py ``favor_dynmods``)."""

import os

import pytest

from runtime import cgroups

MOUNTINFO = (
    "30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n"
    "31 25 0:27 / /sys/fs/cgroup/pids rw,relatime shared:5 - cgroup cgroup rw,pids\n"
    "40 25 0:28 / /tmp/a\\040b rw,relatime - cgroup2 none rw,favordynmods\n"
    "41 25 0:29 / /proc rw,nosuid - proc proc rw\n"
)


def test_cgroup2_mounts_reads_mountinfo(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert cgroups.cgroup2_mounts(str(info)) == [
        ("/sys/fs/cgroup", ["rw", "nosuid", "nodev", "noexec", "relatime"],
         ["rw", "nsdelegate", "memory_recursiveprot"]),
        ("/tmp/a b", ["rw", "relatime"], ["rw", "favordynmods"]),
    ]


def test_the_remount_repeats_the_mount_options():
    options = cgroups.remount_options(["ro", "nosuid", "relatime"],
                                      ["rw", "nsdelegate", "memory_recursiveprot"])
    assert options == "remount,ro,nosuid,relatime,nsdelegate,memory_recursiveprot,favordynmods"
    assert cgroups.remount_options(["rw"], ["rw"]) == "remount,rw,favordynmods"


def test_already_on_changes_nothing(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)  # /tmp/a b has it: no remount is tried (it would fail: no such mount)
    assert cgroups.favor_dynmods(str(info)) is True


def test_no_cgroup2_mount_says_so(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO.splitlines()[1] + "\n")
    assert cgroups.favor_dynmods(str(info)) is False


@pytest.mark.skipif(os.geteuid() != 0, reason="remounts the host's cgroup2: needs root")
def test_the_remount_keeps_every_option_of_the_mount():
    before = cgroups.cgroup2_mounts()
    if not before:
        pytest.skip("no cgroup2 mounted on this host")
    if not cgroups.favor_dynmods():
        pytest.skip("this kernel has no favordynmods (Linux 6.1)")
    after = {point: (options, supers) for point, options, supers in cgroups.cgroup2_mounts()}
    for point, options, supers in before:
        now_options, now_supers = after[point]
        assert "favordynmods" in now_supers
        assert set(options) <= set(now_options), point  # nosuid, nodev, noexec, ro kept
        assert set(supers) <= set(now_supers), point  # nsdelegate, memory_recursiveprot kept


def test_a_read_only_bind_of_a_writable_hierarchy_is_never_remounted(tmp_path):
    """A remount applies its ro/rw to the hierarchy itself: a read-only bind (in a container, say)
    of a writable cgroup2 would make it read-only for the whole host. Such a mount is left alone."""
    info = tmp_path / "mountinfo"
    info.write_text("30 25 0:26 / /sys/fs/cgroup ro,nosuid,relatime - cgroup2 cgroup2 rw,nsdelegate\n")
    assert cgroups.favor_dynmods(str(info)) is False
