"""Tests for runtime.containers: real runc, conmon and overlayfs, with the offline busybox image.

One engine root per module (under /tmp, so the attach socket paths stay short); every test removes
the containers it made (the ``ctr`` fixture), so nothing outlives the module: no mount, no
cgroup, no conmon.
"""

import io
import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from runtime.containers import LOST_EXIT_CODE, ContainerConfig, ContainerStore, Mount
from runtime.errors import AlreadyExists, CommandError, InvalidArgument, InvalidState, NotFound
from runtime.monitor import parse_time_ns, process_start_time
from runtime.rootfs import is_mounted
from runtime.starter import STARTER_CHANGES, write_rootfs
from runtime.state import ContainerState
from tests.dockerspec import validate

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")

S = ContainerState


# The engine (one root per module under /tmp/bt-*), store and ctr fixtures are in conftest.py.
ENGINE_DIR_PREFIX = "bt-"


def output(store, cid, stream="stdout") -> bytes:
    return b"".join(line for s, line, _ in store.logs(cid) if s == stream)


def run(store, ctr, *cmd, **options) -> tuple[int, bytes, bytes]:
    """``docker run``: start, wait, return (exit code, stdout, stderr)."""
    record = ctr(*cmd, **options)
    code = store.wait(record.id, timeout=20)
    return code, output(store, record.id), output(store, record.id, "stderr")


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def cgroup_file(cid, controller, name) -> str:
    with open(f"/sys/fs/cgroup/{controller}/berth/{cid}/{name}") as f:
        return f.read().strip()


#
# Running
#


def test_it_runs_echo_and_keeps_its_output(store, ctr):
    record = ctr("echo", "hello")
    assert record.state is S.RUNNING and record.pid > 0
    assert store.wait(record.id, timeout=10) == 0
    assert output(store, record.id) == b"hello\n"
    record = store.get(record.id)
    assert record.state is S.EXITED and record.exit_code == 0
    assert parse_time_ns(record.finished_at) >= parse_time_ns(record.started_at)


def test_it_records_the_exit_code(store, ctr):
    assert run(store, ctr, "sh", "-c", "exit 3")[0] == 3
    assert store.list(all=True)[0].exit_code == 3


def test_env_workdir_and_user_take_effect(store, ctr):
    code, out, _ = run(store, ctr, "sh", "-c", 'echo "$FOO $HOME"; pwd; id -u; id -g',
                       env=["FOO=bar"], working_dir="/tmp", user="nobody")
    assert code == 0
    assert out == b"bar /home\n/tmp\n65534\n65534\n"
    # Numeric, with a group by name; and a uid the image's passwd does not know.
    assert run(store, ctr, "sh", "-c", "id -u; id -g", user="1:nogroup")[1] == b"1\n65534\n"
    assert run(store, ctr, "sh", "-c", "id -u; id -g; echo $HOME", user="4242")[1] == b"4242\n0\n/\n"
    # The image's PATH and Docker's HOSTNAME are in the environment; a new workdir is created.
    _, out, _ = run(store, ctr, "sh", "-c", "echo $PATH; echo $HOSTNAME; hostname; pwd",
                    working_dir="/new/dir")
    path, env_hostname, hostname, cwd = out.decode().split()
    assert path.startswith("/usr/local/sbin") and env_hostname == hostname and len(hostname) == 12
    assert cwd == "/new/dir"


def test_an_unknown_user_is_refused_at_start(store, ctr):
    record = ctr("true", start=False, user="nosuchuser")
    with pytest.raises(InvalidArgument, match="unable to find user nosuchuser"):
        store.start(record.id)
    assert store.get(record.id).state is S.CONFIGURED


def test_a_missing_command_gives_127_and_stays_created(store, ctr):
    record = ctr("/no/such/binary", start=False)
    with pytest.raises(InvalidArgument, match="no such file or directory"):
        store.start(record.id)
    record = store.get(record.id)
    assert record.state is S.CONFIGURED and record.exit_code == 127 and "no such file" in record.error
    assert store.inspect(record.id)["State"]["Status"] == "created"
    assert not is_mounted(os.path.join(store.root, record.id, "merged"))


