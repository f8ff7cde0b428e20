"""Tests for runtime.spec (the OCI spec options) and the pure helpers of containers, state and monitor."""

import os
import resource

import pytest

from runtime import spec as s
from runtime.containers import (
    ContainerConfig,
    ContainerRecord,
    Mount,
    human_duration,
    merge_image_config,
    parse_ps,
    parse_signal,
    status_text,
    validate_name,
)
from runtime.errors import EngineError, InvalidArgument, InvalidState
from runtime.monitor import LogReader, format_time_ns, parse_time_ns
from runtime.state import ContainerState, check_state


@pytest.fixture
def rootfs(tmp_path):
    """A rootfs with /etc/passwd and /etc/group, and a few traps."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "# a comment\n"
        "app:x:1000:1000:App:/home/app:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nstaff:x:50:app,other\nwheel:x:10:app\n")
    return root


#
# Defaults
#


def test_the_default_spec_has_dockers_defaults():
    spec = s.default_spec()
    assert spec["process"]["capabilities"]["bounding"] == list(s.DEFAULT_CAPABILITIES)
    assert "inheritable" not in spec["process"]["capabilities"]
    assert spec["process"]["noNewPrivileges"] is True
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/mqueue", "/dev/shm"]
    assert "/proc/kcore" in spec["linux"]["maskedPaths"] and "/proc/sys" in spec["linux"]["readonlyPaths"]
    assert {ns["type"] for ns in spec["linux"]["namespaces"]} == {"pid", "ipc", "uts", "mount", "network"}
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_generate_applies_options_in_order_and_copies_the_base():
    base = s.default_spec()
    spec = s.generate(s.with_process_args(["a"]), s.with_process_args(["b", "c"]), s.with_hostname("h"),
                      s.with_cwd("/w"), s.with_root("/r"), s.with_readonly_rootfs(), base=base)
    assert spec["process"]["args"] == ["b", "c"] and spec["process"]["cwd"] == "/w"
    assert spec["hostname"] == "h"
    assert spec["root"] == {"path": "/r", "readonly": True}
    assert base["process"]["args"] == []
    with pytest.raises(InvalidArgument, match="No command specified"):
        s.with_process_args([])
    with pytest.raises(InvalidArgument, match="absolute path"):
        s.with_cwd("relative")


def test_env_later_values_win_and_bare_keys_are_dropped():
    spec = s.generate(s.with_env(["A=1", "B=2", "NOVALUE"]), s.with_env(["A=3", "PATH=/x"]))
    assert spec["process"]["env"] == ["B=2", "A=3", "PATH=/x"]


def test_tty_sets_the_console_size_and_term():
    spec = s.generate(s.with_tty(True, height=30, width=100))
    assert spec["process"]["terminal"] is True
    assert spec["process"]["consoleSize"] == {"height": 30, "width": 100}
    assert "TERM=xterm" in spec["process"]["env"]
    spec = s.generate(s.with_env(["TERM=vt100"]), s.with_tty(True))
    assert [e for e in spec["process"]["env"] if e.startswith("TERM=")] == ["TERM=vt100"]
    assert "consoleSize" not in s.generate(s.with_tty(False))["process"]


#
# Users
#


def test_users_resolve_by_name_number_and_group(rootfs):
    app = s.resolve_user(str(rootfs), "app")
    assert (app.uid, app.gid, app.additional_gids, app.home) == (1000, 1000, [50, 10], "/home/app")
    assert s.resolve_user(str(rootfs), "").to_spec() == {"uid": 0, "gid": 0}
    assert s.resolve_user(str(rootfs), "1000").home == "/home/app"
    assert s.resolve_user(str(rootfs), "app:staff").to_spec() == {"uid": 1000, "gid": 50}
    assert s.resolve_user(str(rootfs), "4242:4343").to_spec() == {"uid": 4242, "gid": 4343}
    unknown = s.resolve_user(str(rootfs), "4242")
    assert (unknown.uid, unknown.gid, unknown.home) == (4242, 0, "/")
    with pytest.raises(InvalidArgument, match="unable to find user ghost: no matching entries in passwd"):
        s.resolve_user(str(rootfs), "ghost")
    with pytest.raises(InvalidArgument, match="unable to find group ghosts"):
        s.resolve_user(str(rootfs), "app:ghosts")


def test_with_user_sets_home_unless_the_env_has_it(rootfs):
    spec = s.generate(s.with_env(["A=1"]), s.with_user(str(rootfs), "app"))
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [50, 10]}
    assert "HOME=/home/app" in spec["process"]["env"]
    spec = s.generate(s.with_env(["HOME=/mine"]), s.with_user(str(rootfs), "app"))
    assert [e for e in spec["process"]["env"] if e.startswith("HOME=")] == ["HOME=/mine"]


def test_passwd_symlinks_never_leave_the_rootfs(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "srv").mkdir()
    (root / "srv" / "passwd").write_text("inside:x:7:7::/in:/bin/sh\n")
    # An absolute link is taken inside the rootfs; "../.." stops at its root.
    os.symlink("/srv/passwd", root / "etc" / "passwd")
    assert s.resolve_user(str(root), "inside").uid == 7
    os.unlink(root / "etc" / "passwd")
    os.symlink("../../../../../../outside/passwd", root / "etc" / "passwd")
    with pytest.raises(InvalidArgument, match="unable to find user evil"):
        s.resolve_user(str(root), "evil")
    os.unlink(root / "etc" / "passwd")
    os.symlink(str(outside / "passwd"), root / "etc" / "passwd")
    with pytest.raises(InvalidArgument, match="unable to find user evil"):
        s.resolve_user(str(root), "evil")
    # A symlinked directory is followed inside the rootfs too; a loop is an error, a FIFO is no file.
    os.unlink(root / "etc" / "passwd")
    os.symlink("passwd", root / "etc" / "passwd")
    with pytest.raises(OSError):
        s.read_file_in_root(str(root), "/etc/passwd")
    os.unlink(root / "etc" / "passwd")
    os.mkfifo(root / "etc" / "passwd")
    assert s.read_file_in_root(str(root), "/etc/passwd") is None
    os.unlink(root / "etc" / "passwd")
    os.rmdir(root / "etc")
    os.symlink("/srv", root / "etc")
    assert s.read_file_in_root(str(root), "/etc/passwd").startswith(b"inside:")


#
# Privileges
#


def test_capabilities_follow_dockers_add_and_drop_rules():
    assert s.effective_capabilities() == list(s.DEFAULT_CAPABILITIES)
    caps = s.effective_capabilities(cap_add=["net_admin"], cap_drop=["CAP_CHOWN", "mknod"])
    assert "CAP_NET_ADMIN" in caps and "CAP_CHOWN" not in caps and "CAP_MKNOD" not in caps
    assert s.effective_capabilities(cap_drop=["ALL"]) == []
    assert s.effective_capabilities(cap_drop=["ALL"], cap_add=["CHOWN"]) == ["CAP_CHOWN"]
    everything = s.effective_capabilities(cap_add=["ALL"], cap_drop=["SYS_ADMIN"])
    assert "CAP_SYS_ADMIN" not in everything and "CAP_NET_ADMIN" in everything
    # Never more than this process has (no CAP_SYS_RESOURCE on some hosts).
    assert set(s.effective_capabilities(privileged=True)) == set(s.host_capabilities())
    with pytest.raises(InvalidArgument, match='unknown capability: "CAP_WHAT"'):
        s.effective_capabilities(cap_add=["what"])


def test_the_seccomp_profile_gates_syscalls_on_capabilities():
    profile = s.default_seccomp_profile(s.DEFAULT_CAPABILITIES, machine="x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]  # Docker's
    # native_only (opt-in): the 32-bit ABIs only for an image built for them.
    native = s.default_seccomp_profile(s.DEFAULT_CAPABILITIES, machine="x86_64", image_arch="amd64", native_only=True)
    assert native["architectures"] == ["SCMP_ARCH_X86_64"]
    compat = s.default_seccomp_profile(s.DEFAULT_CAPABILITIES, machine="x86_64", image_arch="386", native_only=True)
    assert compat["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert s.default_seccomp_profile([], machine="aarch64", image_arch="arm", native_only=True)["architectures"] == [
        "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    allowed = profile["syscalls"][0]["names"]
    assert "read" in allowed and "arch_prctl" in allowed and "chroot" in allowed
    assert "mount" not in allowed and "unshare" not in allowed and "reboot" not in allowed
    clone = [r for r in profile["syscalls"] if r["names"] == ["clone"]]
    assert clone and clone[0]["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    assert any(r["names"] == ["clone3"] and r["errnoRet"] == 38 for r in profile["syscalls"])
    admin = s.default_seccomp_profile([*s.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"], machine="x86_64")
    assert "mount" in admin["syscalls"][0]["names"]
    assert not any(r["names"] == ["clone3"] for r in admin["syscalls"])
    no_chroot = s.default_seccomp_profile(["CAP_CHOWN"], machine="aarch64")
    assert "chroot" not in no_chroot["syscalls"][0]["names"]
    assert no_chroot["architectures"][0] == "SCMP_ARCH_AARCH64"


def test_a_runc_without_seccomp_is_a_clear_error():
    s.check_seccomp_support({"linux": {"seccomp": {"enabled": True}}})
    s.check_seccomp_support(None)  # A runc without `features`: assumed able.
    with pytest.raises(EngineError, match="cannot apply seccomp profiles .* seccomp=unconfined"):
        s.check_seccomp_support({"linux": {"seccomp": {"enabled": False}}}, "/usr/sbin/runc")
    with pytest.raises(EngineError, match="built without libseccomp"):
        s.check_seccomp_support({"linux": {}})


def test_rlimits_never_exceed_the_hosts_hard_limit():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    spec = s.generate(s.with_rlimits())
    (nofile,) = spec["process"]["rlimits"]
    assert nofile["type"] == "RLIMIT_NOFILE"
    assert nofile["hard"] == min(s.DEFAULT_NOFILE, hard) and nofile["soft"] <= nofile["hard"]
    (core,) = s.generate(s.with_rlimits({"RLIMIT_CORE": (10, 5)}))["process"]["rlimits"]
    assert core["soft"] <= core["hard"]
    with pytest.raises(InvalidArgument):
        s.with_rlimits({"RLIMIT_NOPE": (1, 1)})


def test_resources_memory_cpu_and_pids():
    spec = s.generate(s.with_resources(memory=64 << 20, nano_cpus=1_500_000_000, pids_limit=100))
    resources = spec["linux"]["resources"]
    assert resources["memory"]["limit"] == 64 << 20
    assert resources["cpu"] == {"quota": 150000, "period": 100000}
    assert resources["pids"] == {"limit": 100}
    assert "memory" not in s.generate(s.with_resources())["linux"]["resources"]
    with pytest.raises(InvalidArgument, match="Minimum memory limit allowed is 6MB"):
        s.with_resources(memory=1 << 20)


def test_namespaces_cgroups_and_mounts():
    spec = s.generate(s.with_namespaces(network="host"), s.with_cgroups_path("/berth/x"))
    assert "network" not in {ns["type"] for ns in spec["linux"]["namespaces"]}
    assert spec["linux"]["cgroupsPath"] == "/berth/x"
    joined = s.generate(s.with_namespaces(network="/proc/1/ns/net"))
    assert {"type": "network", "path": "/proc/1/ns/net"} in joined["linux"]["namespaces"]
    spec = s.generate(s.with_mounts([
        {"source": "/h/b", "destination": "/a/b/"},
        {"source": "/h/a", "destination": "/a", "read_only": True},
        {"source": "/h/shm", "destination": "/dev/shm"}]))
    user = [m for m in spec["mounts"] if m["type"] == "bind"]
    assert [m["destination"] for m in user] == ["/a", "/a/b", "/dev/shm"]
    assert user[0]["options"] == ["rbind", "rprivate", "ro"]
    assert len([m for m in spec["mounts"] if m["destination"] == "/dev/shm"]) == 1
    with pytest.raises(InvalidArgument, match="must not contain"):
        s.with_mounts([{"source": "/x", "destination": "/a/../b"}])
    etc = s.generate(s.with_etc_files(hosts="/c/hosts", hostname=None, resolv_conf="/c/resolv",
                                      read_only=True))
    binds = {m["destination"]: m for m in etc["mounts"] if m["type"] == "bind"}
    assert set(binds) == {"/etc/hosts", "/etc/resolv.conf"} and "ro" in binds["/etc/hosts"]["options"]


def test_hosts_and_resolv_conf_are_written_as_docker_does():
    hosts = s.hosts_file("box", ip="10.0.0.2", extra_hosts=["db:10.0.0.9", "v6:::1"])
    assert hosts.startswith("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    assert "10.0.0.9\tdb\n" in hosts and "::1\tv6\n" in hosts and hosts.endswith("10.0.0.2\tbox\n")
    with pytest.raises(InvalidArgument):
        s.hosts_file(extra_hosts=["nocolon"])
    assert s.hosts_file("box", extra_hosts=["db=10.0.0.9"], base="127.0.0.1 host-local\n") == (
        "127.0.0.1 host-local\n10.0.0.9\tdb\n")
    host = b"# generated\nnameserver 127.0.0.53\nnameserver 192.168.1.1\nsearch lan\noptions edns0\n"
    assert s.resolv_conf(host) == "nameserver 192.168.1.1\nsearch lan\noptions edns0\n"
    assert s.resolv_conf(b"nameserver 127.0.0.1\n") == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    assert s.resolv_conf(b"nameserver 127.0.0.1\n", host_network=True) == "nameserver 127.0.0.1\n"
    assert s.resolv_conf(host, dns=["1.1.1.1"], dns_search=["."], dns_options=["ndots:2"]) == (
        "nameserver 1.1.1.1\noptions ndots:2\n")


#
# Docker's rules (containers.py) and the state machine
#


def test_image_config_merges_as_docker_merges_it():
    image = {"Entrypoint": ["/ep"], "Cmd": ["default"], "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/app",
             "User": "app", "StopSignal": "SIGQUIT", "Volumes": {"/data": {}, "/logs/": {}},
             "ExposedPorts": {"80/tcp": {}}, "Labels": {"x": "image"}}
    merged = merge_image_config(ContainerConfig(image="i", env=["A=2"], labels={"x": "run"},
                                                mounts=[Mount("/h", "/logs")]), image)
    assert (merged.entrypoint, merged.cmd) == (["/ep"], ["default"])
    assert merged.env == ["PATH=/bin", "A=2"] and merged.working_dir == "/app" and merged.user == "app"
    assert merged.stop_signal == "SIGQUIT" and merged.exposed_ports == {"80/tcp": {}}
    assert merged.labels == {"x": "run"}
    assert [(m.target, m.kind) for m in merged.mounts] == [("/logs", "bind"), ("/data", "volume")]
    merged = merge_image_config(ContainerConfig(image="i", cmd=["x"]), image)
    assert (merged.entrypoint, merged.cmd) == (["/ep"], ["x"])
    merged = merge_image_config(ContainerConfig(image="i", entrypoint=["/other"]), image)
    assert (merged.entrypoint, merged.cmd) == (["/other"], None)
    merged = merge_image_config(ContainerConfig(image="i", entrypoint=[""], cmd=["sh"]), image)
    assert (merged.entrypoint, merged.cmd) == (None, ["sh"])
    merged = merge_image_config(ContainerConfig(image="i", user="root", working_dir="/w"), image)
    assert merged.user == "root" and merged.working_dir == "/w"


def test_names_and_signals_are_checked_as_docker_does():
    assert validate_name("/web.1") == "web.1" and validate_name("a_b-c") == "a_b-c"
    for bad in ("a", "-a", "a b", "ä1", ""):
        with pytest.raises(InvalidArgument, match="Invalid container name"):
            validate_name(bad)
    assert parse_signal("KILL") == parse_signal("SIGKILL") == parse_signal("9") == 9
    assert parse_signal("sigkill") == 9
    assert parse_signal("SIGRTMIN+1") > parse_signal("SIGRTMIN+0")
    for bad in ("NOPE", "0", "999", "SIGRTMIN+99"):
        with pytest.raises(InvalidArgument, match="Invalid signal"):
            parse_signal(bad)


def test_status_and_durations_read_like_docker_ps():
    assert [human_duration(x) for x in (0.5, 1, 59, 60, 119, 3000, 3600, 7200, 3 * 86400, 20 * 86400)] == [
        "Less than a second", "1 second", "59 seconds", "About a minute", "About a minute", "50 minutes",
        "About an hour", "2 hours", "3 days", "2 weeks"]
    record = ContainerRecord(id="a" * 64, name="n", image_id="sha256:x", image_ref="i",
                             config=ContainerConfig(image="i"), created="2026-01-01T00:00:00Z")
    now = parse_time_ns("2026-01-01T00:01:05Z")
    assert status_text(record, now) == "Created"
    record.state, record.started_at = ContainerState.RUNNING, "2026-01-01T00:00:00Z"
    assert status_text(record, now) == "Up About a minute"
    record.state = ContainerState.PAUSED
    assert status_text(record, now) == "Up About a minute (Paused)"
    record.state, record.exit_code, record.finished_at = ContainerState.EXITED, 3, "2026-01-01T00:01:00Z"
    assert status_text(record, now) == "Exited (3) 5 seconds ago"
    record.state = ContainerState.DEAD
    assert status_text(record, now) == "Dead"


def test_state_checks_use_dockers_words():
    S = ContainerState
    assert S.CONFIGURED.docker_status() == "created" and S.STOPPING.docker_status() == "running"
    check_state("start", S.EXITED, "c")
    with pytest.raises(InvalidState, match="cannot start a paused container, try unpause instead"):
        check_state("start", S.PAUSED, "c")
    with pytest.raises(InvalidState, match="You cannot remove a running container c. Stop the container"):
        check_state("remove", S.RUNNING, "c")
    with pytest.raises(InvalidState, match="You cannot remove a paused container c"):
        check_state("remove", S.PAUSED, "c")
    with pytest.raises(InvalidState, match="Container c is not paused"):
        check_state("unpause", S.RUNNING, "c")
    with pytest.raises(InvalidState, match="Container c is not running"):
        check_state("exec", S.EXITED, "c")
    with pytest.raises(InvalidState, match="removal of container c is already in progress"):
        check_state("stop", S.REMOVING, "c")


def test_ps_output_is_filtered_to_the_containers_pids():
    out = ("UID          PID    PPID  C STIME TTY          TIME CMD\n"
           "root           1       0  0 10:00 ?        00:00:01 /sbin/init splash\n"
           "root        4242       1  0 10:01 ?        00:00:00 sleep 1000\n")
    top = parse_ps(out, {4242})
    assert top["Titles"][-1] == "CMD"
    assert top["Processes"] == [["root", "4242", "1", "0", "10:01", "?", "00:00:00", "sleep 1000"]]
    with pytest.raises(InvalidArgument, match="Couldn't find PID field"):
        parse_ps("USER CMD\nroot x\n", {1})


#
# The k8s-file log
#


def test_the_log_reader_reassembles_partial_lines(tmp_path):
    log = tmp_path / "ctr.log"
    log.write_bytes(
        b"2026-11-27T18:10:34.917373622+00:00 stdout P part\n"
        b"2026-11-27T18:10:34.917373623+00:00 stderr F err\n"
        b"2026-11-27T18:10:35.000000000+00:00 stdout F ial\n"
        b"2026-11-27T20:10:36.5+02:00 stdout F \r\n"
        b"2026-11-27T18:10:37.000000000+00:00 stdout P tail"
    )
    reader = LogReader(str(log))
    lines = reader.read_available()
    assert [(r.stream, r.line) for r in lines] == [("stderr", b"err\n"), ("stdout", b"partial\n"),
                                                   ("stdout", b"\r\n")]
    assert lines[1].timestamp == "2026-11-27T18:10:34.917373622Z"
    assert lines[2].timestamp == "2026-11-27T18:10:36.500000000Z"
    with open(log, "ab") as f:
        f.write(b"\n2026-11-27T18:10:38.000000000+00:00 stdout P more\n")
    assert reader.read_available() == []
    assert [(r.stream, r.line) for r in reader.flush()] == [("stdout", b"tailmore")]
    reader.close()


def test_times_round_trip_in_dockers_forms():
    ns = parse_time_ns("2026-11-27T18:10:34.917373620+00:00")
    assert format_time_ns(ns) == "2026-11-27T18:10:34.91737362Z"
    assert format_time_ns(ns, fixed=True) == "2026-11-27T18:10:34.917373620Z"
    assert parse_time_ns("1970-01-01T01:00:00+01:00") == 0
    assert format_time_ns(parse_time_ns("0001-01-01T00:00:00Z")) == "0001-01-01T00:00:00Z"
    with pytest.raises(ValueError):
        parse_time_ns("yesterday")
