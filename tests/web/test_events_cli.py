"""``docker events`` against Berth shows containers starting and dying as they do."""

import subprocess
import time
import uuid

import pytest

pytestmark = pytest.mark.live


def test_docker_events_streams_container_lifecycle(berth, tmp_path):
    env = berth.docker_env(tmp_path / "docker")
    name = "ev-" + uuid.uuid4().hex[:6]
    watcher = subprocess.Popen(["docker", "events", "--filter", f"container={name}", "--format",
                                "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}"],
                               env=env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        subprocess.run(["docker", "run", "-d", "--name", name, "busybox", "sh", "-c", "sleep 0.5; exit 2"],
                       env=env, check=True, capture_output=True)
        subprocess.run(["docker", "wait", name], env=env, check=True, capture_output=True)
        lines = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any("die" in line for line in lines):
            lines.append(watcher.stdout.readline().strip())
        assert f"container start {name}" in lines
        assert f"container die {name}" in lines
    finally:
        watcher.kill()
        subprocess.run(["docker", "rm", "-f", name], env=env, capture_output=True)


def test_docker_run_rm_dies_with_its_code_then_is_destroyed(berth, tmp_path):
    env = berth.docker_env(tmp_path / "docker")
    name = "evrm-" + uuid.uuid4().hex[:6]
    watcher = subprocess.Popen(["docker", "events", "--filter", f"container={name}", "--format",
                                "{{.Action}} {{.Actor.Attributes.exitCode}}"],
                               env=env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        run = subprocess.run(["docker", "run", "--rm", "--name", name, "busybox", "sh", "-c", "exit 4"],
                             env=env, capture_output=True, text=True)
        assert run.returncode == 4, run.stderr
        lines = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(line.startswith("destroy") for line in lines):
            lines.append(watcher.stdout.readline().strip())
        actions = [line.split()[0] for line in lines if line]
        assert actions.index("start") < actions.index("die") < actions.index("destroy"), lines
        assert "die 4" in lines
    finally:
        watcher.kill()