def test_image_entrypoint_and_cmd_merge_as_docker_does(engine, store, ctr):
    rootfs = io.BytesIO()
    write_rootfs(rootfs)
    rootfs.seek(0)
    engine.images.import_tar(rootfs, reference="echoer:latest", changes=[
        *STARTER_CHANGES[:1], 'ENTRYPOINT ["echo", "ep"]', 'CMD ["from-image"]', "ENV A=image B=image",
        "WORKDIR /tmp", 'LABEL role=image', "STOPSIGNAL SIGUSR1", "VOLUME /data"])
    record = ctr(image="echoer", env=["B=run"], labels={"who": "me"})
    assert store.wait(record.id, timeout=10) == 0
    assert output(store, record.id) == b"ep from-image\n"
    assert (record.path, record.args) == ("echo", ["ep", "from-image"])
    config = record.config
    assert "A=image" in config.env and "B=run" in config.env and "B=image" not in config.env
    assert config.working_dir == "/tmp" and config.stop_signal == "SIGUSR1"
    assert config.labels == {"role": "image", "who": "me"}
    assert [(m.target, m.kind, m.anonymous) for m in config.mounts] == [("/data", "volume", True)]
    # A cmd replaces the image's Cmd and keeps its Entrypoint.
    assert run(store, ctr, "x", image="echoer")[1] == b"ep x\n"
    # An entrypoint drops the image's Cmd; an empty one clears the image's entrypoint.
    assert run(store, ctr, image="echoer", entrypoint=["echo"])[1] == b"\n"
    assert run(store, ctr, "echo", "plain", image="echoer", entrypoint=[""])[1] == b"plain\n"
    with pytest.raises(InvalidArgument, match="No command specified"):
        store.create(ContainerConfig(image="echoer", entrypoint=[""]))


#
# Stop, kill, pause, restart
#


def test_stop_sends_term_then_kill_after_the_timeout(store, ctr):
    record = ctr("sleep", "1000")
    started = time.monotonic()
    record = store.stop(record.id, timeout=1)
    elapsed = time.monotonic() - started
    assert record.state is S.EXITED and record.exit_code == 137
    assert 0.9 < elapsed < 5
    assert not is_mounted(os.path.join(store.root, record.id, "merged"))
    # A stopped container is left as it is.
    assert store.stop(record.id).exit_code == 137


def test_a_shell_that_traps_term_exits_0_at_once(store, ctr):
    record = ctr("sh", "-c", 'trap "echo bye; exit 0" TERM; echo ready; sleep 1000 & wait')
    wait_for(lambda: output(store, record.id) == b"ready\n")
    started = time.monotonic()
    record = store.stop(record.id, timeout=10)
    assert record.exit_code == 0 and time.monotonic() - started < 3
    assert output(store, record.id) == b"ready\nbye\n"


def test_kill_sends_the_signal_asked_for(store, ctr):
    record = ctr("sh", "-c", 'trap "echo got-usr1" USR1; echo ready; while true; do sleep 0.05; done')
    wait_for(lambda: b"ready" in output(store, record.id))
    record = store.kill(record.id, "SIGUSR1")
    assert record.state is S.RUNNING
    wait_for(lambda: b"got-usr1" in output(store, record.id))
    record = store.kill(record.id, "KILL")
    assert record.state is S.EXITED and record.exit_code == 137
    with pytest.raises(InvalidState, match="is not running"):
        store.kill(record.id)
    with pytest.raises(InvalidArgument, match="Invalid signal"):
        store.kill(record.id, "SIGNOPE")


def test_pause_freezes_the_processes_and_unpause_thaws_them(store, ctr):
    record = ctr("sh", "-c", "while true; do echo tick; sleep 0.05; done")
    wait_for(lambda: output(store, record.id).count(b"tick") >= 2)
    record = store.pause(record.id)
    assert record.state is S.PAUSED
    assert cgroup_file(record.id, "freezer", "freezer.state") == "FROZEN"
    inspect = store.inspect(record.id)
    state = inspect["State"]
    assert state["Status"] == "paused" and state["Paused"] and state["Running"]
    frozen = output(store, record.id)
    time.sleep(0.4)
    assert output(store, record.id) == frozen
    with pytest.raises(InvalidState, match="already paused"):
        store.pause(record.id)
    with pytest.raises(InvalidState, match="paused, unpause the container before exec"):
        store.exec(record.id, ["true"])
    record = store.unpause(record.id)
    assert record.state is S.RUNNING
    wait_for(lambda: output(store, record.id).count(b"tick") > frozen.count(b"tick"))
    # A paused container can be stopped: it gets the signal, is thawed, then killed after the timeout.
    store.pause(record.id)
    assert store.stop(record.id, timeout=1).exit_code == 137


def test_restart_gives_a_new_process(store, ctr):
    record = ctr("sh", "-c", "echo run; sleep 1000")
    first_pid, first_start = record.pid, record.started_at
    record = store.restart(record.id, timeout=0)
    assert record.state is S.RUNNING and record.pid != first_pid and record.started_at != first_start
    wait_for(lambda: output(store, record.id) == b"run\nrun\n")
    assert record.restart_count == 0  # Only a restart policy counts (Docker's RestartCount).
    # The policy's restart (the worker decides when) counts, and leaves alone what a user stopped.
    assert store.restart_by_policy(record.id).state is S.RUNNING  # Not exited: left as it is.
    store.kill(record.id)
    assert store.restart_by_policy(record.id).state is S.EXITED  # Stopped by a user.
    path = os.path.join(store.root, record.id, "config.json")
    with open(path) as f:
        doc = json.load(f)
    doc["manually_stopped"] = False  # As if the process had exited on its own.
    with open(path, "w") as f:
        json.dump(doc, f)
    record = store.restart_by_policy(record.id)
    assert record.state is S.RUNNING and record.restart_count == 1
    assert store.inspect(record.id)["RestartCount"] == 1


