"""Containers through the real docker CLI against a live Berth: real runc, conmon and overlayfs."""

import io
import re
import json
import tarfile
import time
import uuid

import pytest

from tests import dockerspec

pytestmark = pytest.mark.live


@pytest.fixture
def name():
    return "t-" + uuid.uuid4().hex[:8]


def state(docker, name):
    return json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)


def wait_until(predicate, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_run_d_ps_logs_stop_start_rm(docker, berth, name):
    cid = docker("run", "-d", "--name", name, "-e", "GREETING=hello", "busybox",
                 "sh", "-c", "echo $GREETING from $(hostname); trap 'exit 0' TERM; while true; do sleep 0.2; done").stdout.strip()
    assert len(cid) == 64
    assert name in docker("ps", "--format", "{{.Names}} {{.Status}}").stdout
    assert wait_until(lambda: "hello from" in docker("logs", name).stdout)
    status, body = berth.json("GET", f"/v1.41/containers/{name}/json")
    dockerspec.validate(body, "/containers/{id}/json")
    assert body["State"]["Running"] is True and body["Config"]["Env"][0:0] == []
    docker("stop", "-t", "5", name)
    assert state(docker, name)["Status"] == "exited" and state(docker, name)["ExitCode"] == 0
    assert name not in docker("ps", "--format", "{{.Names}}").stdout
    assert name in docker("ps", "-a", "--format", "{{.Names}}").stdout
    docker("start", name)
    assert state(docker, name)["Running"] is True
    refused = docker("rm", name, check=False)
    assert refused.returncode != 0 and "Stop the container before attempting removal" in refused.stderr
    docker("rm", "-f", name)
    assert name not in docker("ps", "-a", "--format", "{{.Names}}").stdout


def test_exit_codes_wait_and_kill(docker, name):
    docker("run", "-d", "--name", name, "busybox", "sh", "-c", "sleep 0.5; exit 3")
    assert docker("wait", name).stdout.strip() == "3"
    docker("start", name)
    assert docker("wait", name).stdout.strip() == "3"
    other = name + "-k"
    docker("run", "-d", "--name", other, "busybox", "sleep", "300")
    docker("kill", other)
    assert wait_until(lambda: state(docker, other)["ExitCode"] == 137)
    docker("rm", name, other)


def test_pause_unpause_restart_rename_top_stats(docker, name):
    docker("run", "-d", "--name", name, "busybox", "sleep", "300")
    docker("pause", name)
    assert state(docker, name)["Status"] == "paused"
    docker("unpause", name)
    assert state(docker, name)["Status"] == "running"
    top = docker("top", name).stdout
    assert "sleep 300" in top
    stats = json.loads(docker("stats", "--no-stream", "--format", "{{json .}}", name).stdout)
    assert stats["Name"] == name
    started = state(docker, name)["StartedAt"]
    docker("restart", "-t", "1", name)
    assert state(docker, name)["StartedAt"] != started
    docker("rename", name, name + "-renamed")
    assert state(docker, name + "-renamed")["Running"] is True
    docker("rm", "-f", name + "-renamed")


def test_exec_detached_and_diff_cp_commit_export(docker, name, tmp_path):
    docker("run", "-d", "--name", name, "busybox", "sleep", "300")
    docker("exec", "-d", name, "sh", "-c", "echo made-by-exec > /tmp/exec.txt; rm /etc/group")
    assert wait_until(lambda: "A /tmp/exec.txt" in docker("diff", name).stdout)
    changes = docker("diff", name).stdout.splitlines()
    assert "C /tmp" in changes and "D /etc/group" in changes
    # cp out, cp in.
    docker("cp", f"{name}:/tmp/exec.txt", str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text() == "made-by-exec\n"
    (tmp_path / "in.txt").write_text("copied in\n")
    docker("cp", str(tmp_path / "in.txt"), f"{name}:/root/in.txt")
    assert "A /root/in.txt" in docker("diff", name).stdout
    # commit, and the new image runs with the file.
    image = f"committed/{name}:v1"
    docker("commit", "-m", "from a test", "-c", "ENV COMMITTED=yes", name, image)
    docker("run", "--rm", "-d", "--name", name + "-c", image, "sh", "-c",
                 "cat /root/in.txt /tmp/exec.txt; echo $COMMITTED; sleep 1").stdout
    assert wait_until(lambda: "yes" in docker("logs", name + "-c", check=False).stdout)
    logs = docker("logs", name + "-c").stdout
    assert "copied in" in logs and "made-by-exec" in logs
    # export: the whole filesystem as a flat tar.
    exported = docker("export", name, binary=True).stdout
    with tarfile.open(fileobj=io.BytesIO(exported)) as tar:
        names = tar.getnames()
    assert "bin/busybox" in names and "tmp/exec.txt" in names and "etc/group" not in names
    docker("rm", "-f", name)


def test_volumes_binds_and_run_options(docker, name, tmp_path):
    host_dir = tmp_path / "shared"
    host_dir.mkdir()
    (host_dir / "from-host.txt").write_text("host file\n")
    volume = name + "-vol"
    docker("volume", "create", volume)
    assert volume in docker("volume", "ls", "--format", "{{.Name}}").stdout
    docker("run", "-d", "--name", name, "-v", f"{host_dir}:/host:ro", "-v", f"{volume}:/data", "-w", "/data",
           "-u", "nobody", "--read-only", "--memory", "64m", "--pids-limit", "20", "--cap-drop", "ALL",
           "busybox", "sh", "-c",
           "cat /host/from-host.txt; pwd; id -un; touch /data/x 2>&1; touch /rootfile 2>&1; "
           "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null; "
           "touch /host/nope 2>&1; sleep 300")
    assert wait_until(lambda: "nope" in docker("logs", name).stdout + docker("logs", name).stderr)
    logs = docker("logs", name).stdout + docker("logs", name).stderr
    assert "host file" in logs and "/data" in logs and "nobody" in logs
    assert "Read-only file system" in logs
    inspect = json.loads(docker("inspect", name).stdout)[0]
    assert inspect["HostConfig"]["Memory"] == 64 << 20 and inspect["HostConfig"]["PidsLimit"] == 20
    refused = docker("volume", "rm", volume, check=False)
    assert refused.returncode != 0 and "in use" in refused.stderr
    docker("rm", "-f", name)
    docker("volume", "rm", volume)
    assert volume not in docker("volume", "ls", "--format", "{{.Name}}").stdout


def test_restart_on_failure_and_rm(docker, name):
    docker("run", "-d", "--name", name, "--restart", "on-failure:2", "busybox", "sh", "-c", "exit 7")
    assert wait_until(lambda: json.loads(docker("inspect", name).stdout)[0]["RestartCount"] >= 2
                      and state(docker, name)["Status"] == "exited", timeout=30)
    assert state(docker, name)["ExitCode"] == 7
    docker("rm", name)
    gone = name + "-rm"
    docker("run", "-d", "--rm", "--name", gone, "busybox", "sh", "-c", "sleep 0.3")
    assert wait_until(lambda: gone not in docker("ps", "-a", "--format", "{{.Names}}").stdout, timeout=20)


def test_runtime_choice_through_the_cli(docker, name):
    """``docker info`` names both runtimes and the default (crun where it can run); ``--runtime
    runc`` runs under runc, and inspect says which ran a container; an unknown one is refused."""
    info = json.loads(docker("info", "--format", "{{json .}}").stdout)
    assert set(info["Runtimes"]) == {"runc", "crun"} and info["DefaultRuntime"] in ("runc", "crun")
    assert docker("run", "--rm", "--runtime", "runc", "busybox", "echo", "from runc").stdout == "from runc\n"
    docker("run", "-d", "--name", name, "--runtime", "runc", "busybox", "sleep", "60")
    assert docker("inspect", "--format", "{{.HostConfig.Runtime}}", name).stdout.strip() == "runc"
    assert docker("exec", name, "echo", "in runc").stdout == "in runc\n"
    docker("rm", "-f", name)
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    assert docker("inspect", "--format", "{{.HostConfig.Runtime}}", name).stdout.strip() == info["DefaultRuntime"]
    missing = docker("exec", name, "nope", check=False)
    assert missing.returncode == 127 and 'exec: "nope": executable file not found in $PATH' in missing.stderr
    docker("rm", "-f", name)
    refused = docker("run", "--rm", "--runtime", "kata", "busybox", "true", check=False)
    assert refused.returncode != 0 and "Unknown runtime specified kata" in refused.stderr



def test_docker_api_actions_are_audited_with_their_container(docker, berth, name):
    """The Docker API's events are written beside the answer, by the audit thread; a stop of a
    --rm container (which takes its row away) still names it."""
    from tests.web.test_events_socket import session_cookie

    docker("run", "-d", "--rm", "--name", name, "busybox", "sleep", "30")
    docker("stop", "-t", "0", name)
    cookie = session_cookie(berth)

    def audited():
        page = berth.request("GET", "/admin/project/auditevent/?action=container.stop", token=False,
                             headers={"Cookie": cookie})[2].decode()
        return re.search(r'field-action">container\.stop</td><td class="field-object_type">container</td>'
                         r'<td class="field-object_id">\d+</td>', page) is not None

    assert wait_until(audited)
