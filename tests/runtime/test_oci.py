"""Tests for runtime.oci and the cgroup layout crun needs (runtime.cgroups): what does not need a
container. The containers themselves run under both runtimes in test_containers.py."""

import base64
import os

from runtime import cgroups
from runtime.oci import OciRuntime, SeccompCache, runc_message


def test_crun_and_runc_errors_read_alike():
    assert runc_message('time="t" level=error msg="container \\"x\\" does not exist"\n') == 'container "x" does not exist'
    assert runc_message("executable file `ls` not found in $PATH: No such file or directory\n") == (
        'exec: "ls": executable file not found in $PATH')
    assert runc_message("executable file `/bin/x` not found in $PATH: No such file or directory") == (
        'exec: "/bin/x": stat /bin/x: no such file or directory')
    assert runc_message("open executable: Permission denied") == "open executable: Permission denied"


def test_a_container_crun_does_not_know_is_not_found(tmp_path):
    crun = OciRuntime("crun", "crun", str(tmp_path / "crun"))
    assert crun._missing(f"error opening file `{tmp_path}/crun/abc/status`: No such file or directory")
    assert not crun._missing("open `/etc/x`: No such file or directory")
    assert crun._missing(f"cannot open directory '{tmp_path}/crun/abc': No such file or directory")
    assert not crun._missing(f"open `{tmp_path}/crun/abc/config.json`: No such file or directory")
    assert crun.state("abc") is None and not crun.exists("abc")


def test_the_unified_hierarchy_of_a_hybrid_host_is_read_for_controllers(tmp_path):
    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    assert cgroups.hybrid_v2_controllers(str(root)) == []  # v1 only
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.controllers").write_text("\n")
    assert cgroups.hybrid_v2_controllers(str(root)) == []  # hybrid, as crun wants it
    (root / "unified" / "cgroup.controllers").write_text("hugetlb rdma\n")
    assert cgroups.hybrid_v2_controllers(str(root)) == ["hugetlb", "rdma"]
    (root / "cgroup.controllers").write_text("cpu memory\n")
    assert cgroups.hybrid_v2_controllers(str(root)) == []  # v2 only: crun's own layout


def test_an_unmounted_unified_directory_is_told_apart(tmp_path):
    """crun takes an empty, unmounted ``unified`` directory of a v1 host for a hierarchy (and writes
    cgroup.procs files into the tmpfs): Berth mounts cgroup2 there first (tested live, in a private
    mount namespace, by hand: see docs/architecture.md)."""
    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    assert not cgroups.stray_unified_dir(str(root))  # v1 without a unified directory
    (root / "unified").mkdir()
    assert cgroups.stray_unified_dir(str(root))
    (root / "cgroup.controllers").write_text("cpu\n")
    assert not cgroups.stray_unified_dir(str(root))  # a v2 host


def test_the_seccomp_cache_keys_on_the_profile_and_the_binary(tmp_path):
    binary = tmp_path / "crun"
    binary.write_bytes(b"#!/bin/sh\n")
    oci = OciRuntime("crun", str(binary), str(tmp_path / "state"))
    cache = SeccompCache(str(tmp_path / "cache"))
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    assert cache.get(profile, oci) is None
    filter_bytes = bytes(range(16))  # two instructions
    os.makedirs(tmp_path / "state" / "c1")
    (tmp_path / "state" / "c1" / "seccomp.bpf").write_bytes(filter_bytes)
    cache.put(profile, oci, "c1")
    assert base64.b64decode(cache.get(profile, oci)) == filter_bytes
    assert cache.get({**profile, "defaultAction": "SCMP_ACT_KILL"}, oci) is None
    (tmp_path / "state" / "c2").mkdir()
    (tmp_path / "state" / "c2" / "seccomp.bpf").write_bytes(b"odd")  # not whole instructions
    cache.put({"other": 1}, oci, "c2")
    assert cache.get({"other": 1}, oci) is None
    cache.drop(profile, oci)  # a create that loaded it failed
    assert cache.get(profile, oci) is None and SeccompCache(str(tmp_path / "cache")).get(profile, oci) is None
    cache.put(profile, oci, "c1")
    binary.write_bytes(b"#!/bin/sh\n# a new build\n")
    assert SeccompCache(str(tmp_path / "cache")).get(profile, oci) is None
    assert [n for n in os.listdir(tmp_path / "cache") if n.endswith(".tmp")] == []