def test_a_policy_restart_is_for_one_exit(store, ctr):
    """A restart scheduled for one exit does nothing once the container ran and ended again since
    (that exit's own restart comes): one restart per exit, never two."""
    record = ctr("sh", "-c", "exit 3")
    first = store.wait(record.id) and store.get(record.id)
    assert store.restart_by_policy(record.id, finished_at=first.finished_at).state is S.RUNNING
    store.wait(record.id)
    second = store.get(record.id)
    assert second.finished_at != first.finished_at and second.restart_count == 1
    late = store.restart_by_policy(record.id, finished_at=first.finished_at)  # the first exit's, again
    assert late.state is S.EXITED and late.restart_count == 1
    assert store.restart_by_policy(record.id, finished_at=second.finished_at).restart_count == 2


def test_an_exited_container_starts_again_and_appends_to_its_log(store, ctr):
    record = ctr("echo", "again")
    store.wait(record.id, timeout=10)
    # The ended run left nothing of runc's: its state and cgroups went without a runc delete.
    cgroup_dirs = [f"/sys/fs/cgroup/{c}/berth/{record.id}" for c in os.listdir("/sys/fs/cgroup")]
    assert not any(os.path.exists(d) for d in cgroup_dirs)
    oci = store.runtime_of(record)
    assert not oci.exists(record.id) and oci.list() == []
    store.start(record.id)
    store.wait(record.id, timeout=10)
    assert output(store, record.id) == b"again\nagain\n"


def test_init_creates_without_starting_so_a_client_can_attach_first(store, ctr):
    record = ctr("echo", "late", start=False)
    record = store.init(record.id)
    assert record.state is S.CREATED and record.pid > 0
    path = store.attach_socket_path(record.id)
    assert os.path.exists(path) and len(path) < 108
    assert store.inspect(record.id)["State"]["Status"] == "created"
    store.start(record.id)
    assert store.wait(record.id, timeout=10) == 0


#
# Names, remove
#


def test_names_are_unique_validated_and_renamable(store, ctr):
    a = ctr("true", start=False, name="first")
    assert store.get("first").id == a.id and store.get("/first").id == a.id
    with pytest.raises(AlreadyExists, match=r'The container name "/first" is already in use by container'):
        ctr("true", start=False, name="first")
    with pytest.raises(InvalidArgument, match=r"Invalid container name \(-bad\)"):
        ctr("true", start=False, name="-bad")
    b = ctr("true", start=False)
    assert "_" in b.name and store.get(b.name).id == b.id
    store.rename(a.id, "second")
    assert store.get("second").id == a.id
    with pytest.raises(NotFound, match="No such container: first"):
        store.get("first")
    with pytest.raises(AlreadyExists):
        store.rename(b.id, "second")
    assert store.get(a.id[:10]).id == a.id


def test_remove_refuses_a_running_container_unless_forced_and_leaves_nothing(store, ctr):
    record = ctr("sleep", "1000")
    cid = record.id
    with pytest.raises(InvalidState, match=f"You cannot remove a running container {cid}. Stop the"):
        store.remove(cid)
    exec_id = store.exec(cid, ["sleep", "1000"], detach=True)
    cgroup_dirs = [f"/sys/fs/cgroup/{c}/berth/{cid}" for c in os.listdir("/sys/fs/cgroup")]
    assert any(os.path.isdir(d) for d in cgroup_dirs)
    merged = os.path.join(store.root, cid, "merged")
    assert is_mounted(merged)
    store.remove(cid, force=True)
    assert not is_mounted(merged)
    assert not os.path.exists(os.path.join(store.root, cid))
    assert not any(os.path.exists(d) for d in cgroup_dirs)
    assert not os.path.lexists(os.path.join(store.conmon.socket_dir, cid[:32]))
    assert not os.path.lexists(os.path.join(store.conmon.socket_dir, exec_id[:32]))
    assert all(oci.state(cid) is None for oci in store.runtimes.values())
    with pytest.raises(NotFound):
        store.get(cid)


#
# Logs
#


