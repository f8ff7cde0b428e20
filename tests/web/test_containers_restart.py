"""Containers outlive the worker: after a crash and a new worker, reconcile shows the truth."""

import json
import subprocess
import time
import uuid

import pytest

pytestmark = pytest.mark.live


def test_containers_survive_a_worker_crash_and_exits_meanwhile_are_recorded(berth, tmp_path):
    env = berth.docker_env(tmp_path / "docker")

    def docker(*args):
        result = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr + berth.logs()
        return result.stdout

    tag = uuid.uuid4().hex[:6]
    long_running, short, removed = f"survivor-{tag}", f"quitter-{tag}", f"rm-{tag}"
    docker("run", "-d", "--name", long_running, "busybox", "sleep", "300")
    docker("run", "-d", "--name", short, "busybox", "sh", "-c", "sleep 2; exit 5")
    # --rm, ending while the worker is down or starting: removed all the same (by reconcile or the watcher).
    docker("run", "-d", "--rm", "--name", removed, "busybox", "sleep", "1")
    berth.restart_worker(kill=True)  # a crash: SIGKILL to the whole worker
    time.sleep(3)  # the short one exits while... the new worker runs; its exit must still be seen
    for _ in range(50):
        states = {n: json.loads(docker("inspect", "--format", "{{json .State}}", n)) for n in (long_running, short)}
        if states[short]["Status"] == "exited":
            break
        time.sleep(0.2)
    assert states[long_running]["Running"] is True
    assert states[short]["Status"] == "exited" and states[short]["ExitCode"] == 5
    ps = docker("ps", "-a", "--format", "{{.Names}} {{.Status}}")
    assert f"{long_running} Up" in ps and f"{short} Exited (5)" in ps
    for _ in range(50):
        if removed not in docker("ps", "-a", "--format", "{{.Names}}").split():
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the --rm container {removed} was not removed after the worker's restart")
    # The pages show the same truth (the models were reconciled and the exit seen).
    from tests.web.test_events_socket import session_cookie

    cookie = session_cookie(berth)
    for _ in range(50):
        page = berth.request("GET", "/containers/", token=False, headers={"Cookie": cookie})[2].decode()
        row = page.split(f">{short}<", 1)[1].split("</tr>", 1)[0] if f">{short}<" in page else ""
        if "Exited (5)" in row:
            break
        time.sleep(0.2)
    assert "Exited (5)" in row
    survivor = page.split(f">{long_running}<", 1)[1].split("</tr>", 1)[0]
    assert "Running" in survivor
    docker("rm", "-f", long_running, short)
