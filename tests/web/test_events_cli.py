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