def test_logs_tail_timestamps_since_and_streams(store, ctr):
    record = ctr("sh", "-c", "echo one; echo two >&2; sleep 0.3; echo three; printf 'part'; sleep 0.2; "
                             "echo ial; printf end")
    store.wait(record.id, timeout=10)
    lines = list(store.logs(record.id))
    assert [(s, line) for s, line, _ in lines] == [
        ("stdout", b"one\n"), ("stderr", b"two\n"), ("stdout", b"three\n"), ("stdout", b"partial\n"),
        ("stdout", b"end")]
    assert [line for _, line, _ in store.logs(record.id, stdout=False)] == [b"two\n"]
    assert [line for _, line, _ in store.logs(record.id, tail=2)] == [b"partial\n", b"end"]
    assert list(store.logs(record.id, tail=0)) == []
    stamps = [parse_time_ns(t) for _, _, t in lines]
    assert stamps == sorted(stamps) and all(t.endswith("Z") and len(t) == 30 for _, _, t in lines)
    since = stamps[2] / 1e9 - 0.01
    assert [line for _, line, _ in store.logs(record.id, since=since)] == [b"three\n", b"partial\n", b"end"]
    assert [line for _, line, _ in store.logs(record.id, until=since)] == [b"one\n", b"two\n"]


def test_follow_ends_when_the_container_exits(store, ctr):
    record = ctr("sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.2; done")
    started = time.monotonic()
    lines = [line for _, line, _ in store.logs(record.id, follow=True)]
    assert lines == [b"1\n", b"2\n", b"3\n"]
    assert time.monotonic() - started < 5
    assert store.get(record.id).state is S.EXITED


def test_a_tty_container_logs_crlf_on_stdout(store, ctr):
    code, out, err = run(store, ctr, "sh", "-c", "echo hi >&2; tty; stty size", tty=True)
    assert code == 0 and err == b""
    assert out == b"hi\r\n/dev/pts/0\r\n24 80\r\n"


#
# Top, stats, exec
#


def test_top_shows_the_sleeping_process(store, ctr):
    record = ctr("sleep", "1000")
    top = store.top(record.id)
    validate(top, "/containers/{id}/top")
    assert "PID" in top["Titles"] and "CMD" in top["Titles"]
    cmd = top["Titles"].index("CMD")
    assert [p[cmd] for p in top["Processes"]] == ["sleep 1000"]
    assert int(top["Processes"][0][top["Titles"].index("PID")]) == record.pid
    assert store.top(record.id, "aux")["Titles"][:2] == ["USER", "PID"]


def test_stats_report_memory_cpu_and_pids(store, ctr):
    record = ctr("sh", "-c", "sleep 1000")
    stats = store.stats(record.id)
    assert stats["memory_stats"]["usage"] > 0 and stats["memory_stats"]["limit"] > 0
    assert stats["pids_stats"]["current"] >= 1
    assert stats["cpu_stats"]["cpu_usage"]["total_usage"] > 0
    assert stats["cpu_stats"]["system_cpu_usage"] > 0 and stats["cpu_stats"]["online_cpus"] >= 1
    assert stats["name"] == "/" + record.name and stats["id"] == record.id
    assert stats["preread"] == "0001-01-01T00:00:00Z"
    again = store.stats(record.id)
    assert again["precpu_stats"] == stats["cpu_stats"] and again["preread"] == stats["read"]
    validate(again, "/containers/{id}/stats")


def test_exec_returns_output_and_exit_code(store, ctr):
    record = ctr("sleep", "1000", env=["FROM_RUN=1"])
    script = 'echo "$FROM_RUN $X"; pwd; id -u; echo oops >&2; exit 4'
    code, out, err = store.exec(record.id, ["sh", "-c", script],
                                env=["X=2"], workdir="/tmp", user="nobody")
    assert (code, out, err) == (4, b"1 2\n/tmp\n65534\n", b"oops\n")
    code, _, err = store.exec(record.id, ["no-such-command"])
    assert code == 127 and b"OCI runtime exec failed" in err
    # exec -d: the process runs on by itself; its exit code is kept.
    exec_id = store.exec(record.id, ["sh", "-c", "echo detached > /tmp/mark; exit 5"], detach=True)
    assert len(exec_id) == 64
    session = wait_for(lambda: (s := store.exec_inspect(exec_id))["exit_code"] is not None and s)
    assert session["exit_code"] == 5 and not session["running"]
    assert store.exec(record.id, ["cat", "/tmp/mark"])[1] == b"detached\n"
    with pytest.raises(NotFound):
        store.exec_inspect("0" * 64)


#
# Security and limits
#


def test_a_read_only_rootfs_refuses_writes(store, ctr):
    code, _, err = run(store, ctr, "sh", "-c", "touch /x", read_only=True)
    assert code == 1 and b"Read-only file system" in err
    # Mounts stay writable.
    assert run(store, ctr, "sh", "-c", "echo ok > /etc/hostname", read_only=True)[0] == 1
    assert run(store, ctr, "sh", "-c", "echo ok > /dev/shm/x", read_only=True)[0] == 0


def test_memory_and_pids_limits_land_in_the_cgroup(store, ctr):
    record = ctr("sleep", "1000", memory=64 << 20, pids_limit=50, nano_cpus=500_000_000)
    assert cgroup_file(record.id, "memory", "memory.limit_in_bytes") == str(64 << 20)
    assert cgroup_file(record.id, "pids", "pids.max") == "50"
    assert cgroup_file(record.id, "cpu", "cpu.cfs_quota_us") == "50000"
    inspect = store.inspect(record.id)
    assert inspect["HostConfig"]["Memory"] == 64 << 20 and inspect["HostConfig"]["PidsLimit"] == 50
    with pytest.raises(InvalidArgument, match="Minimum memory limit"):
        ctr("true", start=False, memory=1024)


def test_an_oom_kill_is_recorded(store, ctr):
    code, _, _ = run(store, ctr, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1", memory=16 << 20)
    record = store.list(all=True)[0]
    assert code == 137 and record.oom_killed and store.inspect(record.id)["State"]["OOMKilled"]


def test_cap_drop_all_makes_chown_fail(store, ctr):
    assert run(store, ctr, "chown", "1", "/tmp")[0] == 0
    code, _, err = run(store, ctr, "chown", "1", "/tmp", cap_drop=["ALL"])
    assert code == 1 and b"Operation not permitted" in err
    assert run(store, ctr, "chown", "1", "/tmp", cap_drop=["ALL"], cap_add=["chown"])[0] == 0
    with pytest.raises(InvalidArgument, match='unknown capability: "CAP_NOPE"'):
        ctr("true", start=False, cap_add=["NOPE"])


def test_seccomp_masked_paths_and_no_new_privileges_apply(store, ctr):
    code, out, err = run(store, ctr, "sh", "-c", "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; "
                                                 "cat /proc/kcore | head -c 1 | wc -c; unshare -m true")
    text = out.decode()
    assert "Seccomp:\t2" in text and "NoNewPrivs:\t1" in text
    assert "CapEff:\t00000000a80425fb" in text  # Docker's 14 default capabilities.
    assert text.splitlines()[-1] == "0"  # /proc/kcore is masked.
    assert code != 0 and b"Operation not permitted" in err  # unshare(2) is not on the allowlist.
    code, out, _ = run(store, ctr, "sh", "-c", "grep Seccomp: /proc/self/status",
                       security_opt=["seccomp=unconfined"])
    assert out == b"Seccomp:\t0\n"


def test_etc_files_and_mounts(store, ctr, tmp_path):
    host_dir = tmp_path / "shared"
    host_dir.mkdir()
    (host_dir / "in").write_text("from host\n")
    code, out, _ = run(
        store, ctr, "sh", "-c", "cat /etc/hostname; grep -c localhost /etc/hosts; grep myhost /etc/hosts; "
                                "cat /etc/resolv.conf; cat /mnt/in; echo out > /mnt/out; echo v > /vol/f; "
                                "touch /ro/x",
        hostname="box", extra_hosts=["myhost:10.1.2.3"], dns=["9.9.9.9"],
        mounts=[Mount(source=str(host_dir), target="/mnt"), Mount(source="", target="/vol", kind="volume"),
                Mount(source=str(host_dir), target="/ro", read_only=True)])
    lines = out.decode().splitlines()
    assert lines[0] == "box" and int(lines[1]) >= 2 and lines[2] == "10.1.2.3\tmyhost"
    assert "nameserver 9.9.9.9" in lines and "from host" in lines
    assert code == 1  # /ro is read-only
    assert (host_dir / "out").read_text() == "out\n"


def test_network_modes_none_host_and_another_containers(store, ctr):
    script = "hostname; ip -o link | wc -l; readlink /proc/self/ns/net"
    _, out, _ = run(store, ctr, "sh", "-c", script, network_mode="none")
    hostname, links, _ = out.decode().split()
    assert len(hostname) == 12 and links == "1"  # lo only, up.
    _, out, _ = run(store, ctr, "sh", "-c", script, network_mode="host")
    hostname, links, netns = out.decode().split()
    assert hostname == socket.gethostname() and netns == os.readlink("/proc/self/ns/net")
    first = ctr("sleep", "1000", name="netns-owner")
    _, out, _ = run(store, ctr, "sh", "-c", script, network_mode="container:netns-owner")
    assert out.decode().split()[2] == os.readlink(f"/proc/{first.pid}/ns/net")
    with pytest.raises(NotFound, match="network nope not found"):
        ctr("true", start=False, network_mode="nope")


def test_volumes_are_filled_from_the_image_and_removed_with_rm_v(store, ctr):
    record = ctr("sh", "-c", "ls /usr/bin | grep -c . ; echo kept > /usr/mark",
                 mounts=[Mount(source="shared-vol", target="/usr", kind="volume"),
                         Mount("", "/anon", kind="volume")])
    assert store.wait(record.id, timeout=10) == 0 and int(output(store, record.id)) > 10
    named = store.volumes.get("shared-vol")["Mountpoint"]
    assert os.path.exists(os.path.join(named, "mark")) and os.listdir(os.path.join(named, "bin"))
    (anonymous,) = [m.source for m in store.get(record.id).config.mounts if m.anonymous]
    assert store.volume_users("shared-vol") == [record.id] and store.volume_users(anonymous) == [record.id]
    mounts = {m["Destination"]: m for m in store.inspect(record.id)["Mounts"]}
    assert mounts["/usr"]["Name"] == "shared-vol" and mounts["/usr"]["Source"] == named
    # A second container sees what the first left; no copy over a volume that has content.
    again = run(store, ctr, "cat", "/usr/mark", mounts=[Mount("shared-vol", "/usr", kind="volume")])
    assert again[1] == b"kept\n"
    store.remove(record.id, volumes=True)
    assert not store.volumes.exists(anonymous) and store.volumes.exists("shared-vol")


#
# Sync and reconcile
#


def test_a_fresh_store_records_an_exit_nobody_watched(engine, store, ctr):
    record = ctr("sh", "-c", "sleep 0.3; exit 7")
    with open(os.path.join(store.root, record.id, "config.json")) as f:
        assert '"state": "running"' in f.read()
    exit_file = os.path.join(store.root, record.id, "exits", record.id)
    wait_for(lambda: os.path.exists(exit_file) and open(exit_file).read())
    # A restarted worker: a new store on the same root.
    fresh = ContainerStore(engine.config, engine.images, engine.layers)
    assert fresh.get(record.id, sync=False).state is S.RUNNING
    assert fresh.has_exited(record.id)
    records = {r.id: r for r in fresh.reconcile()}
    assert records[record.id].state is S.EXITED and records[record.id].exit_code == 7
    assert not fresh.has_exited(record.id)
    assert not is_mounted(os.path.join(store.root, record.id, "merged"))
    assert store.runtime_of(record).state(record.id) is None


def test_a_dead_monitor_gives_255_once_the_process_is_gone(store, ctr):
    record = ctr("sleep", "1000")
    os.kill(record.conmon_pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{record.conmon_pid}/cmdline")
             or not open(f"/proc/{record.conmon_pid}/cmdline").read())
    # The container runs on without its monitor.
    assert store.sync(record.id).state is S.RUNNING
    os.kill(record.pid, signal.SIGKILL)
    wait_for(lambda: store.has_exited(record.id))
    record = store.sync(record.id)
    assert record.state is S.EXITED and record.exit_code == LOST_EXIT_CODE and "conmon" in record.error


def test_a_container_of_a_previous_boot_is_exited_with_255(store, ctr):
    record = ctr("sleep", "1000")
    path = os.path.join(store.root, record.id, "config.json")
    with open(path) as f:
        doc = json.load(f)
    doc["boot_id"] = "an-older-boot"
    with open(path, "w") as f:
        json.dump(doc, f)
    (synced,) = [r for r in store.reconcile() if r.id == record.id]
    assert synced.state is S.EXITED and synced.exit_code == LOST_EXIT_CODE and "rebooted" in synced.error
    assert store.runtime_of(record).state(record.id) is None
    assert process_start_time(record.pid) is None  # Gone (or a zombie): runc delete --force killed it.


def test_an_interrupted_remove_leaves_a_dead_container_that_remove_finishes(store, ctr):
    record = ctr("true", start=False)
    path = os.path.join(store.root, record.id, "config.json")
    with open(path) as f:
        doc = json.load(f)
    doc["state"] = "removing"
    with open(path, "w") as f:
        json.dump(doc, f)
    assert store.summary(store.get(record.id))["Status"] == "Removal In Progress"
    (synced,) = [r for r in store.reconcile() if r.id == record.id]
    assert synced.state is S.DEAD and store.inspect(record.id)["State"]["Dead"]
    store.remove(record.id)
    assert not os.path.exists(os.path.join(store.root, record.id))


def test_wait_times_out_and_knows_dockers_conditions(store, ctr):
    record = ctr("sleep", "1000")
    with pytest.raises(TimeoutError):
        store.wait(record.id, timeout=0.2)
    store.stop(record.id, timeout=0)
    assert store.wait(record.id, timeout=1) == 137
    # next-exit waits for a run that has not started yet; removed, for the container to go.
    waiter = ThreadPoolExecutor(2)
    next_exit = waiter.submit(store.wait, record.id, 10, "next-exit")
    removed = waiter.submit(store.wait, record.id, 10, "removed")
    time.sleep(0.2)
    assert not next_exit.done()
    store.start(record.id)
    store.kill(record.id, "TERM")  # A PID 1 without a handler ignores it: still running.
    time.sleep(0.2)
    assert not next_exit.done()
    store.kill(record.id, "KILL")
    assert next_exit.result(timeout=10) == 137
    assert not removed.done()
    store.remove(record.id)
    assert removed.result(timeout=10) == 137
    waiter.shutdown()


def test_kill_does_not_wait_for_a_stop_in_progress(store, ctr):
    record = ctr("sleep", "1000")
    with ThreadPoolExecutor(1) as pool:
        stopping = pool.submit(store.stop, record.id, 30)
        wait_for(lambda: store.get(record.id).state is S.STOPPING)
        started = time.monotonic()
        store.kill(record.id, "KILL")
        assert time.monotonic() - started < 5
        assert stopping.result(timeout=10).exit_code == 137


#
# Docker's shapes
#


def test_inspect_and_summary_have_dockers_shape(store, ctr):
    record = ctr("sh", "-c", "sleep 1000", name="shaped", labels={"a": "b"}, exposed_ports={"80/tcp": {}})
    inspect = store.inspect("shaped")
    validate(inspect, "/containers/{id}/json")
    assert inspect["Name"] == "/shaped"
    assert inspect["Path"] == "sh" and inspect["Args"] == ["-c", "sleep 1000"]
    assert inspect["State"]["Running"] and inspect["State"]["Pid"] == record.pid
    assert inspect["Config"]["Cmd"] == ["sh", "-c", "sleep 1000"] and inspect["Config"]["Image"] == "busybox"
    assert inspect["Config"]["Hostname"] == record.id[:12]
    assert inspect["GraphDriver"]["Name"] == "overlay2"
    summary = store.summary(store.get(record.id))
    validate([summary], "/containers/json")
    assert summary["Names"] == ["/shaped"] and summary["State"] == "running"
    assert summary["Status"].startswith("Up ") and summary["Command"] == "sh -c 'sleep 1000'"
    assert summary["Ports"] == [{"PrivatePort": 80, "Type": "tcp"}] and summary["Labels"] == {"a": "b"}
    store.stop(record.id, timeout=0)
    summary = store.summary(store.get(record.id))
    assert summary["Status"].startswith("Exited (137) ") and summary["Status"].endswith(" ago")
    assert store.summary(ctr("true", start=False))["Status"] == "Created"
    assert [r.id for r in store.list()] == [r.id for r in store.list(all=True) if r.running]


def test_crun_loads_the_filter_it_compiled_for_the_first_container(store, ctr):
    """With crun (the default where it can run), the first container of a seccomp profile has its
    filter compiled by crun and kept; the next ones load that filter (an annotation in their
    spec) and are filtered the same: unshare(CLONE_NEWUSER) needs no capability, only seccomp
    refuses it."""
    if not store.crun_usable(prepare=True):
        pytest.skip("crun is not installed or cannot run under this host's cgroups")
    cache = store.seccomp_cache.directory
    before = set(os.listdir(cache)) if os.path.isdir(cache) else set()
    probe = "grep Seccomp: /proc/self/status; unshare -U true && echo allowed"
    first = ctr("sh", "-c", probe, runtime="crun", cap_add=["SYS_PTRACE"])  # a profile of its own
    assert store.wait(first.id, timeout=20) == 1
    assert output(store, first.id) == b"Seccomp:\t2\n"
    assert b"Operation not permitted" in output(store, first.id, "stderr")
    kept = set(os.listdir(cache)) - before
    assert len(kept) == 1
    second = ctr("sh", "-c", probe, runtime="crun", cap_add=["SYS_PTRACE"], start=False)
    store.start(second.id)
    with open(os.path.join(store.root, second.id, "bundle", "config.json")) as f:
        annotations = json.load(f)["annotations"]
    assert "run.oci.seccomp_bpf_data" in annotations
    assert store.wait(second.id, timeout=20) == 1
    assert output(store, second.id) == b"Seccomp:\t2\n"
    assert set(os.listdir(cache)) - before == kept
    code, out, _ = run(store, ctr, "sh", "-c", probe, runtime="crun", security_opt=["seccomp=unconfined"])
    assert (code, out) == (0, b"Seccomp:\t0\nallowed\n")
    assert store.inspect(second.id)["HostConfig"]["Runtime"] == "crun"


def test_runc_runs_what_crun_runs(store, ctr):
    """``--runtime runc`` beside crun: its state under its own root, the same lifecycle, exec,
    seccomp, and nothing left after the removal."""
    record = ctr("sleep", "60", runtime="runc")
    oci = store.runtime_of(record)
    assert oci.name == "runc" and oci.state(record.id)["status"] == "running"
    assert all(o.state(record.id) is None for o in store.runtimes.values() if o is not oci)
    code, out, err = store.exec(record.id, ["sh", "-c", "grep Seccomp: /proc/self/status; unshare -U true"])
    assert code == 1 and out == b"Seccomp:\t2\n" and b"Operation not permitted" in err
    assert store.exec(record.id, ["nope"])[0] == 127
    store.pause(record.id)
    assert oci.state(record.id)["status"] == "paused"
    store.unpause(record.id)
    store.stop(record.id, timeout=1)
    assert oci.state(record.id) is None
    assert store.inspect(record.id)["HostConfig"]["Runtime"] == "runc"
    store.remove(record.id)
    assert oci.list() == [] or all(e["id"] != record.id for e in oci.list())


def test_an_unknown_runtime_is_refused(store, ctr):
    with pytest.raises(InvalidArgument, match="Unknown runtime specified kata"):
        ctr("true", start=False, runtime="kata")


def test_a_failed_exec_says_what_runc_says(store, ctr):
    """crun words a missing program its own way; Berth reports it in runc's (Docker's) words."""
    record = ctr("sleep", "60")
    code, _, err = store.exec(record.id, ["nope"])
    assert code == 127 and err == b'OCI runtime exec failed: exec: "nope": executable file not found in $PATH\n'
    code, _, err = store.exec(record.id, ["/no/such"])
    assert code == 127 and b'exec: "/no/such": stat /no/such: no such file or directory' in err
    code, out, err = store.exec(record.id, ["sh", "-c", "echo out; echo err >&2; exit 255"])
    assert (code, out, err) == (255, b"out\n", b"err\n")  # the program's own 255 stays its own
    # With a terminal, crun fails before conmon gets it, and conmon says nothing: Berth looks.
    with pytest.raises(CommandError, match='exec: "nope": executable file not found in \\$PATH'):
        store.exec(record.id, ["nope"], detach=True, tty=True)


def test_a_wait_for_the_removal_reports_an_exit_it_did_not_see(store, ctr, monkeypatch):
    """``docker run --rm`` waits with condition "removed": when the exit, the removal and all happen
    between two of the waiter's looks (a busy host), the waiter's last look was at a running
    container, and the code must still be the container's (5), not that look's (0)."""
    import threading

    import runtime.containers as containers_module

    record = ctr("sh", "-c", "sleep 0.3; exit 5")
    removed = threading.Event()
    real_wait = containers_module.FileWatch.wait

    def late_wait(self, *args, **kwargs):  # the waiter looks again only once the container is gone
        removed.wait(20)
        return real_wait(self, *args, **kwargs)

    monkeypatch.setattr(containers_module.FileWatch, "wait", late_wait)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(store.wait, record.id, 30, "removed")
        wait_for(lambda: not store.get(record.id).running, timeout=10)
        store.remove(record.id)
        removed.set()
        assert waiting.result(timeout=30) == 5


def test_the_removal_answers_its_waiter_before_the_files_are_deleted(store, ctr, monkeypatch):
    """``docker run --rm`` gets its exit code once the container is gone from the store: its
    directory is moved aside, and deleted after (a crash in between leaves it to reconcile)."""
    import threading

    record = ctr("sh", "-c", "exit 6")
    wait_for(lambda: not store.get(record.id).running, timeout=10)
    answered = threading.Event()
    real_delete = store._delete_aside

    def delete_once_answered(*paths):
        assert answered.wait(20), "the waiter was answered only after the files were deleted"
        real_delete(*paths)

    monkeypatch.setattr(store, "_delete_aside", delete_once_answered)
    import runtime.containers as containers_module

    real_wait = containers_module.FileWatch.wait
    # Only an event wakes the waiter (not its once-a-second look): the move must make one.
    monkeypatch.setattr(containers_module.FileWatch, "wait",
                        lambda self, timeout, *a: real_wait(self, 15, *a))
    with ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(store.wait, record.id, 30, "removed")
        time.sleep(0.2)  # the waiter watches the container's directory
        removing = pool.submit(store.remove, record.id)
        try:
            assert waiting.result(timeout=12) == 6
        finally:
            answered.set()
        removing.result(timeout=30)
    aside = os.path.join(store.root, ".removing")
    assert os.listdir(aside) == []
    assert record.id not in store._ids()

    os.makedirs(os.path.join(aside, "left-by-a-crash", "upper", "etc"))
    store.reconcile()
    assert os.listdir(aside) == []
